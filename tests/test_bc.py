"""Behaviour cloning update on toy data."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import bc

CONFIG = bc.Config(hidden_dim=32, batch_size=64, updates_per_chunk=300, learning_rate=1e-3)


def toy_data(n=512):
    obs = jax.random.normal(jax.random.PRNGKey(0), (n, 5))
    action = jnp.tanh(obs[:, :2] * 2.0)  # a deterministic expert, with actions near the bounds
    return {"obs": obs, "action": jnp.clip(action, -1, 1)}


@pytest.mark.parametrize("head", ["deterministic", "gaussian"])
def test_loss_falls_and_stays_finite(head):
    config = dataclasses.replace(CONFIG, head=head)
    data = toy_data()
    state = bc.init_state(config, data["obs"].mean(0), data["obs"].std(0), 2, jax.random.PRNGKey(1))
    state, metrics = bc.make_train_chunk(config)(state, data)
    metrics = jax.device_get(metrics)
    assert all(np.all(np.isfinite(v)) for v in metrics.values())
    first, last = (lambda k: metrics[k][:20].mean()), (lambda k: metrics[k][-20:].mean())
    if head == "deterministic":
        assert last("mse") < 0.2 * first("mse")
    else:  # the likelihood fits spread as well as mean: its loss falls, the mean error too
        assert last("loss") < first("loss") - 1.0
        assert last("log_likelihood") > first("log_likelihood") + 1.0
        assert last("mse") < first("mse")
    assert int(state.updates) == config.updates_per_chunk


def test_gaussian_head_survives_actions_at_the_bounds():
    config = dataclasses.replace(CONFIG, head="gaussian", updates_per_chunk=5)
    data = {"obs": jax.random.normal(jax.random.PRNGKey(0), (64, 5)), "action": jnp.ones((64, 2))}
    state = bc.init_state(config, jnp.zeros(5), jnp.ones(5), 2, jax.random.PRNGKey(1))
    _, metrics = bc.make_train_chunk(config)(state, data)
    assert np.all(np.isfinite(jax.device_get(metrics["loss"])))


def test_policy_normalizes_observations():
    config = CONFIG
    state = bc.init_state(config, jnp.full(5, 3.0), jnp.full(5, 2.0), 2, jax.random.PRNGKey(1))
    policy = bc.make_policy(config, 2)
    obs = jax.random.normal(jax.random.PRNGKey(2), (4, 5))
    act = bc.act((state.policy.params, state.obs_mean, state.obs_std), obs, None, policy)
    expected = jnp.tanh(policy.apply(state.policy.params, (obs - 3.0) / 2.0)[0])
    np.testing.assert_allclose(act, expected, rtol=1e-6)
    assert float(jnp.abs(act).max()) <= 1.0
