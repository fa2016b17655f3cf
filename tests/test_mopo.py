"""MOPO: rollouts stop at the horizon with penalized rewards, the update chunk stays finite,
and a tiny run trains, checkpoints and serves as an MPPI prior."""

import dataclasses
import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import dynamics, mopo, mppi
from algorithms.common import ConfigError

CONFIG = mopo.Config(rollout_horizon=3, rollout_batch=16, rollout_every=10, model_buffer_size=200, batch_size=32,
                     hidden_dim=16, penalty_weight=2.0, updates=20, eval_every=20, checkpoint_every=20,
                     wandb="disabled")


def toy_model(obs_dim=5, action_dim=2):
    config = dynamics.Config(ensemble_size=3, num_elites=2, hidden_dim=8, num_layers=1)
    return dynamics.init_model(config, obs_dim, action_dim, jax.random.PRNGKey(0))


def test_penalized_reward_is_reward_minus_weight_times_uncertainty():
    np.testing.assert_allclose(dynamics.penalized_reward(jnp.array([1.0, 0.5]), jnp.array([0.2, 0.1]), 2.5),
                               [0.5, 0.25], rtol=1e-6)


@pytest.fixture(scope="module")
def state():
    return mopo.init_state(CONFIG, 5, 2, jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def model():
    return toy_model()


def test_rollouts_stop_at_the_horizon_with_penalized_rewards(state, model):
    rollouts = jax.jit(partial(mopo.generate_rollouts, CONFIG))(state.sac.actor, model, jnp.ones((50, 5)),
                                                                jnp.zeros(5), jnp.ones(5), jax.random.PRNGKey(1))
    assert rollouts["obs"].shape == (3, 16, 5) and rollouts["action"].shape == (3, 16, 2)
    assert bool(jnp.all(jnp.abs(rollouts["action"]) <= 1.0))
    np.testing.assert_allclose(rollouts["reward"], rollouts["model_reward"] - 2.0 * rollouts["uncertainty"], rtol=1e-5)
    # Step t+1 starts where step t ended.
    np.testing.assert_allclose(rollouts["obs"][1:], rollouts["next_obs"][:-1])


def test_chunk_adds_one_rollout_and_logs_penalty_statistics(state, model):
    data = {"real": {"obs": jnp.zeros((40, 5)), "action": jnp.zeros((40, 2)), "reward": jnp.zeros(40),
                     "next_obs": jnp.zeros((40, 5))},
            "start_obs": jnp.ones((40, 5)), "model": model, "obs_mean": jnp.zeros(5), "obs_std": jnp.ones(5)}
    chunk = jax.jit(mopo.make_train_chunk(CONFIG))
    state, metrics = chunk(state, data)
    assert int(state.buffer.size) == 3 * 16  # horizon x rollout batch, nothing more
    state, metrics = chunk(state, data)
    assert int(state.buffer.size) == 2 * 3 * 16 and int(state.sac.updates) == 20
    for name in ("critic_loss", "actor_loss", "uncertainty_mean", "uncertainty_max", "penalized_reward_mean"):
        assert metrics[name].shape == (10,) and bool(jnp.all(jnp.isfinite(metrics[name]))), name
    assert float(metrics["uncertainty_max"][0]) >= float(metrics["uncertainty_mean"][0]) > 0


def test_bad_flags_are_config_errors():
    with pytest.raises(ConfigError, match="multiple of --rollout-every"):
        mopo.Config(updates=1500, rollout_every=1000)
    with pytest.raises(ConfigError, match="real-ratio"):
        mopo.Config(real_ratio=1.5)


def test_real_ratio_defaults_by_dataset_type_and_is_recorded_resolved():
    assert mopo.Config(dataset="medium").real_ratio == 0.5
    assert mopo.Config(dataset="medium-replay").real_ratio == mopo.Config(dataset="expert").real_ratio == 0.05
    assert mopo.Config(dataset="medium", real_ratio=0.2).real_ratio == 0.2  # a flag wins
    assert mopo.Config(dataset="dmc/walker-run/medium-v0").real_ratio == 0.5  # the same data by its Minari id
    assert mopo.Config(dataset="dmc/walker-run/medium-replay-v0").real_ratio == 0.05
    assert mopo.Config(dataset="my_data.npz").real_ratio == 0.05
    stored = dataclasses.asdict(mopo.Config(dataset="medium"))
    assert stored["real_ratio"] == 0.5 and mopo.Config(**stored) == mopo.Config(dataset="medium")


def test_tiny_run_trains_checkpoints_and_serves_as_mppi_prior(tmp_path, toy_file):
    dynamics.train_model(dynamics.Config(dataset=toy_file, ensemble_size=2, num_elites=1, hidden_dim=16,
                                         num_layers=1, updates_per_chunk=20, max_updates=20, open_loop_starts=8,
                                         run_root=str(tmp_path), wandb="disabled"))
    model_dir = tmp_path / "dynamics" / "walker-walk" / "toy" / "seed0"
    config = dataclasses.replace(CONFIG, dataset=toy_file, model_from=str(model_dir), run_root=str(tmp_path),
                                 final_eval_episodes=1)
    [final] = mopo.train(config)
    assert final["updates"] == 20 and np.isfinite(final["mean"])
    run = tmp_path / "mopo" / "walker-walk" / "toy" / "seed0"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert "train/uncertainty_max" in logged[0] and "train/penalized_reward_mean" in logged[0]
    act_fn, params, repeat = mopo.load_policy(run, config)
    assert act_fn(params, jnp.zeros((2, 24)), jax.random.PRNGKey(0)).shape == (2, 6) and repeat == 1
    prior, prior_params = mppi.load_prior(run, 24, 6)
    assert prior.value(prior_params, jnp.zeros((3, 24))).shape == (3,)


def test_mopo_and_mppi_share_the_default_dynamics_run():
    """Both consumers ask for the run `train.py dynamics` makes, so one fit serves both."""
    shared = dynamics.Config(env="walker-run", dataset="medium")
    assert mopo.model_config(mopo.Config(env="walker-run", dataset="medium")) == shared
    assert mppi.model_config(mppi.Config(env="walker-run", dataset="medium")) == shared
    # A consumer with another budget asks for another run (never silently the shared one).
    other = mopo.model_config(mopo.Config(env="walker-run", dataset="medium", model_max_updates=500))
    assert other != shared and other.updates_per_chunk == 500
