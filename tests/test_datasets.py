"""Dataset builder and the one loader, on tiny datasets built from toy generators."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import datasets
from algorithms import cqlsac
from algorithms.common import flatten_tree, save_checkpoint
from datasets import build

ROOT = Path(__file__).resolve().parents[1]
EPISODES = 2


@pytest.fixture(scope="module")
def toy_generators(tmp_path_factory) -> Path:
    """Randomly initialised small actors and two episodes of recorded random actions."""
    out = tmp_path_factory.mktemp("generators")
    env_dir = out / "walker-walk"
    env_dir.mkdir()
    net = {"hidden_dim": 32, "num_layers": 2, "log_std_min": -5.0, "log_std_max": 2.0, "action_repeat": 2}
    for i, name in enumerate(("medium", "expert")):
        actor = cqlsac.Actor(6, 32, 2, -5.0, 2.0)
        params = actor.init(jax.random.PRNGKey(i), jnp.zeros((1, 24)))
        save_checkpoint(env_dir / f"{name}.npz", 0, flatten_tree(params, "actor"))
    rng = np.random.default_rng(0)
    np.savez(env_dir / "medium-replay.npz", actions=rng.uniform(-1, 1, (1000, 6)).astype(np.float32),
             episode_seeds=np.array([0, 1]))
    info = {"expert": {"file": "expert.npz", **net}, "medium": {"file": "medium.npz", **net},
            "medium-replay": {"file": "medium-replay.npz", "episodes": 2, "action_repeat": 2}}
    (env_dir / "generators.json").write_text(json.dumps(info))
    return out


@pytest.fixture(scope="module")
def built(toy_generators, tmp_path_factory):
    """All five qualities of walker-walk, tiny, in a temporary Minari root."""
    root = tmp_path_factory.mktemp("minari")
    mp = pytest.MonkeyPatch()
    mp.setenv("MINARI_DATASETS_PATH", str(root))
    markers = {q: build.build_dataset("walker-walk", q, episodes=EPISODES, generators_dir=toy_generators)
               for q in datasets.QUALITIES}
    yield root, markers
    mp.undo()


def test_all_qualities_built_with_metadata(built):
    _, markers = built
    assert markers["medium-expert"]["episodes"] == 2 * EPISODES
    assert markers["medium-replay"]["episodes"] == 2
    for marker in markers.values():
        assert marker["transitions"] == 1000 * marker["episodes"]
        assert marker["ref_max_score"] == markers["expert"]["return_mean"]
        assert abs(marker["ref_min_score"] - 32.2) < 0.1  # the harness-measured random reference


def test_loader_arrays_and_episode_boundaries(built):
    data = datasets.load("walker-walk", "medium")
    assert data.obs.shape == data.next_obs.shape == (2000, 24) and data.action.shape == (2000, 6)
    assert data.obs.dtype == jnp.float32 and not bool(data.terminal.any())
    ends = np.flatnonzero(np.asarray(data.episode_end))
    np.testing.assert_array_equal(ends, [999, 1999])
    # Inside an episode next_obs is the next row's obs; at the boundary it is the episode's own
    # final observation, not the first observation of the next episode.
    np.testing.assert_array_equal(data.next_obs[:999], data.obs[1:1000])
    import minari

    first = next(iter(minari.load_dataset("dmc/walker-walk/medium-v0").iterate_episodes()))
    np.testing.assert_array_equal(data.next_obs[999], first.observations[-1])
    assert not np.array_equal(data.next_obs[999], data.obs[1000])
    np.testing.assert_allclose(data.episode_returns, [first.rewards.sum(), data.episode_returns[1]], rtol=1e-5)


def test_actions_held_for_the_generators_action_repeat(built):
    data = datasets.load("walker-walk", "expert")
    action = np.asarray(data.action)
    np.testing.assert_array_equal(action[0::2], action[1::2])
    random = np.asarray(datasets.load("walker-walk", "random").action)
    assert np.abs(random).max() <= 1 and not np.array_equal(random[0::2], random[1::2])


def test_medium_replay_reproduces_the_recorded_actions(built, toy_generators):
    data = datasets.load("walker-walk", "medium-replay")
    with np.load(toy_generators / "walker-walk" / "medium-replay.npz") as f:
        recorded = f["actions"]
    np.testing.assert_array_equal(np.asarray(data.action)[0::2], recorded)


def test_minari_normalized_score_agrees(built):
    import minari

    ds = minari.load_dataset("dmc/walker-walk/medium-v0")
    data = datasets.load("walker-walk", "medium")
    returns = np.array([100.0, 400.0])
    np.testing.assert_allclose(100 * minari.get_normalized_score(ds, returns), data.normalized_score(returns),
                               rtol=1e-6)
    assert ds.recover_environment().unwrapped.env_id == "walker-walk"


def test_builder_is_deterministic(built, toy_generators, tmp_path, monkeypatch):
    first = datasets.load("walker-walk", "expert")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    build.build_dataset("walker-walk", "expert", episodes=EPISODES, generators_dir=toy_generators)
    second = datasets.load("walker-walk", "expert", build=False)
    for name in ("obs", "action", "reward", "next_obs"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))
    assert first.metadata["suite_build"]["content_sha256"] == second.metadata["suite_build"]["content_sha256"]


def test_generator_policy_matches_the_trained_actor(toy_generators):
    """The builder's float64 NumPy policy (machine-independent) is the trained tanh-Gaussian actor."""
    choose, action_repeat, _ = build.policy_actions("walker-walk", "expert", 0, toy_generators)
    actor = cqlsac.Actor(6, 32, 2, -5.0, 2.0)
    params = actor.init(jax.random.PRNGKey(1), jnp.zeros((1, 24)))  # the toy expert's parameters
    obs = np.random.default_rng(1).normal(size=(4, 24)).astype(np.float32)
    mean, log_std = map(np.asarray, actor.apply(params, obs))
    noise = np.random.default_rng([build.DATA_SEED_BASE, 0, datasets.QUALITIES.index("expert"), 7, 11])
    expected = np.tanh(mean + np.exp(log_std) * noise.standard_normal(mean.shape))
    np.testing.assert_allclose(choose(11, obs, np.array([7])), expected, atol=1e-5)
    assert action_repeat == 2


