"""Model error table of the dynamics runs: `python -m reports.model_error [--run-root runs] [--out FILE]`.

Reads every `<run_root>/dynamics/<env>/<dataset>/seed*/final_eval.json` (written by
`python train.py dynamics`) and prints a markdown table, one row per env/dataset: the
one-step holdout MSE (normalized targets) and the open-loop observation MSE (in units of the
dataset's observation std) at horizons 1, 5, 10, 25 on held-out episodes.
"""

from __future__ import annotations

import json
from pathlib import Path

import fire

from algorithms.dynamics import HORIZONS


def model_error_table(run_root: str = "runs") -> str:
    rows = []
    for path in sorted(Path(run_root).glob("dynamics/*/*/seed*/final_eval.json")):
        diag = json.loads(path.read_text())
        env, dataset, seed = path.parts[-4], path.parts[-3], path.parts[-2]
        cells = [f"{diag[f'open_loop_mse_h{h}']:.3f}" if f"open_loop_mse_h{h}" in diag else "-" for h in HORIZONS]
        rows.append(f"| {env} | {dataset} | {seed} | {diag['updates']:,} | {diag['holdout_mse']:.4f} | "
                    + " | ".join(cells) + " |")
    header = ("| env | dataset | run | updates | one-step holdout MSE | "
              + " | ".join(f"open-loop h={h}" for h in HORIZONS) + " |")
    return "\n".join([header, "|" + "---|" * (5 + len(HORIZONS)), *rows]) + "\n"


def main(run_root: str = "runs", out: str = "") -> None:
    table = model_error_table(run_root)
    if out:
        Path(out).write_text(table)
    print(table, end="")


if __name__ == "__main__":
    fire.Fire(main)
