"""What a score is made of: a run's final-evaluation episodes, split at two normalized levels.

    python -m reports.episodes reports/runs/bc/walker-run/expert reports/runs/cqlsac/walker-run/expert

A mean of 50 hides whether every episode is half as good as the expert's or half the episodes
are the expert's and the rest failed (a walker that falls and never gets up scores near 0).
Each argument is a run directory or a folder of them (`seed*/`); one markdown row per run.
Episodes are normalized with the suite's current references (envs/references.json), as the
leaderboard does, so runs scored against an older expert read the same as there.
"""

from __future__ import annotations

import json
from pathlib import Path

import fire
import numpy as np

from envs.evaluation import normalized_score
from reports.leaderboard import suite_references


def episode_split(final_eval: dict, failed_below: float = 15.0, expert_from: float = 85.0,
                  references: tuple[float, float] | None = None) -> dict:
    """Counts of a final evaluation's episodes whose normalized score is below `failed_below`
    and at least `expert_from`, with the median, from its returns and `references` (random,
    expert return; default: those the evaluation recorded)."""
    normalized = normalized_score(np.asarray(final_eval["returns"], dtype=float),
                                  *(references or (final_eval["ref_min_score"], final_eval["ref_max_score"])))
    return {"episodes": len(normalized), "failed": int((normalized < failed_below).sum()),
            "expert": int((normalized >= expert_from).sum()), "median": float(np.median(normalized)),
            "mean": float(normalized.mean())}


def run_dirs(paths: list[str]) -> list[Path]:
    found = []
    for path in map(Path, paths):
        if (path / "final_eval.json").exists():
            found.append(path)
        else:
            found.extend(sorted(p.parent for p in path.glob("seed*/final_eval.json")))
    if not found:
        raise SystemExit(f"no final_eval.json in or under: {', '.join(paths)}")
    return found


def table(paths: list[str], failed_below: float = 15.0, expert_from: float = 85.0) -> str:
    rows = [f"| run | episodes | normalized < {failed_below:g} | normalized >= {expert_from:g} | median | mean |",
            "|---|---|---|---|---|---|"]
    references = suite_references()
    for run in run_dirs(paths):
        final = json.loads((run / "final_eval.json").read_text())
        split = episode_split(final, failed_below, expert_from, references.get(final.get("env_id")))
        rows.append(f"| {run} | {split['episodes']} | {split['failed']} | {split['expert']} | "
                    f"{split['median']:.1f} | {split['mean']:.1f} |")
    return "\n".join(rows)


def main(*paths: str, failed_below: float = 15.0, expert_from: float = 85.0) -> None:
    print(table(list(paths), failed_below, expert_from))


if __name__ == "__main__":
    fire.Fire(main)
