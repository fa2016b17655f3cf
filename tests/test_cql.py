"""Offline CQL-SAC update on toy data: finite, conservative where it should be."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import cqlsac

CONFIG = cqlsac.Config(hidden_dim=32, batch_size=64, cql_num_actions=4)


def toy_data(n=256, key=0):
    k1, k2 = jax.random.split(jax.random.PRNGKey(key))
    obs = jax.random.normal(k1, (n, 5))
    # The behaviour policy always takes the same action: everything else is out of distribution.
    return {"obs": obs, "action": jnp.full((n, 2), 0.5), "reward": jnp.zeros(n), "next_obs": jax.random.normal(k2, (n, 5))}


def train(config, steps=150):
    data = toy_data()
    state = cqlsac.init_state(config, 5, 2, jax.random.PRNGKey(0), offline=True)
    config = dataclasses.replace(config, updates_per_chunk=steps)
    state, metrics = cqlsac.make_offline_chunk(config)(state, data)
    return state, data, jax.device_get(metrics)


def q_gap_data_vs_uniform(state, data):
    q_data = state.critic.apply_fn(state.critic.params, data["obs"], data["action"]).mean()
    uniform = jax.random.uniform(jax.random.PRNGKey(9), data["action"].shape, minval=-1, maxval=1)
    q_uniform = state.critic.apply_fn(state.critic.params, data["obs"], uniform).mean()
    return float(q_data - q_uniform)


def test_offline_update_finite_with_all_metrics():
    _, _, metrics = train(CONFIG, steps=5)
    for name in ("critic_loss", "td_loss", "cql_gap", "actor_loss", "q_max", "action_mse"):
        assert np.all(np.isfinite(metrics[name])), name


def test_conservative_term_pushes_out_of_distribution_q_down():
    cql_state, data, cql_metrics = train(CONFIG)
    plain_state, _, _ = train(dataclasses.replace(CONFIG, cql_alpha=0.0))
    cql_margin = q_gap_data_vs_uniform(cql_state, data)
    plain_margin = q_gap_data_vs_uniform(plain_state, data)
    assert cql_margin > 0.5  # dataset actions now valued above random ones (measured 0.79)
    assert cql_margin > plain_margin + 0.5  # without CQL: -0.10
    assert cql_metrics["cql_gap"][-1] < cql_metrics["cql_gap"][0]  # the gap it minimises falls


@pytest.mark.parametrize("importance_sampling", [True, False])
def test_gap_variants_are_finite(importance_sampling):
    config = dataclasses.replace(CONFIG, cql_importance_sampling=importance_sampling)
    _, _, metrics = train(config, steps=3)
    assert np.all(np.isfinite(metrics["cql_gap"]))


def test_max_target_backup_takes_the_best_sampled_next_action():
    state = cqlsac.init_state(CONFIG, 5, 2, jax.random.PRNGKey(0), offline=True)
    batch = toy_data(n=CONFIG.batch_size)
    targets = {}
    for max_backup in (False, True):
        config = dataclasses.replace(CONFIG, cql_max_target_backup=max_backup)
        _, metrics = cqlsac.update(config, state, batch, offline=True)
        assert all(np.isfinite(float(v)) for v in metrics.values())
        targets[max_backup] = float(metrics["target_q_mean"])
    # Same critics and states: the best of 4 policy samples per state backs up a higher value than one.
    assert targets[True] > targets[False]


def test_lagrange_weight_moves_toward_target_gap():
    # A target far above the gap: the dual variable must shrink the conservative weight.
    config = dataclasses.replace(CONFIG, cql_lagrange=True, cql_target_gap=100.0)
    state, _, metrics = train(config, steps=20)
    assert metrics["cql_weight"][-1] < metrics["cql_weight"][0]
    assert state.cql_log_alpha is not None


def test_online_state_has_no_lagrange_leaf():
    # Online checkpoints keep their layout: the dual variable only exists offline.
    online = cqlsac.init_state(dataclasses.replace(CONFIG, cql_lagrange=True), 5, 2, jax.random.PRNGKey(0))
    offline = cqlsac.init_state(CONFIG, 5, 2, jax.random.PRNGKey(0), offline=True)
    assert online.cql_log_alpha is None and offline.cql_log_alpha is None
    assert len(jax.tree.leaves(online)) == len(jax.tree.leaves(offline))


def test_offline_to_online_fine_tuning(tmp_path, toy_file):
    import json

    config = cqlsac.Config(dataset=toy_file, updates=10, updates_per_chunk=5, checkpoint_every=5, hidden_dim=16,
                           batch_size=32, cql_num_actions=2, online_steps=1000, online_cql_alpha=1.0,
                           eval_every=10**9, final_eval_episodes=1, wandb="disabled", run_root=str(tmp_path))
    (final,) = cqlsac.train(config)
    offline_dir = tmp_path / "cqlsac/walker-walk/toy/seed0"
    online_dir = tmp_path / "cqlsac/walker-walk/toy-to-online/seed0"
    assert (offline_dir / "final_eval.json").exists() and final["env_steps"] == 1000
    # The record says where it was computed: scores differ slightly across machines.
    machine = json.loads((online_dir / "final_eval.json").read_text())["machine"]
    assert set(machine) == {"cpu", "accelerator", "jax"} and machine["accelerator"].startswith("cpu")
    stored = json.loads((online_dir / "config.json").read_text())
    assert stored["online"] and stored["action_repeat"] == 1 and stored["online_cql_alpha"] == 1.0
    # The online phase continues the offline agent: its update counter goes on from 10.
    assert final["updates"] == 10 + 1000
    from algorithms.common import load_checkpoint

    _, arrays = load_checkpoint(online_dir / "checkpoint.npz")
    assert int(arrays["replay.size"]) == 2000 + 1000  # dataset + online transitions
    assert "norm.obs_mean" in arrays


def test_tanh_gaussian_log_prob_matches_the_sampler():
    mean, log_std = jnp.array([[0.3, -1.0]]), jnp.array([[-0.5, 0.2]])
    action, logp = cqlsac.sample_tanh_gaussian(mean, log_std, jax.random.PRNGKey(3))
    np.testing.assert_allclose(cqlsac.tanh_gaussian_log_prob(mean, log_std, action), logp, rtol=1e-4, atol=1e-4)


def mean_action_error(state, data):
    mean, _ = state.actor.apply_fn(state.actor.params, data["obs"])
    return float(jnp.abs(jnp.tanh(mean) - data["action"]).mean())


def test_actor_bc_term_pulls_the_policy_to_the_data():
    fast = dataclasses.replace(CONFIG, offline_actor_lr=1e-3)
    plain, data, _ = train(fast)
    pulled, _, metrics = train(dataclasses.replace(fast, offline_actor_bc_weight=10.0))
    assert np.all(np.isfinite(metrics["actor_loss"]))
    # Mean |action - 0.5| over 150 updates: measured 0.087 with the term, 0.33 without.
    assert mean_action_error(pulled, data) < 0.5 * mean_action_error(plain, data)


def test_bc_warm_start_imitates_the_data_then_hands_over_to_the_critic():
    fast = dataclasses.replace(CONFIG, offline_actor_lr=1e-3)
    warm, data, warm_metrics = train(dataclasses.replace(fast, offline_bc_steps=150))
    cold, _, _ = train(fast)
    assert mean_action_error(warm, data) < 0.15  # the behaviour action 0.5 (measured 0.08; cold 0.33)
    assert mean_action_error(warm, data) < 0.5 * mean_action_error(cold, data)
    # The logged distance from the data tracks the imitation (measured 0.012 at the end).
    assert warm_metrics["action_mse"][-1] < min(0.03, 0.1 * warm_metrics["action_mse"][0])
    # From update 5 on, a 5-update warm start trains exactly as a run without one.
    after_five, _, _ = train(dataclasses.replace(CONFIG, offline_bc_steps=5), steps=5)

    def next_actor(bc_steps):
        config = dataclasses.replace(CONFIG, offline_bc_steps=bc_steps, updates_per_chunk=1)
        state = jax.tree.map(jnp.copy, after_five)  # the chunk donates its input
        return cqlsac.make_offline_chunk(config)(state, data)[0].actor.params

    def leaves_equal(a, b) -> list[bool]:
        return jax.tree.leaves(jax.tree.map(lambda x, y: bool(jnp.array_equal(x, y)), a, b))

    assert all(leaves_equal(next_actor(5), next_actor(0))) and not any(leaves_equal(next_actor(6), next_actor(0)))


def test_actor_bc_weight_defaults_by_dataset_type_and_is_recorded_resolved():
    assert cqlsac.Config(dataset="expert").offline_actor_bc_weight == cqlsac.ACTOR_BC_WEIGHT["expert"] > 0
    assert cqlsac.Config(dataset="dmc/walker-run/expert-v0").offline_actor_bc_weight > 0  # by its Minari id
    for other in ("medium", "medium-replay", "medium-expert", "random", "my_data.npz"):
        assert cqlsac.Config(dataset=other).offline_actor_bc_weight == 0.0, other
    assert cqlsac.Config(dataset="expert", offline_actor_bc_weight=0.0).offline_actor_bc_weight == 0.0  # a flag wins
    stored = dataclasses.asdict(cqlsac.Config(dataset="expert"))
    assert stored["offline_actor_bc_weight"] > 0 and cqlsac.Config(**stored) == cqlsac.Config(dataset="expert")
    with pytest.raises(cqlsac.ConfigError, match="offline-actor-bc-weight"):
        cqlsac.Config(offline_actor_bc_weight=-1.0)


def test_conservative_weight_and_budget_default_by_env_and_dataset():
    own = cqlsac.Config(env="walker-run", dataset="medium-expert")
    assert (own.cql_alpha, own.updates) == (1.0, 60_000)
    assert cqlsac.Config(env="walker-run", dataset="dmc/walker-run/medium-expert-v0").cql_alpha == 1.0  # Minari id
    for env, dataset in (("walker-walk", "medium-expert"), ("walker-run", "medium"), ("walker-run", "my_data.npz")):
        config = cqlsac.Config(env=env, dataset=dataset)
        assert (config.cql_alpha, config.updates) == (5.0, 30_000), (env, dataset)
    flagged = cqlsac.Config(env="walker-run", dataset="medium-expert", cql_alpha=5.0, updates=100)
    assert (flagged.cql_alpha, flagged.updates) == (5.0, 100)  # flags win
    assert dataclasses.asdict(own)["cql_alpha"] == 1.0  # config.json records the weight the run used


def test_a_run_from_before_the_actor_bc_field_keeps_its_weight_of_zero():
    from algorithms.common import config_differences, config_from_stored

    for dataset in ("medium", "expert"):
        stored = {k: v for k, v in dataclasses.asdict(cqlsac.Config(dataset=dataset)).items()
                  if k != "offline_actor_bc_weight"}
        # Evaluating, verifying or exporting the old run rebuilds the config it trained with ...
        assert config_from_stored(cqlsac.Config, {"algo": "cqlsac", **stored}).offline_actor_bc_weight == 0.0
        # ... and resuming it under today's default is refused where that default differs.
        differences = config_differences(stored, cqlsac.Config(dataset=dataset))
        assert differences == ([] if dataset == "medium" else ["offline_actor_bc_weight: 0.0 -> 1.0"])
