"""Score regressions: short training budgets that fail if learning broke.

Cases live in tests/regression/thresholds.json, each with the measured score it was set from,
the date, and a margin. `pytest` runs the cases marked `default_suite` (minutes); `pytest -m
regression` runs all of them. `pytest -m regression --update-thresholds` reruns the cases and
rewrites `measured` (and `min_normalized` = measured - margin, `measured_on`) for an intended
change, keeping the previous values under `history`. Every case prints measured vs expected
(`-s` shows it on success; a failure's message carries it).
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import json
from pathlib import Path

import pytest

THRESHOLDS = Path(__file__).with_name("regression") / "thresholds.json"
CASES = json.loads(THRESHOLDS.read_text())["cases"]


def case_id(case: dict) -> str:
    return f"{case['algo']}-{case['env']}-{case['dataset']}-{case.get('updates', 'plan')}"


def run_case(case: dict, tmp_path: Path, monkeypatch) -> dict:
    if case.get("dataset_episodes"):
        # A small copy of the dataset, built from the committed generators into a temp root.
        from datasets import build

        monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
        build.build_dataset(case["env"], case["dataset"], episodes=case["dataset_episodes"])
    module = importlib.import_module(f"algorithms.{case['algo']}")
    fields = {f.name for f in dataclasses.fields(module.Config)}
    # Only what the algorithm has: a planner (mppi) has no update budget, nothing to evaluate along the way.
    common = {"updates": case.get("updates"), "eval_every": 10**9}
    config = module.Config(env=case["env"], dataset=case["dataset"], seed=case["seed"],
                           final_eval_episodes=case["eval_episodes"], wandb="disabled", run_root=str(tmp_path / "runs"),
                           **{k: v for k, v in common.items() if k in fields and v is not None},
                           **case.get("config", {}))
    (final,) = module.train(config)
    return final


def check(case: dict, final: dict, update: bool) -> None:
    """Compare a fresh run's final normalized score with the case's threshold, or (with
    --update-thresholds) rewrite the case's expected values from it, keeping the old ones."""
    measured = final["normalized_score"]
    print(f"{case_id(case)}: measured {measured:.1f} (return {final.get('mean', float('nan')):.1f}), "
          f"expected >= {case['min_normalized']} (set from {case['measured']} on {case['measured_on']})")
    if update:
        history = case.setdefault("history", [])
        history.append({"measured": case["measured"], "measured_on": case["measured_on"],
                        "min_normalized": case["min_normalized"]})
        case.update(measured=round(measured, 1), min_normalized=round(measured - case["margin"], 1),
                    measured_on=str(datetime.date.today()))
        THRESHOLDS.write_text(json.dumps({"cases": CASES}, indent=2) + "\n")
        return
    assert measured >= case["min_normalized"], (
        f"{case_id(case)}: measured normalized score {measured:.1f} < expected {case['min_normalized']} "
        f"(set from {case['measured']} measured on {case['measured_on']}, margin {case['margin']}); "
        f"for an intended change: pytest -m regression --update-thresholds")


@pytest.mark.parametrize("case", [c for c in CASES if c.get("default_suite")], ids=case_id)
def test_fast_regression(case, tmp_path, monkeypatch, request):
    check(case, run_case(case, tmp_path, monkeypatch), request.config.getoption("--update-thresholds"))


@pytest.mark.regression
@pytest.mark.parametrize("case", CASES, ids=case_id)  # every case, the fast ones included
def test_regression(case, tmp_path, monkeypatch, request):
    check(case, run_case(case, tmp_path, monkeypatch), request.config.getoption("--update-thresholds"))


# ----------------------------------------------------------------------------- the harness itself (no training)

TOY_CASE = {"algo": "bc", "env": "walker-walk", "dataset": "expert", "updates": 10, "seed": 0, "eval_episodes": 1,
            "margin": 30, "min_normalized": 29.9, "measured": 59.9, "measured_on": "2026-11-22"}


def test_failure_prints_measured_vs_expected(monkeypatch):
    monkeypatch.setattr(f"{__name__}.CASES", [dict(TOY_CASE)])
    with pytest.raises(AssertionError, match=r"measured normalized score 12\.3 < expected 29\.9 \(set from 59\.9 "
                                             r"measured on 2026-11-22, margin 30\)"):
        check(CASES[0], {"normalized_score": 12.34, "mean": 140.0}, update=False)
    check(CASES[0], {"normalized_score": 30.0, "mean": 300.0}, update=False)


def test_update_thresholds_rewrites_expected_values(tmp_path, monkeypatch):
    path = tmp_path / "thresholds.json"
    monkeypatch.setattr(f"{__name__}.THRESHOLDS", path)
    monkeypatch.setattr(f"{__name__}.CASES", [dict(TOY_CASE)])
    check(CASES[0], {"normalized_score": 71.26, "mean": 700.0}, update=True)
    (case,) = json.loads(path.read_text())["cases"]
    assert (case["measured"], case["min_normalized"], case["measured_on"]) == (71.3, 41.3, str(datetime.date.today()))
    assert case["history"] == [{"measured": 59.9, "measured_on": "2026-11-22", "min_normalized": 29.9}]
