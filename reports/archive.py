"""Copy the small, readable part of finished runs into the repository, so the committed
leaderboard can be rebuilt from committed files (runs/ itself is git-ignored).

    python -m reports.archive                          # runs/ -> reports/runs/
    python -m reports.leaderboard --runs reports/runs  # the committed leaderboard

Per finished run (one with a final_eval.json): config.json, metrics.jsonl and final_eval.json,
at the same relative path. Checkpoints, snapshots and wandb files stay behind. A run whose
archived copy differs from the new one is overwritten only with `--overwrite`.
"""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

import fire

ARCHIVE = Path(__file__).with_name("runs")
KEPT_FILES = ("config.json", "metrics.jsonl", "final_eval.json")


def archive_runs(runs: str = "runs", to: str = str(ARCHIVE), overwrite: bool = False) -> tuple[list[Path], list[Path]]:
    """Archive every finished run under `runs` into `to`. Returns (archived, refused): a run whose
    archived copy differs is left as it is (refused) unless `overwrite`; the others are copied."""
    copied, refused = [], []
    for final in sorted(Path(runs).glob("*/*/*/seed*/final_eval.json")):
        source = final.parent
        target = Path(to) / source.relative_to(runs)
        differs = target.exists() and not all(filecmp.cmp(source / f, target / f, shallow=False)
                                              for f in KEPT_FILES if (source / f).exists() and (target / f).exists())
        if differs and not overwrite:
            refused.append(target)
            continue
        target.mkdir(parents=True, exist_ok=True)
        for name in KEPT_FILES:
            if (source / name).exists():
                shutil.copy2(source / name, target / name)
        copied.append(target)
    return copied, refused


def main(runs: str = "runs", to: str = str(ARCHIVE), overwrite: bool = False) -> None:
    copied, refused = archive_runs(runs, to, overwrite)
    print(f"archived {len(copied)} finished run(s) into {to}")
    if refused:
        raise SystemExit("\n".join(f"{t} holds a different run: left as it is (--overwrite replaces it)"
                                   for t in refused))


if __name__ == "__main__":
    fire.Fire(main)
