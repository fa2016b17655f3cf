"""`--seeds`: several seeds trained by one vmapped program equal separate runs of each seed."""

import numpy as np
import pytest

from algorithms import bc, cqlsac
from algorithms.common import ConfigError, load_checkpoint

COMMON = {"env": "walker-walk", "wandb": "disabled", "eval_every": 10**9, "final_eval_episodes": 1,
          "batch_size": 32, "hidden_dim": 16}


@pytest.mark.parametrize("module, extra", [
    (bc, {"updates": 60, "updates_per_chunk": 20, "checkpoint_every": 20}),
    (cqlsac, {"updates": 10, "updates_per_chunk": 5, "checkpoint_every": 5, "cql_num_actions": 2}),
])
def test_vmapped_seeds_equal_separate_runs(tmp_path, toy_file, module, extra):
    together = module.train(module.Config(dataset=toy_file, seeds="0,1", run_root=str(tmp_path / "v"), **COMMON,
                                          **extra))
    assert [f["seed"] for f in together] == [0, 1]
    name = module.__name__.split(".")[-1]
    for seed in (0, 1):
        module.train(module.Config(dataset=toy_file, seed=seed, run_root=str(tmp_path / "s"), **COMMON, **extra))
        _, separate = load_checkpoint(tmp_path / f"s/{name}/walker-walk/toy/seed{seed}/checkpoint.npz")
        _, vmapped = load_checkpoint(tmp_path / f"v/{name}/walker-walk/toy/seed{seed}/checkpoint.npz")
        assert separate.keys() == vmapped.keys()
        for key in separate:
            np.testing.assert_allclose(vmapped[key], separate[key], rtol=2e-4, atol=2e-5, err_msg=key)
    _, seed0 = load_checkpoint(tmp_path / f"v/{name}/walker-walk/toy/seed0/checkpoint.npz")
    _, seed1 = load_checkpoint(tmp_path / f"v/{name}/walker-walk/toy/seed1/checkpoint.npz")
    assert any(not np.array_equal(seed0[k], seed1[k]) for k in seed0 if "params" in k)


def test_vmapped_seeds_each_log_their_own_wandb_run(tmp_path, toy_file, monkeypatch):
    # The default (offline) wandb mode: once, two seeds in one process shared one wandb run and
    # the second seed's log failed on the first's finished run.
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = bc.Config(dataset=toy_file, seeds="0,1", run_root=str(tmp_path), updates=20, updates_per_chunk=10,
                       checkpoint_every=10, **{**COMMON, "wandb": "offline"})
    assert [f["seed"] for f in bc.train(config)] == [0, 1]
    for seed in (0, 1):
        runs = list((tmp_path / f"bc/walker-walk/toy/seed{seed}/wandb").glob("offline-run-*"))
        assert len(runs) == 1 and runs[0].name.endswith(
            (tmp_path / f"bc/walker-walk/toy/seed{seed}/wandb_id").read_text().strip())


def test_bad_seeds_rejected():
    with pytest.raises(ConfigError, match="comma-separated"):
        bc.Config(seeds="a,b")
    with pytest.raises(ConfigError, match="distinct"):
        bc.Config(seeds="1,1")