def test_corrupt_dataset_is_rejected(built, toy_generators, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    build.build_dataset("walker-walk", "expert", episodes=EPISODES, generators_dir=toy_generators)
    data_file = tmp_path / "dmc/walker-walk/expert-v0/data/main_data.hdf5"
    data_file.write_bytes(data_file.read_bytes()[: data_file.stat().st_size // 2])
    with pytest.raises(datasets.DatasetError, match="corrupt.*--force"):
        datasets.load("walker-walk", "expert")


def test_dataset_built_from_older_generators_is_rebuilt(toy_generators, tmp_path, monkeypatch, capsys):
    suite = tmp_path / "generators"
    shutil.copytree(toy_generators, suite)
    monkeypatch.setattr(build, "GENERATORS_DIR", suite)  # the toy generators play the committed ones
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))
    first = build.build_dataset("walker-walk", "expert", episodes=EPISODES, generators_dir=suite)
    assert first["generators"] == "suite" and not build.is_stale(first)
    # A stronger expert is committed: the built dataset (and its ref_max_score) is stale.
    shutil.copy(suite / "walker-walk" / "medium.npz", suite / "walker-walk" / "expert.npz")
    assert build.is_stale(first)
    with pytest.raises(datasets.DatasetError, match="older generator checkpoints.*--force"):
        datasets.load("walker-walk", "expert", build=False)
    data = datasets.load("walker-walk", "expert")
    assert "rebuilding it" in capsys.readouterr().out
    rebuilt = data.metadata["suite_build"]
    assert not build.is_stale(rebuilt) and rebuilt["content_sha256"] != first["content_sha256"]
    # Builds from any other generator folder (a user's own) are never called stale.
    assert not build.is_stale({**first, "generators": str(toy_generators), "generators_sha256": "x"})


def test_half_written_dataset_is_never_loaded(built, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path))
    partial = tmp_path / "dmc/walker-walk/expert-v0/data"
    partial.mkdir(parents=True)
    (partial / "main_data.hdf5").write_bytes(b"half")
    assert not datasets.is_complete("dmc/walker-walk/expert-v0")
    with pytest.raises(datasets.DatasetError, match="not built"):
        datasets.load("walker-walk", "expert", build=False)


def test_unknown_dataset_lists_the_valid_ones():
    with pytest.raises(datasets.DatasetError, match="random, medium, medium-replay, expert, medium-expert"):
        datasets.load("walker-walk", "mediocre")


def test_user_npz_file(tmp_path):
    rng = np.random.default_rng(0)
    n = 10
    timeouts = np.zeros(n, bool)
    timeouts[4] = True
    path = tmp_path / "mine.npz"
    np.savez(path, observations=rng.normal(size=(n, 24)), actions=rng.uniform(-1, 1, (n, 6)),
             rewards=rng.uniform(size=n), next_observations=rng.normal(size=(n, 24)), timeouts=timeouts)
    data = datasets.load("walker-walk", str(path))
    assert data.size == n and data.ref_min_score == pytest.approx(32.2, abs=0.1)
    np.testing.assert_array_equal(np.flatnonzero(np.asarray(data.episode_end)), [4, 9])
    np.testing.assert_array_equal(data.episode_step, [0, 1, 2, 3, 4, 0, 1, 2, 3, 4])
    bad = tmp_path / "bad.npz"
    np.savez(bad, observations=np.zeros((3, 24)))
    with pytest.raises(datasets.DatasetError, match="lacks actions, rewards, next_observations"):
        datasets.load("walker-walk", str(bad))


def test_datasets_name_resolves_to_the_suite():
    out = subprocess.run([sys.executable, "-c", "import datasets; print(datasets.__file__)"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.strip()
    assert Path(out).resolve() == ROOT / "datasets" / "__init__.py"
