"""Run plumbing: config parsing, checkpoints, config-change guard."""

import dataclasses
import json

import jax.numpy as jnp
import numpy as np
import pytest

from algorithms.common import (
    CheckpointError,
    ConfigError,
    Run,
    RunConfig,
    field,
    flatten_tree,
    load_checkpoint,
    parse_config,
    restore_tree,
    save_checkpoint,
)


@dataclasses.dataclass(frozen=True)
class ToyConfig(RunConfig):
    steps: int = field(10, "steps", resume_safe=True)
    lr: float = field(1e-3, "learning rate")
    online: bool = field(False, "online")
    target: float | None = field(None, "optional")


def test_parse_config_coerces_and_validates():
    config = parse_config(ToyConfig, ["--steps", "1e3", "--lr", "1", "--online", "--target", "-3", "--env", "walker-run"])
    assert config == ToyConfig(steps=1000, lr=1.0, online=True, target=-3.0, env="walker-run")
    with pytest.raises(ConfigError, match="unknown flag --stepz; did you mean --steps"):
        parse_config(ToyConfig, ["--stepz", "3"])
    with pytest.raises(ConfigError, match="expects True or False"):
        parse_config(ToyConfig, ["--online", "yes"])
    with pytest.raises(ConfigError, match="expects a number"):
        parse_config(ToyConfig, ["--lr", "fast"])


def test_checkpoint_roundtrip_and_mismatch(tmp_path):
    tree = {"a": jnp.arange(3.0), "b": {"c": jnp.zeros((2, 2), jnp.int32)}}
    save_checkpoint(tmp_path / "ck.npz", 42, flatten_tree(tree, "s"))
    step, arrays = load_checkpoint(tmp_path / "ck.npz")
    assert step == 42
    restored = restore_tree(tree, arrays, "s")
    np.testing.assert_array_equal(restored["a"], tree["a"])
    with pytest.raises(CheckpointError, match="expected float32\\[4\\]"):
        restore_tree({"a": jnp.zeros(4), "b": tree["b"]}, arrays, "s")
    with pytest.raises(CheckpointError, match="no entry"):
        restore_tree({"z": jnp.zeros(3)}, arrays, "s")


def test_corrupt_checkpoint_is_rejected(tmp_path):
    path = tmp_path / "ck.npz"
    save_checkpoint(path, 1, {"x": np.zeros(100)})
    path.write_bytes(path.read_bytes()[:50])  # a truncated file
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(path)


def test_resume_refuses_a_changed_config(tmp_path):
    config = ToyConfig(run_root=str(tmp_path), wandb="disabled")
    run = Run("toy", config, "online", 10, "step")
    run.save(5, {"x": np.zeros(1)})
    Run("toy", dataclasses.replace(config, steps=20), "online", 20, "step")  # resume_safe: fine
    with pytest.raises(ConfigError, match="lr: 0.001 -> 0.01"):
        Run("toy", dataclasses.replace(config, lr=1e-2), "online", 10, "step")


def test_resume_refuses_another_dataset_build(tmp_path):
    config = ToyConfig(run_root=str(tmp_path), wandb="disabled")
    Run("toy", config, "expert", 10, "step", dataset_sha256="a" * 64).save(5, {"x": np.zeros(1)})
    Run("toy", config, "expert", 10, "step", dataset_sha256="a" * 64)  # the same build: resumes
    with pytest.raises(ConfigError, match="another build of its dataset.*aaaaaaaaaaaa, now bbbbbbbbbbbb"):
        Run("toy", config, "expert", 10, "step", dataset_sha256="b" * 64)
    # A run from before hashes were recorded is not judged, and not stamped with today's build.
    old = ToyConfig(run_root=str(tmp_path / "old"), wandb="disabled")
    Run("toy", old, "expert", 10, "step").save(5, {"x": np.zeros(1)})
    run = Run("toy", old, "expert", 10, "step", dataset_sha256="b" * 64)
    assert "dataset_sha256" not in json.loads((run.dir / "config.json").read_text())


def test_metrics_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    config = ToyConfig(run_root=str(tmp_path), wandb="disabled")
    run = Run("toy", config, "online", 10, "step")
    for step in (1, 2, 3):
        run.log(step, {"x": step})
        if step == 2:
            run.save(2, {"x": np.zeros(1)})
    resumed = Run("toy", config, "online", 10, "step")
    assert resumed.restore()[0] == 2
    lines = (resumed.dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 2
