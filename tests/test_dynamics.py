"""Dynamics ensemble on a known toy system: it fits, elites come from the holdout, the
holdout is split by episode, and a saved model reloads to identical predictions."""

import dataclasses
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import dynamics
from algorithms.common import ConfigError
from reports.model_error import model_error_table

TINY = {"ensemble_size": 3, "num_elites": 2, "hidden_dim": 32, "num_layers": 2, "updates_per_chunk": 100,
        "max_updates": 800, "patience": 100, "batch_size": 64, "learning_rate": 3e-3, "open_loop_starts": 32,
        "wandb": "disabled"}


def linear_system(episodes=12, length=60, seed=0) -> dynamics.Transitions:
    """s' = A s + B a + small noise, r = a . w: a known system the ensemble must learn."""
    rng = np.random.default_rng(seed)
    a_mat = np.array([[0.9, 0.1, 0.0], [0.0, 0.9, 0.1], [-0.1, 0.0, 0.9]])
    b_mat = np.random.default_rng(123).normal(size=(2, 3)) * 0.5  # the same system for every seed
    obs, action, reward, next_obs = [], [], [], []
    for _ in range(episodes):
        s = rng.normal(size=3)
        for _ in range(length):
            a = rng.uniform(-1, 1, 2)
            s2 = s @ a_mat.T + a @ b_mat + 0.01 * rng.normal(size=3)
            obs.append(s), action.append(a), reward.append(a @ np.array([0.5, -0.3])), next_obs.append(s2)
            s = s2
    end = (np.arange(episodes * length) % length) == length - 1
    as32 = lambda x: np.asarray(x, np.float32)
    return dynamics.Transitions(as32(obs), as32(action), as32(reward), as32(next_obs), end)


@pytest.fixture(scope="module")
def fitted():
    logs = []
    model, diagnostics = dynamics.fit(dynamics.Config(**TINY), linear_system(), log=lambda u, m: logs.append(m))
    return model, diagnostics, logs


def test_ensemble_fits_toy_system_and_picks_elites_on_holdout(fitted):
    model, diagnostics, logs = fitted
    assert logs[-1]["model/holdout_mse"] < 0.5 * logs[0]["model/holdout_mse"]  # error keeps falling
    assert diagnostics["holdout_mse"] < 0.05  # normalized targets: 1.0 = predicting the mean
    members = np.asarray(diagnostics["holdout_mse_members"])
    assert sorted(diagnostics["elites"]) == sorted(np.argsort(members)[:2].tolist())
    assert np.asarray(model.elites).tolist() == diagnostics["elites"]
    # Open-loop error is reported at every horizon and grows with it on this stable system.
    assert diagnostics["open_loop_mse_h1"] <= diagnostics["open_loop_mse_h25"]
    for h in dynamics.HORIZONS:
        assert np.isfinite(diagnostics[f"open_loop_mse_h{h}"])


def test_predictions_match_the_true_system(fitted):
    model, _, _ = fitted
    data = linear_system(episodes=1, seed=1)
    next_obs, reward, _ = dynamics.step(model, jnp.asarray(data.obs), jnp.asarray(data.action),
                                        jax.random.PRNGKey(0), deterministic=True)
    assert np.abs(np.asarray(next_obs) - data.next_obs).mean() < 0.1
    assert np.abs(np.asarray(reward) - data.reward).mean() < 0.05


def test_step_shapes_and_uncertainty_is_max_elite_std_norm(fitted):
    model, _, _ = fitted
    obs, action = jnp.ones((5, 3)), jnp.zeros((5, 2))
    next_obs, reward, uncertainty = dynamics.step(model, obs, action, jax.random.PRNGKey(1))
    assert next_obs.shape == (5, 3) and reward.shape == (5,) and uncertainty.shape == (5,)
    _, std = dynamics.predict(model, obs, action)
    assert std.shape == (2, 5, 4)  # elites x batch x (obs_dim + reward)
    # MOPO's max elite std norm, on outputs in units of the data's spread (std / out_std).
    expected = np.linalg.norm(np.asarray(std) / np.asarray(model.out_std), axis=-1).max(0)
    np.testing.assert_allclose(uncertainty, expected, rtol=1e-5)
    # On the data the model was fit to, u is O(1): comparable to rewards, whatever the units.
    data = linear_system(episodes=1, seed=2)
    u_data = dynamics.step(model, jnp.asarray(data.obs), jnp.asarray(data.action), jax.random.PRNGKey(0), True)[2]
    assert 0.0 < float(u_data.mean()) < 2.0


