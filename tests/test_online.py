"""End-to-end online smoke run: trains, checkpoints, is killed, resumes from the same step; its
actors export as dataset generators."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--online", "--hidden-dim", "32", "--batch-size", "32", "--learning-starts", "500", "--log-every", "1000",
        "--eval-every", "2000", "--checkpoint-every", "2000", "--eval-episodes", "2", "--final-eval-episodes", "2",
        "--wandb", "disabled", "--total-env-steps", "4000", "--snapshot-every", "1000"]


def train(run_root, *extra, wait=True):
    cmd = [sys.executable, "train.py", "cqlsac", *TINY, "--run-root", str(run_root), *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if wait:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        return out, err
    return proc


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("straight")
    train(root)
    return root / "cqlsac" / "walker-walk" / "online" / "seed0"


def test_online_run_is_killed_resumes_and_matches_an_uninterrupted_run(tmp_path, straight_run):
    straight = json.loads((straight_run / "final_eval.json").read_text())
    assert straight["env_steps"] == 4000 and straight["episodes"] == 2

    run_dir = tmp_path / "killed" / "cqlsac" / "walker-walk" / "online" / "seed0"
    proc = train(tmp_path / "killed", wait=False)
    deadline = time.time() + 300
    while not (run_dir / "checkpoint.npz").exists():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "final_eval.json").exists()

    _, err = train(tmp_path / "killed")
    assert "from step 2,000" in err
    resumed = json.loads((run_dir / "final_eval.json").read_text())
    assert resumed["env_steps"] == 4000 and resumed["updates"] == straight["updates"]
    # Same seeds, same data, same updates: the resumed run ends where the uninterrupted one did.
    assert resumed["returns"] == straight["returns"]
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and len(steps) == len(set(zip(steps, range(len(steps)))))

    # The finished run scores through evaluate.py like any other.
    proc = subprocess.run([sys.executable, "evaluate.py", str(run_dir), "--episodes", "2"], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run_dir / "evaluate.json").read_text())["returns"] == resumed["returns"]


def test_generators_export_and_expert_only_replacement(tmp_path, straight_run):
    from datasets import generators

    out = tmp_path / "generators"
    with pytest.raises(SystemExit, match="no generators.json; export all three first"):
        generators.main("walker-walk", str(straight_run), only="expert", out=str(out))
    generators.main("walker-walk", str(straight_run), episodes=2, dry_run=True, out=str(out))
    assert not out.exists()  # a dry run only measures
    generators.main("walker-walk", str(straight_run), episodes=2, out=str(out))
    env_dir = out / "walker-walk"
    info = json.loads((env_dir / "generators.json").read_text())
    assert set(info) == {"expert", "medium", "medium-replay", "online_run"}
    assert info["online_run"]["command"].startswith("python train.py cqlsac --env walker-walk --online --seed 0 ")
    assert "--hidden-dim 32" in info["online_run"]["command"]  # non-default flags are recorded
    assert info["medium"]["env_steps"] in (1000, 2000, 3000, 4000) and info["medium"]["hidden_dim"] == 32
    kept = {name: (env_dir / name).read_bytes() for name in ("medium.npz", "medium-replay.npz")}

    # A second run (seed 1) replaces only the expert; the medium files stay byte-identical.
    train(tmp_path / "other", "--seed", "1")
    other = tmp_path / "other" / "cqlsac" / "walker-walk" / "online" / "seed1"
    generators.main("walker-walk", str(other), episodes=2, only="expert", out=str(out))
    replaced = json.loads((env_dir / "generators.json").read_text())
    assert replaced["expert"]["online_run"]["seed"] == 1 and "--only expert" in replaced["expert"]["online_run"]["export"]
    assert replaced["medium"] == info["medium"] and replaced["online_run"] == info["online_run"]
    assert {name: (env_dir / name).read_bytes() for name in kept} == kept
    with pytest.raises(SystemExit):
        generators.main("walker-walk", str(other), only="medium", out=str(out))
