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


def archive_runs(runs: str = "runs", to: str = str(ARCHIVE), overwrite: bool = False) -> list[Path]:
    """Archive every finished run under `runs` into `to`; returns the archived directories."""
    copied = []
    for final in sorted(Path(runs).glob("*/*/*/seed*/final_eval.json")):
        source = final.parent
        target = Path(to) / source.relative_to(runs)
        differs = target.exists() and not all(filecmp.cmp(source / f, target / f, shallow=False)
                                              for f in KEPT_FILES if (source / f).exists() and (target / f).exists())
        if differs and not overwrite:
            raise SystemExit(f"{target} holds a different run; pass --overwrite to replace it")
        target.mkdir(parents=True, exist_ok=True)
        for name in KEPT_FILES:
            if (source / name).exists():
                shutil.copy2(source / name, target / name)
        copied.append(target)
    return copied


def main(runs: str = "runs", to: str = str(ARCHIVE), overwrite: bool = False) -> None:
    print(f"archived {len(archive_runs(runs, to, overwrite))} finished run(s) into {to}")


if __name__ == "__main__":
    fire.Fire(main)
