"""The SAC update step of algorithms/cqlsac.py on toy batches."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import cqlsac
from algorithms.common import NonFiniteError, check_finite

CONFIG = cqlsac.Config(online=True, hidden_dim=32, batch_size=64)


def toy_batch(key, n=64, reward=None):
    k1, k2, k3 = jax.random.split(key, 3)
    obs = jax.random.normal(k1, (n, 5))
    return {"obs": obs, "action": jax.random.uniform(k2, (n, 2), minval=-1, maxval=1),
            "reward": obs[:, 0] if reward is None else reward, "next_obs": jax.random.normal(k3, (n, 5))}


def test_update_shapes_and_finite():
    state = cqlsac.init_state(CONFIG, 5, 2, jax.random.PRNGKey(0))
    new_state, metrics = jax.jit(lambda s, b: cqlsac.update(CONFIG, s, b))(state, toy_batch(jax.random.PRNGKey(1)))
    assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
    assert int(new_state.updates) == 1
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), state, new_state)


def test_target_moves_by_tau():
    state = cqlsac.init_state(CONFIG, 5, 2, jax.random.PRNGKey(0))
    new_state, _ = cqlsac.update(CONFIG, state, toy_batch(jax.random.PRNGKey(1)))
    expected = jax.tree.map(lambda online, old: CONFIG.tau * online + (1 - CONFIG.tau) * old,
                            new_state.critic.params, state.target_critic_params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
                 new_state.target_critic_params, expected)
    assert not jax.tree_util.tree_all(jax.tree.map(jnp.array_equal, new_state.target_critic_params,
                                                   state.target_critic_params))


@pytest.mark.parametrize("target_entropy, direction", [(100.0, +1), (-100.0, -1)])
def test_temperature_moves_toward_the_entropy_target(target_entropy, direction):
    config = dataclasses.replace(CONFIG, target_entropy=target_entropy)
    state = cqlsac.init_state(config, 5, 2, jax.random.PRNGKey(0))
    new_state, _ = cqlsac.update(config, state, toy_batch(jax.random.PRNGKey(1)))
    change = float(new_state.log_alpha.params["log_alpha"] - state.log_alpha.params["log_alpha"])
    assert np.sign(change) == direction


def test_critic_loss_falls_on_a_toy_regression():
    # gamma = 0: the critic regresses onto the reward, a fixed target, so its loss must fall.
    config = dataclasses.replace(CONFIG, gamma=0.0, critic_lr=1e-3)
    state = cqlsac.init_state(config, 5, 2, jax.random.PRNGKey(0))
    batch = toy_batch(jax.random.PRNGKey(1))
    step = jax.jit(lambda s: cqlsac.update(config, s, batch))
    losses = []
    for _ in range(200):
        state, metrics = step(state)
        losses.append(float(metrics["critic_loss"]))
    assert losses[-1] < 0.1 * losses[0]


def test_tanh_gaussian_log_prob_matches_change_of_variables():
    mean, log_std = jnp.array([[0.3, -0.5]]), jnp.array([[-1.0, 0.2]])
    action, logp = cqlsac.sample_tanh_gaussian(mean, log_std, jax.random.PRNGKey(0))
    pre_tanh = jnp.arctanh(action)
    gaussian = jax.scipy.stats.norm.logpdf(pre_tanh, mean, jnp.exp(log_std)).sum(-1)
    expected = gaussian - jnp.log(1 - action**2).sum(-1)
    np.testing.assert_allclose(logp, expected, rtol=1e-4)


def test_train_chunk_runs_scanned_updates_and_fills_the_buffer():
    replay = cqlsac.Replay.create(100, 5, 2)
    state = cqlsac.init_state(CONFIG, 5, 2, jax.random.PRNGKey(0))
    batch = toy_batch(jax.random.PRNGKey(1), n=60)
    chunk = cqlsac.make_train_chunk(CONFIG, num_updates=7)
    state, replay, metrics = chunk(state, replay, batch)
    state, replay, metrics = chunk(state, replay, batch)
    assert int(state.updates) == 14 and metrics["critic_loss"].shape == (7,)
    assert int(replay.size) == 100 and int(replay.ptr) == 20  # wrapped around
    np.testing.assert_array_equal(replay.obs[:20], batch["obs"][40:])
    assert chunk._cache_size() == 1  # no recompilation from the first chunk to the next


def test_nan_guard_names_the_quantity_and_update():
    metrics = {"critic_loss": np.array([1.0, np.nan, 2.0]), "alpha": np.ones(3)}
    with pytest.raises(NonFiniteError, match="critic_loss is nan at update 11"):
        check_finite(metrics, first_update=9)
