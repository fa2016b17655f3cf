"""Score regressions: short training budgets that fail if learning broke.

Cases live in tests/regression/thresholds.json, each with the measured score it was set from,
the date, and a margin. `pytest` runs the cases marked `default_suite` (minutes); `pytest -m
regression` runs all of them. `pytest -m regression --update-thresholds` reruns the cases and
rewrites `measured` (and `min_normalized` = measured - margin) for an intended change.
"""

from __future__ import annotations

import datetime
import importlib
import json
from pathlib import Path

import pytest

THRESHOLDS = Path(__file__).with_name("regression") / "thresholds.json"
CASES = json.loads(THRESHOLDS.read_text())["cases"]


def case_id(case: dict) -> str:
    return f"{case['algo']}-{case['env']}-{case['dataset']}-{case['updates']}"


def run_case(case: dict, tmp_path: Path, monkeypatch) -> dict:
    if case.get("dataset_episodes"):
        # A small copy of the dataset, built from the committed generators into a temp root.
        from datasets import build

        monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
        build.build_dataset(case["env"], case["dataset"], episodes=case["dataset_episodes"])
    module = importlib.import_module(f"algorithms.{case['algo']}")
    config = module.Config(env=case["env"], dataset=case["dataset"], updates=case["updates"], seed=case["seed"],
                           eval_every=10**9, final_eval_episodes=case["eval_episodes"], wandb="disabled",
                           run_root=str(tmp_path / "runs"), **case.get("config", {}))
    (final,) = module.train(config)
    return final


def check(case: dict, final: dict, update: bool) -> None:
    measured = final["normalized_score"]
    if update:
        case.update(measured=round(measured, 1), min_normalized=round(measured - case["margin"], 1),
                    measured_on=str(datetime.date.today()))
        THRESHOLDS.write_text(json.dumps({"cases": CASES}, indent=2) + "\n")
        return
    assert measured >= case["min_normalized"], (
        f"{case_id(case)}: normalized score {measured:.1f} < expected {case['min_normalized']} "
        f"(set from {case['measured']} measured on {case['measured_on']}, margin {case['margin']})")


@pytest.mark.parametrize("case", [c for c in CASES if c.get("default_suite")], ids=case_id)
def test_fast_regression(case, tmp_path, monkeypatch, request):
    check(case, run_case(case, tmp_path, monkeypatch), request.config.getoption("--update-thresholds"))


@pytest.mark.regression
@pytest.mark.parametrize("case", [c for c in CASES if not c.get("default_suite")], ids=case_id)
def test_regression(case, tmp_path, monkeypatch, request):
    check(case, run_case(case, tmp_path, monkeypatch), request.config.getoption("--update-thresholds"))
