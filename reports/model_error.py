"""Model error table of the dynamics runs: `python -m reports.model_error [--run-root runs] [--out FILE]`.

Reads every `<run_root>/dynamics/<env>/<dataset>/seed*/final_eval.json` (written by
`python train.py dynamics`) and prints a markdown table, one row per env/dataset: the
one-step holdout MSE (normalized targets) and the open-loop observation MSE (in units of the
dataset's observation std) at horizons 1, 5, 10, 25 on held-out episodes, and the model's
uncertainty u on its own data (median and 95th percentile; MPPI's policy fallback compares
u at the walker's state against these: on scattered data u is high on the data too).
"""

from __future__ import annotations

import json
from pathlib import Path

import fire

from algorithms.dynamics import HORIZONS

U_PERCENTILES: tuple[int, ...] = (50, 95)


def model_error_table(run_root: str = "runs") -> str:
    rows = []
    for path in sorted(Path(run_root).glob("dynamics/*/*/seed*/final_eval.json")):
        diag = json.loads(path.read_text())
        env, dataset, seed = path.parts[-4], path.parts[-3], path.parts[-2]
        cells = [f"{diag[f'open_loop_mse_h{h}']:.3f}" if f"open_loop_mse_h{h}" in diag else "-" for h in HORIZONS]
        # Runs recorded before u on the data was logged show "-".
        cells += [f"{diag[f'data_uncertainty_p{p}']:.3f}" if f"data_uncertainty_p{p}" in diag else "-"
                  for p in U_PERCENTILES]
        rows.append(f"| {env} | {dataset} | {seed} | {diag['updates']:,} | {diag['holdout_mse']:.4f} | "
                    + " | ".join(cells) + " |")
    header = ("| env | dataset | run | updates | one-step holdout MSE | "
              + " | ".join(f"open-loop h={h}" for h in HORIZONS) + " | "
              + " | ".join(f"u on data, {'median' if p == 50 else f'{p}th pct'}" for p in U_PERCENTILES) + " |")
    return "\n".join([header, "|" + "---|" * (5 + len(HORIZONS) + len(U_PERCENTILES)), *rows]) + "\n"


def main(run_root: str = "runs", out: str = "") -> None:
    table = model_error_table(run_root)
    if out:
        Path(out).write_text(table)
    print(table, end="")


if __name__ == "__main__":
    fire.Fire(main)
