"""train.py / evaluate.py: help, and bad input rejected fast without training anything."""

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd=ROOT):
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    return proc, time.perf_counter() - start


def test_help_lists_algorithms():
    proc, _ = run("train.py", "--help")
    assert proc.returncode == 0 and "cqlsac" in proc.stdout


def test_algorithm_help_lists_every_field():
    import dataclasses

    from algorithms import cqlsac

    proc, _ = run("train.py", "cqlsac", "--help")
    assert proc.returncode == 0
    for f in dataclasses.fields(cqlsac.Config):
        assert f"--{f.name.replace('_', '-')} " in proc.stdout


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "unknown algorithm 'nope'"),
        (["cqlsac", "--online", "--bogus-flag", "3"], "unknown flag --bogus-flag"),
        (["cqlsac", "--online", "--batch-sise", "3"], "did you mean --batch-size"),
        (["cqlsac", "--online", "--batch-size", "lots"], "--batch-size expects an integer"),
        (["cqlsac", "--online", "--wandb", "maybe"], "--wandb must be one of"),
        (["cqlsac", "--online", "--env", "walker-fly", "--wandb", "disabled"], "unknown env id 'walker-fly'"),
        (["bc", "--dataset", "mediocre", "--wandb", "disabled"], "unknown dataset 'mediocre'"),
        (["cqlsac", "--seeds", "0,0"], "--seeds must be distinct"),
        (["bc", "--eval-every", "2500", "--wandb", "disabled"], ("--eval-every 2,500 must be a multiple of "
                                                                  "--updates-per-chunk 1,000")),
        (["mopo", "--eval-every", "1500", "--wandb", "disabled"],
         "--eval-every 1,500 must be a multiple of --rollout-every 1,000"),
    ],
)
def test_bad_input_fails_fast_and_trains_nothing(tmp_path, args, message):
    proc, seconds = run("train.py", *args, "--run-root", str(tmp_path))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert seconds < 20
    assert not list(tmp_path.rglob("metrics.jsonl")) and not list(tmp_path.rglob("checkpoint.npz"))


def test_evaluate_rejects_non_run_dir(tmp_path):
    proc, _ = run("evaluate.py", str(tmp_path))
    assert proc.returncode == 2 and "not a run directory" in proc.stderr
