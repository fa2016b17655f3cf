"""End-to-end online smoke run: trains, checkpoints, is killed, resumes from the same step."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--online", "--hidden-dim", "32", "--batch-size", "32", "--learning-starts", "500", "--log-every", "1000",
        "--eval-every", "2000", "--checkpoint-every", "2000", "--eval-episodes", "2", "--final-eval-episodes", "2",
        "--wandb", "disabled", "--total-env-steps", "4000"]


def train(run_root, *extra, wait=True):
    cmd = [sys.executable, "train.py", "cqlsac", *TINY, "--run-root", str(run_root), *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    if wait:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err
        return out, err
    return proc


def test_online_run_is_killed_resumes_and_matches_an_uninterrupted_run(tmp_path):
    straight_dir = tmp_path / "straight" / "cqlsac" / "walker-walk" / "online" / "seed0"
    train(tmp_path / "straight")
    straight = json.loads((straight_dir / "final_eval.json").read_text())
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
