"""The environment contract: shapes, dtypes, key order, bounds, truncation, seeding."""

import gymnasium as gym
import numpy as np
import pytest
from dm_control import suite

import envs


@pytest.fixture(scope="module")
def walker() -> envs.DMCEnv:
    return envs.make("walker-walk")


def test_spaces(walker):
    assert walker.observation_space.shape == (24,) and walker.observation_space.dtype == np.float32
    assert walker.action_space.shape == (6,) and walker.action_space.dtype == np.float32
    np.testing.assert_array_equal(walker.action_space.low, -1)
    np.testing.assert_array_equal(walker.action_space.high, 1)
    obs, info = walker.reset(seed=0)
    assert obs.shape == (24,) and obs.dtype == np.float32 and info == {}


def test_observation_in_dm_control_key_order():
    env = envs.make("walker-run")
    obs, _ = env.reset(seed=3)
    raw = suite.load("walker", "run", task_kwargs={"random": 3}).reset().observation
    assert list(raw) == ["orientations", "height", "velocity"]
    by_hand = np.concatenate([raw["orientations"], [raw["height"]], raw["velocity"]]).astype(np.float32)
    np.testing.assert_array_equal(obs, by_hand)


def test_episode_truncates_after_1000_steps_never_terminates(walker):
    walker.reset(seed=1)
    rng = np.random.default_rng(0)
    for t in range(1000):
        obs, reward, terminated, truncated, _ = walker.step(rng.uniform(-1, 1, 6))
        assert not terminated
        assert 0.0 <= reward <= 1.0
        assert truncated == (t == 999)
    assert np.all(np.isfinite(obs))


def test_same_seed_same_episode():
    def rollout(seed):
        env = envs.make("walker-walk")
        obs, _ = env.reset(seed=seed)
        out = [obs]
        for t in range(50):
            out.append(env.step(np.full(6, np.sin(t), np.float32))[0])
        return np.stack(out)

    np.testing.assert_array_equal(rollout(7), rollout(7))
    assert not np.array_equal(rollout(7), rollout(8))


def test_unknown_id_lists_valid_ones():
    with pytest.raises(ValueError, match="walker-walk, walker-run.*cheetah-run"):
        envs.make("walker-fly")


def test_other_dm_control_tasks_work():
    env = envs.make("cheetah-run")
    obs, _ = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape == (17,)


def test_registered_with_string_entry_point():
    spec = gym.spec("dmc/walker-walk-v0")
    assert spec.entry_point == "envs.dmc:DMCEnv"
    env = gym.make("dmc/walker-run-v0", disable_env_checker=True)
    assert env.unwrapped.env_id == "walker-run"


def test_entry_points_dispatch_synchronously_on_cpu():
    # The harness's small per-step policy calls are faster without JAX's async CPU dispatch;
    # the setting only works if `envs` applies it before JAX's backend starts.
    import subprocess
    import sys

    check = ("import train, jax, jax.numpy as jnp; jnp.zeros(1).block_until_ready(); "
             "print(jax.config.read('jax_cpu_enable_async_dispatch'))")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_action_clipped_to_bounds(walker):
    walker.reset(seed=0)
    walker.step(np.full(6, 5.0, np.float32))
    np.testing.assert_array_equal(walker.physics.data.ctrl, np.ones(6))
