"""The evaluation harness against a hand-written dm_control loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dm_control import suite

import envs
from envs.evaluation import EVAL_SEED_BASE, uniform_random_policy

W = np.random.default_rng(0).normal(size=(24, 6)).astype(np.float32)


def linear_policy(params, obs, key):
    # Quantized, so float rounding that differs between batched XLA and NumPy matmuls cannot
    # flip an action (walker's dynamics are chaotic: a 1e-7 change grows into another episode).
    return jnp.round(4 * jnp.tanh(obs @ params)) / 4


def hand_written_return(seed: int, action_repeat: int) -> float:
    env = suite.load("walker", "walk", task_kwargs={"random": seed})
    time_step, total = env.reset(), 0.0
    while not time_step.last():
        obs = np.concatenate([np.ravel(v) for v in time_step.observation.values()]).astype(np.float32)
        action = np.round(4 * np.tanh(obs @ W)) / 4
        for _ in range(action_repeat):
            time_step = env.step(action)
            total += time_step.reward
            if time_step.last():
                break
    return total


@pytest.mark.parametrize("action_repeat", [1, 2])
def test_harness_matches_dm_control_loop(action_repeat):
    result = envs.evaluate("walker-walk", linear_policy, jnp.asarray(W), episodes=3, seed=5, num_envs=2,
                           action_repeat=action_repeat, references=(0.0, 1000.0))
    expected = [hand_written_return(EVAL_SEED_BASE + 10_000 * 5 + ep, action_repeat) for ep in range(3)]
    np.testing.assert_allclose(result.returns, expected, rtol=1e-5)
    assert result.mean == pytest.approx(np.mean(expected), rel=1e-5)
    assert result.normalized_score == pytest.approx(np.mean(expected) / 10, rel=1e-5)
    assert result.env_steps == 3000


def test_on_step_sees_every_native_step_and_on_wave_every_wave():
    rewards: dict[int, float] = {}
    steps, waves = [], []

    def on_step(episode, env, reward):
        rewards[episode] = rewards.get(episode, 0.0) + reward
        steps.append(env.physics.torso_height())

    result = envs.evaluate("walker-walk", linear_policy, jnp.asarray(W), episodes=3, seed=5, num_envs=2,
                           action_repeat=2, references=(0.0, 1000.0), on_step=on_step,
                           on_wave=lambda returns: waves.append(list(returns)))
    assert len(steps) == result.env_steps == 3000
    assert [len(w) for w in waves] == [2, 3]  # the returns so far, after each wave of num_envs
    np.testing.assert_allclose(waves[-1], result.returns)
    np.testing.assert_allclose([rewards[e] for e in range(3)], result.returns)


def noisy_policy(params, obs, key):
    # Uses its key, so a resumed evaluation that drew another wave's keys would score differently.
    return jnp.round(4 * jnp.clip(jnp.tanh(obs @ params) + jax.random.normal(key, (obs.shape[0], 6)), -1, 1)) / 4


def test_a_resumed_evaluation_scores_what_the_uninterrupted_one_does():
    kwargs = {"episodes": 3, "seed": 5, "num_envs": 1, "references": (0.0, 1000.0)}
    straight = envs.evaluate("walker-walk", noisy_policy, jnp.asarray(W), **kwargs)
    resumed = envs.evaluate("walker-walk", noisy_policy, jnp.asarray(W), done_returns=straight.returns[:2], **kwargs)
    assert resumed.returns == straight.returns and resumed.resumed_episodes == 2
    assert resumed.env_steps == 1000  # only the third episode was played
    with pytest.raises(ValueError, match="whole waves"):
        envs.evaluate("walker-walk", noisy_policy, jnp.asarray(W), episodes=3, num_envs=2, done_returns=[1.0])


def test_normalized_score():
    assert envs.normalized_score(31.7, 31.7, 950.0) == pytest.approx(0.0)
    assert envs.normalized_score(950.0, 31.7, 950.0) == pytest.approx(100.0)
    assert envs.normalized_score(490.85, 31.7, 950.0) == pytest.approx(50.0)


def test_reference_scores_measured_for_walker():
    for env_id, expected in (("walker-walk", 31.7), ("walker-run", 23.0)):
        random_ref, expert_ref = envs.reference_scores(env_id)
        assert abs(random_ref - expected) < 3.0  # the design brief's figure, 50 episodes
        assert expert_ref > random_ref


def test_random_policy_stays_in_bounds():
    import jax

    actions = uniform_random_policy(jnp.zeros(6), jnp.zeros((1000, 24)), jax.random.PRNGKey(0))
    assert actions.shape == (1000, 6)
    assert float(actions.min()) >= -1 and float(actions.max()) <= 1


def test_video_renders_headlessly(tmp_path):
    import imageio.v3 as iio

    path = tmp_path / "eval.mp4"
    envs.evaluate("walker-walk", linear_policy, jnp.asarray(W), episodes=1, references=(0.0, 1000.0),
                  video_path=path, video_every=50)
    frames = iio.imread(path)
    assert frames.shape[0] == 20 and frames.shape[1:] == (240, 320, 3)
    assert frames.std() > 5  # a rendered scene, not a blank frame