def test_u_on_the_data_is_logged_from_the_same_rows_the_fallback_uses(fitted):
    model, diagnostics, _ = fitted
    data = linear_system()
    rows = dynamics.data_sample_rows(len(data.obs))
    np.testing.assert_array_equal(rows, dynamics.data_sample_rows(len(data.obs)))  # fixed sample
    u = np.asarray(dynamics.step(model, jnp.asarray(data.obs[rows]), jnp.asarray(data.action[rows]),
                                 jax.random.PRNGKey(0), True)[2])
    for p in dynamics.DATA_UNCERTAINTY_PERCENTILES:
        assert diagnostics[f"data_uncertainty_p{p}"] == pytest.approx(np.percentile(u, p), rel=1e-5)
    assert diagnostics["data_uncertainty_p5"] < diagnostics["data_uncertainty_p50"] < diagnostics["data_uncertainty_p95"]


def test_holdout_is_split_by_episode():
    end = (np.arange(1000) % 100) == 99
    train, holdout = dynamics.split_episodes(end, 0.2, seed=0)
    assert len(holdout) == 200 and len(train) == 800
    assert set(train // 100).isdisjoint(set(holdout // 100))


def test_saved_model_reloads_to_identical_predictions(tmp_path):
    data = linear_system(episodes=4, length=50)
    path = tmp_path / "toy.npz"
    np.savez(path, observations=data.obs, actions=data.action, rewards=data.reward,
             next_observations=data.next_obs, timeouts=data.episode_end)
    config = dynamics.Config(**{**TINY, "max_updates": 200}, dataset=str(path), run_root=str(tmp_path / "runs"))
    model, _ = dynamics.train_model(config)
    run = tmp_path / "runs" / "dynamics" / "walker-walk" / "toy" / "seed0"
    assert json.loads((run / "final_eval.json").read_text())["updates"] == 200
    assert "model/open_loop_mse_h5" in (run / "metrics.jsonl").read_text()
    table = model_error_table(str(tmp_path / "runs")).splitlines()
    assert table[0].endswith("u on data, median | u on data, 95th pct |")
    row = json.loads((run / "final_eval.json").read_text())
    assert table[2].endswith(f"| {row['data_uncertainty_p50']:.3f} | {row['data_uncertainty_p95']:.3f} |")
    reloaded = dynamics.load_model(run)
    obs, action = jnp.asarray(data.obs[:7]), jnp.asarray(data.action[:7])
    for a, b in zip(dynamics.predict(model, obs, action), dynamics.predict(reloaded, obs, action)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The default lookup reuses the saved model instead of training again.
    again = dynamics.model_for("", config)
    np.testing.assert_array_equal(np.asarray(again.elites), np.asarray(model.elites))
    # ...but never one trained with another config (here a different budget): that is refused.
    with pytest.raises(ConfigError, match="trained with another config.*max_updates"):
        dynamics.model_for("", dataclasses.replace(config, max_updates=config.max_updates + config.updates_per_chunk))
    # ...nor one fit to another build of the same suite dataset (e.g. before a stronger expert).
    final_path = run / "final_eval.json"
    final = json.loads(final_path.read_text())
    assert final["dataset_content_sha256"] is None  # a user's .npz: no suite build hash
    final_path.write_text(json.dumps({**final, "dataset_content_sha256": "a" * 64}))
    build = lambda sha: types.SimpleNamespace(metadata={"suite_build": {"content_sha256": sha}})
    dynamics.model_for("", config, build("a" * 64))  # the same build: reused
    with pytest.raises(ConfigError, match="another build of this dataset.*aaaaaaaaaaaa, now bbbbbbbbbbbb"):
        dynamics.model_for("", config, build("b" * 64))


def test_missing_model_dir_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no trained dynamics model"):
        dynamics.model_for(str(tmp_path / "nope"), dynamics.Config(wandb="disabled"))
