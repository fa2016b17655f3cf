"""MPPI: finds the optimum of known quadratics, never leaves [-1, 1], warm-starts through the
harness, and plans in the env with a saved model (offline) and from scratch (online)."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from algorithms import dynamics, mppi
from algorithms.common import ConfigError

# A broad first iteration (init std 2.0, not the walker default 0.5) so one plan() call can reach
# a bound from a zero mean; on walker the warm start carries the mean there over several steps.
PLANNER = mppi.Config(horizon=3, num_samples=128, num_iterations=6, num_elites=16, temperature=0.5,
                      init_std=2.0, uncertainty_penalty=0.0, discount=1.0, wandb="disabled")


def quadratic(target: np.ndarray, penalty: float = 0.0) -> mppi.StepFn:
    """A static system whose reward is -|a - target|^2: the best plan holds `target`
    (clipped to the bounds). The uncertainty is |a| so a penalty pulls toward 0."""
    target = jnp.asarray(target, jnp.float32)

    def step_fn(obs, action):
        return obs, -((action - target) ** 2).sum(-1), jnp.abs(action).sum(-1)

    return step_fn


def run_plan(config, step_fn, action_dim, key=0):
    plan = jax.jit(lambda o, m, k: mppi.plan(config, step_fn, o, m, k))
    return plan(jnp.zeros(2), jnp.zeros((config.horizon, action_dim)), jax.random.PRNGKey(key))


@pytest.mark.parametrize("target", [[0.3], [-0.6, 0.4]], ids=["1d", "2d"])
def test_finds_quadratic_optimum(target):
    action, mean = run_plan(PLANNER, quadratic(np.asarray(target)), len(target))
    np.testing.assert_allclose(action, target, atol=0.05)
    np.testing.assert_allclose(mean, np.broadcast_to(target, mean.shape), atol=0.1)


def test_optimum_outside_bounds_is_clipped_and_actions_stay_in_bounds():
    step_fn = quadratic(np.array([1.7, -3.0]))
    plan = jax.jit(jax.vmap(lambda k: mppi.plan(PLANNER, step_fn, jnp.zeros(2), jnp.zeros((3, 2)), k)))
    actions, means = plan(jax.random.split(jax.random.PRNGKey(0), 3))
    assert np.all(np.abs(np.asarray(means)) <= 1.0) and np.all(np.abs(np.asarray(actions)) <= 1.0)
    np.testing.assert_allclose(actions, [[1.0, -1.0]] * 3, atol=0.1)  # weighted mean of clipped samples


def test_uncertainty_penalty_moves_the_plan():
    # reward -(a - 0.8)^2 - lambda |a|: the optimum moves to 0.8 - lambda / 2.
    config = mppi.Config(**{**_fields(PLANNER), "uncertainty_penalty": 0.6})
    action, _ = run_plan(config, quadratic(np.array([0.8])), 1)
    np.testing.assert_allclose(action, [0.5], atol=0.05)


class ConstantPrior:
    """A stand-in for a borrowed agent: its policy always proposes `action`, its critic values a
    state as -|state - goal|^2 (the plan() interface of mppi.Prior)."""

    def __init__(self, action: float, goal: float = 0.0):
        self.action, self.goal = action, goal

    def sample(self, params, obs, key):
        return jnp.full((obs.shape[0], 1), self.action)

    def act(self, params, obs):
        return self.sample(params, obs, None)

    def value(self, params, obs):
        return -((obs - self.goal) ** 2).sum(-1)


def integrator(obs, action):
    """state += action, no reward: only a terminal value can rank plans."""
    return obs + action, jnp.zeros(obs.shape[0]), jnp.zeros(obs.shape[0])


def test_prior_proposals_reach_what_narrow_samples_cannot():
    # Samples around 0 with std 0.05 never come near 0.7; the prior's sequences do and win.
    narrow = mppi.Config(**{**_fields(PLANNER), "init_std": 0.05, "min_std": 0.05, "num_iterations": 1,
                            "num_prior_samples": 4, "num_elites": 4})
    step_fn = quadratic(np.array([0.7]))
    plan = jax.jit(lambda prior: mppi.plan(narrow, step_fn, jnp.zeros(1), jnp.zeros((3, 1)),
                                           jax.random.PRNGKey(0), prior, None), static_argnums=0)
    assert abs(float(plan(None)[0][0])) < 0.2
    np.testing.assert_allclose(plan(ConstantPrior(0.7))[0], [0.7], atol=1e-5)


@pytest.mark.parametrize("fallback_above, expected", [(0.0, 0.3), (1.0, 0.3), (0.5, 0.9)])
def test_policy_acts_where_the_model_is_unsure(fallback_above, expected):
    # The quadratic's best action is 0.3; the prior proposes 0.9, where u = |a| = 0.9. Above the
    # threshold the plan acts (0 = never fall back), below it the policy does.
    config = mppi.Config(**{**_fields(PLANNER), "policy_fallback_above": fallback_above,
                            "prior_from": "runs/cqlsac" if fallback_above else ""})
    action, _ = jax.jit(lambda k: mppi.plan(config, quadratic(np.array([0.3])), jnp.zeros(1), jnp.zeros((3, 1)), k,
                                            ConstantPrior(0.9), None))(jax.random.PRNGKey(0))
    np.testing.assert_allclose(action, [expected], atol=0.05)


@pytest.mark.parametrize("low, high, noisy_pct, clean_pct, expected", [
    (0.1, 0.5, 95.0, 0.0, 1.0), (1.1, 1.3, 95.0, 0.0, 1.29), (0.1, 0.5, 0.0, 95.0, 0.48), (0.1, 1.3, 0.0, 95.0, 1.0),
    (1.1, 1.3, 0.0, 95.0, 1.0)], ids=["clean-kept", "noisy-raised", "clean-lowered", "clean-wide-kept", "noisy-kept"])
def test_fallback_threshold_follows_the_data_only_as_asked(low, high, noisy_pct, clean_pct, expected):
    # u = |a| on the data. At 1.1-1.3 (a model of noisy data) 1.0 would flag every transition,
    # so the noisy-data percentile raises it to the data's 95th percentile; at 0.1-0.5 (clean
    # data) 1.0 would miss states the model knows less well than 95% of its data, so the
    # clean-data percentile lowers it, never raises it (0.1-1.3: its 95th pct 1.24 > 1.0).
    config = mppi.Config(**{**_fields(PLANNER), "policy_fallback_above": 1.0, "prior_from": "runs/cqlsac",
                            "fallback_noisy_data_percentile": noisy_pct,
                            "fallback_clean_data_percentile": clean_pct})
    assert config.fallback_follows_data
    actions = np.linspace(low, high, 1001, dtype=np.float32)[:, None]
    u_data = mppi.data_uncertainty(quadratic(np.array([0.0])), np.zeros((len(actions), 1), np.float32), actions)
    assert mppi.fallback_threshold(config, u_data) == pytest.approx(expected, abs=1e-3)
    kept = dataclasses.replace(config, fallback_noisy_data_percentile=0.0, fallback_clean_data_percentile=0.0)
    assert not kept.fallback_follows_data and mppi.fallback_threshold(kept, u_data) == 1.0


@pytest.mark.parametrize("goal", [1.5, -1.2])
def test_terminal_value_steers_a_plan_with_no_reward(goal):
    # Three integrator steps from 0, no reward, a critic that wants the state at `goal`: the
    # plan's actions must add up to it. The prior's own proposals (all 1.0 or all -1.0, a sum of
    # +-3) overshoot and lose.
    prior = ConstantPrior(action=float(np.sign(goal)), goal=goal)
    _, mean = jax.jit(lambda k: mppi.plan(PLANNER, integrator, jnp.zeros(1), jnp.zeros((3, 1)), k, prior, None)
                      )(jax.random.PRNGKey(0))
    np.testing.assert_allclose(mean.sum(), goal, atol=0.1)


def _fields(config):
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def test_warm_start_shifts_the_previous_plan():
    # One iteration with a tiny std: the plan barely moves from the shifted warm start.
    config = mppi.Config(**{**_fields(PLANNER), "num_iterations": 1, "init_std": 0.05, "min_std": 0.05})
    prev = jnp.array([[0.9], [0.2], [-0.4]])
    _, mean = jax.jit(lambda o, m, k: mppi.plan(config, lambda s, a: (s, jnp.zeros(a.shape[0]), jnp.zeros(a.shape[0])),
                                                o, m, k))(jnp.zeros(2), prev, jax.random.PRNGKey(0))
    np.testing.assert_allclose(mean, [[0.2], [-0.4], [0.0]], atol=0.05)


def test_uncertainty_is_scale_free_so_the_penalty_cannot_swamp_the_reward():
    """Regression: u was the norm of the raw predicted std. On walker the joint velocities (data
    std 6-9) made u ~ 4-8 against rewards <= 1, so the default penalty had the planner minimize
    velocity variance instead of seeking reward (random-level returns). Measuring an output in
    other units (here the observation x 1000) must change neither u nor the plan."""
    model = dynamics.init_model(dynamics.Config(ensemble_size=3, num_elites=2, hidden_dim=8, num_layers=1), 4, 2,
                                jax.random.PRNGKey(0))
    rescaled = model.replace(out_std=model.out_std.at[:-1].multiply(1000.0))
    obs, action = jnp.ones((3, 4)), jnp.linspace(-1.0, 1.0, 6).reshape(3, 2)
    # Horizon 1: the plan sees only reward - lambda * u of the first step, which the units leave alone.
    config = mppi.Config(**{**_fields(PLANNER), "horizon": 1, "num_iterations": 3,
                            "uncertainty_penalty": mppi.Config().uncertainty_penalty})

    @jax.jit  # one compile for both models (same pytree structure)
    def u_and_plan(model):
        u = dynamics.step(model, obs, action, jax.random.PRNGKey(0), True)[2]
        return u, mppi.plan(config, mppi.model_step_fn(model), obs[0], jnp.zeros((1, 2)), jax.random.PRNGKey(3))[0]

    (u, plan), (u_rescaled, plan_rescaled) = u_and_plan(model), u_and_plan(rescaled)
    np.testing.assert_allclose(u_rescaled, u, rtol=1e-5)
    np.testing.assert_allclose(plan_rescaled, plan, atol=1e-4)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, toy_file):
    root = tmp_path_factory.mktemp("model")
    config = dynamics.Config(dataset=toy_file, ensemble_size=2, num_elites=1, hidden_dim=16, num_layers=1,
                             updates_per_chunk=20, max_updates=20, open_loop_starts=8, run_root=str(root),
                             wandb="disabled")
    dynamics.train_model(config)
    return root / "dynamics" / "walker-walk" / "toy" / "seed0"


SMOKE = {"horizon": 2, "num_samples": 8, "num_iterations": 1, "num_elites": 2, "wandb": "disabled",
         "final_eval_episodes": 2}


def test_offline_planning_in_the_env_with_a_saved_model(tmp_path, toy_file, model_dir):
    config = mppi.Config(**SMOKE, dataset=toy_file, model_from=str(model_dir), run_root=str(tmp_path))
    [final] = mppi.train(config)
    assert final["episodes"] == 2 and np.isfinite(final["mean"]) and final["seed"] == config.seed
    assert final["speed/ms_per_action"] > 0 and final["speed/plan_batch"] == 2
    run = tmp_path / "mppi" / "walker-walk" / "toy" / "seed0"
    assert json.loads((run / "final_eval.json").read_text())["episodes"] == 2


def test_an_interrupted_evaluation_resumes_at_its_next_wave(tmp_path, toy_file, model_dir, monkeypatch):
    """A 50-episode planner evaluation takes most of an hour on a CPU: killed after a wave, the
    rerun must play only the rest and score what the uninterrupted run does."""
    import envs

    monkeypatch.setattr(envs, "NUM_EVAL_ENVS", 1)  # two waves of one episode
    kwargs = dict(**SMOKE, dataset=toy_file, model_from=str(model_dir))
    [straight] = mppi.train(mppi.Config(**kwargs, run_root=str(tmp_path / "straight")))
    config = mppi.Config(**kwargs, run_root=str(tmp_path / "killed"))
    evaluate = envs.evaluate

    def killed_after_one_wave(*args, on_wave, **kw):
        def wave(returns):
            on_wave(returns)
            raise KeyboardInterrupt

        return evaluate(*args, on_wave=wave, **kw)

    monkeypatch.setattr(envs, "evaluate", killed_after_one_wave)
    with pytest.raises(KeyboardInterrupt):
        mppi.train(config)
    monkeypatch.setattr(envs, "evaluate", evaluate)
    [resumed] = mppi.train(config)
    assert resumed["returns"] == straight["returns"] and resumed["resumed_episodes"] == 1
    assert resumed["env_steps"] == 1000  # the second episode only
    assert mppi.train(config) == [json.loads((tmp_path / "killed" / "mppi" / "walker-walk" / "toy" / "seed0" /
                                              "final_eval.json").read_text())]  # finished: nothing replayed
    # Planning with another model than the one the evaluation began with is refused.
    monkeypatch.setattr(mppi, "inputs_fingerprint", lambda *_: "another model")
    with pytest.raises(ConfigError, match="another model or prior"):
        mppi.train(config)


def test_fidelity_report_replays_the_harness_episodes(tmp_path, toy_file, model_dir):
    """reports.mppi_fidelity must show the episodes the leaderboard scored, not look-alikes."""
    from reports import mppi_fidelity

    config = mppi.Config(**SMOKE, dataset=toy_file, model_from=str(model_dir), run_root=str(tmp_path))
    [final] = mppi.train(config)
    replay = mppi_fidelity.play(config, episodes=2, data_sample=100)
    np.testing.assert_allclose(replay.realized.sum(1), final["returns"], rtol=1e-6)
    assert replay.predicted.shape == (2, 1000, config.horizon) and np.isfinite(replay.predicted).all()
    assert replay.uncertainty.shape == (2, 1000) and (replay.uncertainty > 0).all()
    assert replay.policy_acted.shape == (2, 1000) and not replay.policy_acted.any()  # no prior, no fallback
    assert replay.data_uncertainty.shape == (100,) and np.isfinite(replay.data_uncertainty).all()
    text = mppi_fidelity.report(config, replay, bin_steps=500)
    assert "| 1 | " in text and "correlation" in text and "95th percentile" in text


def test_a_fallback_below_every_uncertainty_plays_the_borrowed_policy_exactly(tmp_path, toy_file, model_dir):
    """End to end with a real cqlsac run as the prior: with the threshold under every u the
    policy takes every step, so the planner's episodes are the policy's own, return for return
    (the harness starts episode i of both from the same env seed)."""
    from algorithms import cqlsac
    from reports import mppi_fidelity

    [policy] = cqlsac.train(cqlsac.Config(dataset=toy_file, updates=10, updates_per_chunk=5, hidden_dim=16,
                                          batch_size=32, cql_num_actions=2, final_eval_episodes=2,
                                          wandb="disabled", run_root=str(tmp_path)))
    prior_from = str(tmp_path / "cqlsac" / "walker-walk" / "toy" / "seed0")
    config = mppi.Config(**SMOKE, dataset=toy_file, model_from=str(model_dir), prior_from=prior_from,
                         num_prior_samples=2, policy_fallback_above=1e-6, run_root=str(tmp_path))
    [planner] = mppi.train(config)
    np.testing.assert_allclose(planner["returns"], policy["returns"], rtol=1e-5)
    assert planner["policy_fallback_threshold"] == 1e-6
    # The toy model's data sit above 1e-6: the noisy-data rule raises the threshold it plans with.
    noisy = dataclasses.replace(config, fallback_noisy_data_percentile=95.0, run_root=str(tmp_path / "noisy"))
    assert mppi.train(noisy)[0]["policy_fallback_threshold"] > 1e-3
    replay = mppi_fidelity.play(config, episodes=2, data_sample=100)
    assert replay.policy_acted.all()
    np.testing.assert_allclose(replay.realized.sum(1), planner["returns"], rtol=1e-6)
    assert "the policy acted" in mppi_fidelity.report(config, replay, bin_steps=500)


def test_fidelity_rejects_bad_flags_before_any_work(capsys):
    from reports import mppi_fidelity

    assert mppi_fidelity.main(["--horizn", "25"]) == 2
    assert "unknown flag --horizn; did you mean --horizon?" in capsys.readouterr().err
    assert mppi_fidelity.main(["--horizon", "2.5"]) == 2
    assert "--horizon expects an integer" in capsys.readouterr().err
    assert mppi_fidelity.main(["--episodes", "11"]) == 2
    assert "--episodes must be in [1, 10]" in capsys.readouterr().err


def test_a_corrupt_prior_checkpoint_is_a_clear_error(tmp_path, toy_file, model_dir, capsys):
    import train
    from reports import mppi_fidelity

    bad = tmp_path / "cqlsac-run"
    bad.mkdir()
    (bad / "config.json").write_text(json.dumps({"algo": "cqlsac"}))
    (bad / "checkpoint.npz").write_bytes(b"not a zip")
    flags = ["--dataset", toy_file, "--model-from", str(model_dir), "--prior-from", str(bad), "--horizon", "2",
             "--num-samples", "8", "--num-elites", "2", "--wandb", "disabled", "--run-root", str(tmp_path)]
    assert mppi_fidelity.main([*flags, "--episodes", "1"]) == 2
    assert "unreadable" in capsys.readouterr().err
    assert train.main(["mppi", *flags, "--final-eval-episodes", "1"]) == 2
    assert "unreadable" in capsys.readouterr().err


def test_harness_actions_stay_in_bounds_with_a_real_model(model_dir):
    model = dynamics.load_model(model_dir)
    config = mppi.Config(**SMOKE)
    act = jax.jit(mppi.make_act_fn(config))
    carry = mppi.initial_plan(config, 6)(4)
    obs = jax.random.normal(jax.random.PRNGKey(0), (4, 24)) * 50  # far outside the data
    for i in range(3):
        actions, carry = act((model, None), obs, jax.random.PRNGKey(i), carry)
        assert actions.shape == (4, 6) and bool(jnp.all(jnp.abs(actions) <= 1.0))


def test_missing_model_and_bad_flags_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="no trained dynamics model"):
        mppi.train(mppi.Config(**SMOKE, model_from=str(tmp_path / "missing"), run_root=str(tmp_path)))
    with pytest.raises(ConfigError):
        mppi.Config(num_samples=4, num_elites=8)
    with pytest.raises(ConfigError, match="policy-fallback-above must be >= 0"):
        mppi.Config(policy_fallback_above=-1.0)
    with pytest.raises(ConfigError, match="fallback-noisy-data-percentile must be in"):
        mppi.Config(fallback_noisy_data_percentile=101.0)
    with pytest.raises(ConfigError, match="clean-data-percentile"):
        mppi.Config(fallback_clean_data_percentile=-1.0)
    with pytest.raises(ConfigError, match="no run there"):
        mppi.load_prior(tmp_path, 24, 6)


def test_online_collects_refits_and_resumes(tmp_path):
    config = mppi.Config(**{**SMOKE, "final_eval_episodes": 1}, online=True, total_env_steps=2000, seed_steps=2000,
                         refit_every=1000, eval_every=10_000, checkpoint_every=1000, model_hidden_dim=8,
                         model_num_layers=1, model_max_updates=20, run_root=str(tmp_path))
    [final] = mppi.train(config)
    run = tmp_path / "mppi" / "walker-walk" / "online" / "seed0"
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "model/holdout_mse" in m] == [2000]  # fit after the random episodes
    assert final["env_steps"] == 2000
    # A larger budget resumes from the checkpoint (data and model restored), plans an episode, refits.
    import dataclasses

    [final] = mppi.train(dataclasses.replace(config, total_env_steps=3000))
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "model/holdout_mse" in m] == [2000, 3000]
    assert final["env_steps"] == 3000 and np.isfinite(final["mean"])
