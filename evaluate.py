"""Score a saved run: `python evaluate.py RUN_DIR [--episodes N] [--video] [--wandb MODE]`.

Loads the run's config and latest checkpoint, evaluates the deterministic policy with the
shared harness (eval seeds disjoint from training data), prints raw and normalized return
and writes RUN_DIR/evaluate.json. `--video` renders episode 0 headlessly to
RUN_DIR/videos/eval.mp4 and logs it to wandb (offline unless --wandb online).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fire

import envs  # first: process setup (headless GL, CPU dispatch) before JAX starts
from algorithms import ALGORITHMS
from algorithms.common import CheckpointError, ConfigError, config_from_stored


def load_run(run_dir: str | Path) -> tuple[Any, Callable, Any, int]:
    """A saved run's config and deterministic policy: (config, act_fn, params, action_repeat)."""
    path = Path(run_dir)
    config_path = path / "config.json"
    if not config_path.exists():
        raise ConfigError(f"{path} is not a run directory (no config.json); runs live under runs/<algo>/<env>/...")
    if not (path / "checkpoint.npz").exists():
        raise CheckpointError(f"{path} has no checkpoint.npz yet: the run has not saved one")
    stored = json.loads(config_path.read_text())
    algo = stored.pop("algo")
    if algo not in ALGORITHMS:
        raise ConfigError(f"{config_path} names unknown algorithm {algo!r}")
    module = importlib.import_module(f"algorithms.{algo}")
    config = config_from_stored(module.Config, stored)
    return (config, *module.load_policy(path, config))


def evaluate_run(run_dir: str, episodes: int = 50, video: bool = False, wandb: str = "offline") -> dict:
    path = Path(run_dir)
    config, act_fn, params, action_repeat = load_run(path)
    video_path = path / "videos" / "eval.mp4" if video else None
    result = envs.evaluate(config.env, act_fn, params, episodes, seed=config.seed,
                           action_repeat=action_repeat, video_path=video_path)
    report = {**result.as_dict(), "action_repeat": action_repeat, "video": str(video_path) if video else None}
    (path / "evaluate.json").write_text(json.dumps(report, indent=2) + "\n")
    if video and wandb != "disabled":
        import wandb as wandb_lib

        run = wandb_lib.init(project=config.wandb_project, group=f"{config.env}/{path.parent.name}",
                             job_type="evaluate", mode=wandb, dir=str(path), config=dataclasses.asdict(config),
                             settings=wandb_lib.Settings(console="off", quiet=True))
        run.log({"eval/video": wandb_lib.Video(str(video_path), format="mp4"), "eval/return": result.mean,
                 "eval/normalized_score": result.normalized_score})
        run.finish()
    return report


def main(run_dir: str, episodes: int = 50, video: bool = False, wandb: str = "offline") -> None:
    try:
        report = evaluate_run(run_dir, episodes, video, wandb)
    except (ConfigError, CheckpointError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"{report['env_id']}: return {report['mean']:.1f} +- {report['std']:.1f}, normalized "
          f"{report['normalized_score']:.1f} over {report['episodes']} episodes "
          f"({report['episodes_per_s']:.2f} episodes/s)" + (f"; video: {report['video']}" if video else ""))


if __name__ == "__main__":
    fire.Fire(main)
