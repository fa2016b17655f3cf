"""Final normalized scores of local runs, mean +- std over seeds, as a markdown table.

    python -m reports.final_scores                  # every runs/<algo>/<env>/<dataset>/seed*/final_eval.json

A stop-gap until the leaderboard (issue 6): no bootstrap intervals yet. Runs without a
final evaluation are left out and counted, never shown as zero.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import fire
import numpy as np


def main(runs: str = "runs") -> None:
    scores: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    unfinished = 0
    for seed_dir in sorted(Path(runs).glob("*/*/*/seed*")):
        algo, env, dataset = seed_dir.parts[-4:-1]
        if dataset.endswith("online"):
            continue
        final = seed_dir / "final_eval.json"
        if final.exists():
            scores[(algo, env, dataset)].append(json.loads(final.read_text())["normalized_score"])
        else:
            unfinished += 1
    rows = [f"| {a} | {e} | {d} | {np.mean(v):.1f} +- {np.std(v):.1f} | {len(v)} | "
            f"{' / '.join(f'{x:.1f}' for x in v)} |" for (a, e, d), v in sorted(scores.items())]
    table = ("| algo | env | dataset | normalized score | seeds | per seed |\n|---|---|---|---|---|---|\n"
             + "\n".join(rows) + "\n")
    print(table + (f"\n({unfinished} runs without a final evaluation left out)" if unfinished else ""))


if __name__ == "__main__":
    fire.Fire(main)
