"""The suite's one dataset loader (Minari-backed), used by every algorithm.

    import datasets
    data = datasets.load("walker-run", "medium")      # builds the dataset first if missing
    data.obs, data.action, data.reward, data.next_obs, data.terminal, data.episode_end

Sources, all returning the same `Dataset`:
* a suite quality (`random`, `medium`, `medium-replay`, `expert`, `medium-expert`) of a
  walker env: the Minari dataset `dmc/<env>/<quality>-v0`, built locally from the committed
  generator checkpoints on first use (`python -m datasets.build`);
* any Minari dataset id with Box observation and action spaces (`namespace/name-v0`);
* a `.npz` or `.hdf5` file of transitions a user brings, with keys `observations`,
  `actions`, `rewards`, `next_observations` and optionally `terminals` (default False),
  `timeouts` (True on the last transition of each episode), `ref_min_score`, `ref_max_score`.

next_obs always comes from the episode itself, never from the next row across an episode
boundary, and DMC's time limit is a truncation: `terminal` is False on every suite dataset.

The name clashes with the PyPI package `datasets`; the suite runs from its checkout, where
this package comes first on the path (a test checks it).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

QUALITIES: tuple[str, ...] = ("random", "medium", "medium-replay", "expert", "medium-expert")
SUITE_ENVS: tuple[str, ...] = ("walker-walk", "walker-run")
BUILD_MARKER = "suite_build.json"


class DatasetError(RuntimeError):
    """A dataset that is unknown, missing, incomplete or corrupt."""


def dataset_id(env_id: str, quality: str) -> str:
    """The Minari id of a suite dataset: ('walker-run', 'medium') -> 'dmc/walker-run/medium-v0'."""
    if env_id not in SUITE_ENVS:
        raise DatasetError(f"the suite has datasets for {', '.join(SUITE_ENVS)}, not {env_id!r}")
    if quality not in QUALITIES:
        raise DatasetError(
            f"unknown dataset {quality!r}; the suite's datasets are {', '.join(QUALITIES)}, or pass a Minari "
            f"dataset id (namespace/name-v0) or a .npz/.hdf5 file of transitions"
        )
    return f"dmc/{env_id}/{quality}-v0"


def suite_quality(dataset: str) -> str | None:
    """The suite quality a dataset argument names, as a quality or as its Minari id
    ('medium' and 'dmc/walker-run/medium-v0' -> 'medium'); None for any other data."""
    if dataset in QUALITIES:
        return dataset
    for env_id in SUITE_ENVS:
        for quality in QUALITIES:
            if dataset == dataset_id(env_id, quality):
                return quality
    return None


def datasets_root() -> Path:
    """Minari's dataset folder: $MINARI_DATASETS_PATH or ~/.minari/datasets."""
    return Path(os.environ.get("MINARI_DATASETS_PATH", Path.home() / ".minari" / "datasets"))


def dataset_path(dataset: str) -> Path:
    return datasets_root() / dataset


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Transitions as device arrays plus what every algorithm needs alongside them."""

    name: str
    env_id: str | None
    obs: jax.Array  # [N, obs_dim] float32
    action: jax.Array  # [N, act_dim] float32
    reward: jax.Array  # [N] float32
    next_obs: jax.Array  # [N, obs_dim] float32, from the same episode
    terminal: jax.Array  # [N] bool: a true termination (never on DMC), not a time limit
    episode_end: jax.Array  # [N] bool: last transition of its episode
    obs_mean: jax.Array  # [obs_dim] for observation normalization
    obs_std: jax.Array  # [obs_dim], floored at 1e-3
    ref_min_score: float | None
    ref_max_score: float | None
    metadata: dict

    @property
    def size(self) -> int:
        return int(self.obs.shape[0])

    @property
    def episode_returns(self) -> np.ndarray:
        ends = np.flatnonzero(np.asarray(self.episode_end))
        sums = np.cumsum(np.asarray(self.reward, np.float64))[ends]
        return np.diff(np.concatenate([[0.0], sums]))

    @property
    def episode_step(self) -> np.ndarray:
        """[N] each transition's step within its episode (0 at an episode's first)."""
        index = np.arange(self.size)
        after_end = np.concatenate([[0], np.flatnonzero(np.asarray(self.episode_end)[:-1]) + 1])
        starts = np.zeros(self.size, np.int64)
        starts[after_end] = after_end
        return index - np.maximum.accumulate(starts)

    def normalized_score(self, returns: float | np.ndarray) -> float | np.ndarray:
        """100 * (R - ref_min) / (ref_max - ref_min): minari.get_normalized_score x 100."""
        if self.ref_min_score is None or self.ref_max_score is None:
            raise DatasetError(f"{self.name} carries no reference scores")
        return 100.0 * (np.asarray(returns) - self.ref_min_score) / (self.ref_max_score - self.ref_min_score)


def load(env_id: str | None, dataset: str = "medium", *, build: bool = True) -> Dataset:
    """Load a suite quality of `env_id`, a Minari id, or a `.npz`/`.hdf5` file (see module doc)."""
    if dataset.endswith((".npz", ".hdf5", ".h5")):
        return load_file(dataset, env_id)
    if dataset not in QUALITIES and "/" in dataset:
        return load_minari(dataset, env_id)
    from datasets.build import build_dataset, is_stale

    minari_id = dataset_id(env_id, dataset)
    if not is_complete(minari_id):
        if not build:
            raise DatasetError(f"{minari_id} is not built; run: python -m datasets.build --env {env_id} "
                               f"--quality {dataset}")
        print(f"dataset {minari_id} not found under {datasets_root()}: building it now "
              f"(once per machine; python -m datasets.build builds all ten)", flush=True)
        build_dataset(env_id, dataset)
    elif is_stale(json.loads((dataset_path(minari_id) / BUILD_MARKER).read_text())):
        if not build:
            raise DatasetError(f"{minari_id} was built from older generator checkpoints; rebuild it: "
                               f"python -m datasets.build --env {env_id} --force")
        build_dataset(env_id, dataset)  # says so, then rebuilds
    verify(minari_id)
    return load_minari(minari_id, env_id)


def fingerprint(data: Dataset) -> str | None:
    """The content hash of a suite dataset build (its arrays alone, as in the card); None for
    other data. Runs record it, so that none is resumed or kept on another build."""
    return (getattr(data, "metadata", None) or {}).get("suite_build", {}).get("content_sha256")


def current_fingerprint(env_id: str, dataset: str) -> str | None:
    """The content hash of the build `load(env_id, dataset)` would return now (building or
    rebuilding it first, as load would); None for data that is not a suite quality."""
    if dataset not in QUALITIES:
        return None
    from datasets.build import build_dataset

    return build_dataset(env_id, dataset).get("content_sha256")


def is_complete(minari_id: str) -> bool:
    """A suite dataset counts as built once its marker exists (written after an atomic move)."""
    return (dataset_path(minari_id) / BUILD_MARKER).exists()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(minari_id: str) -> dict:
    """Check a built suite dataset against its marker; a damaged one is rejected, never loaded."""
    path = dataset_path(minari_id)
    marker = json.loads((path / BUILD_MARKER).read_text())
    data_file = path / "data" / "main_data.hdf5"
    if not data_file.exists() or file_sha256(data_file) != marker["sha256"]:
        raise DatasetError(
            f"{minari_id} at {path} is corrupt (its data no longer matches the checksum written at build time); "
            f"rebuild it: python -m datasets.build --env {marker['env_id']} --quality {marker['quality']} --force"
        )
    return marker


def load_minari(minari_id: str, env_id: str | None = None) -> Dataset:
    import gymnasium as gym
    import minari

    try:
        ds = minari.load_dataset(minari_id)
    except Exception as exc:  # minari raises several types for a missing or broken dataset
        raise DatasetError(f"could not load Minari dataset {minari_id!r}: {exc}") from exc
    if not isinstance(ds.observation_space, gym.spaces.Box) or not isinstance(ds.action_space, gym.spaces.Box):
        raise DatasetError(f"{minari_id}: only Box observation and action spaces are supported")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("obs", "action", "reward", "next_obs", "terminal", "end")}
    for episode in ds.iterate_episodes():
        obs = np.asarray(episode.observations, np.float32).reshape(len(episode.observations), -1)
        steps = len(episode.actions)
        parts["obs"].append(obs[:-1])
        parts["next_obs"].append(obs[1:])  # within the episode: never the next episode's first row
        parts["action"].append(np.asarray(episode.actions, np.float32).reshape(steps, -1))
        parts["reward"].append(np.asarray(episode.rewards, np.float32))
        parts["terminal"].append(np.asarray(episode.terminations, bool))
        end = np.zeros(steps, bool)
        end[-1] = True
        parts["end"].append(end)
    arrays = {k: np.concatenate(v) for k, v in parts.items()}
    metadata = dict(ds.storage.metadata)
    marker = dataset_path(minari_id) / BUILD_MARKER
    if marker.exists():
        metadata["suite_build"] = json.loads(marker.read_text())
    return _make_dataset(minari_id, env_id, arrays, metadata.get("ref_min_score"), metadata.get("ref_max_score"),
                         metadata)


def load_file(path: str | Path, env_id: str | None = None) -> Dataset:
    """A user's transitions in `.npz` or `.hdf5` (keys in the module doc)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"dataset file {path} does not exist")
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            raw = {k: f[k] for k in f.files}
    else:
        import h5py

        with h5py.File(path, "r") as f:
            raw = {k: f[k][()] for k in f}
    missing = [k for k in ("observations", "actions", "rewards", "next_observations") if k not in raw]
    if missing:
        raise DatasetError(f"{path} lacks {', '.join(missing)}; expected keys: observations, actions, rewards, "
                           f"next_observations [, terminals, timeouts, ref_min_score, ref_max_score]")
    n = len(raw["rewards"])
    terminal = np.asarray(raw.get("terminals", np.zeros(n, bool)), bool)
    end = np.asarray(raw.get("timeouts", np.zeros(n, bool)), bool) | terminal
    end[-1] = True
    arrays = {"obs": raw["observations"], "action": raw["actions"], "reward": raw["rewards"],
              "next_obs": raw["next_observations"], "terminal": terminal, "end": end}
    arrays = {k: np.asarray(v, bool if k in ("terminal", "end") else np.float32) for k, v in arrays.items()}
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise DatasetError(f"{path}: arrays differ in length: {lengths}")
    ref_min, ref_max = raw.get("ref_min_score"), raw.get("ref_max_score")
    if (ref_min is None or ref_max is None) and env_id is not None:
        from envs import reference_scores

        ref_min, ref_max = reference_scores(env_id)
    return _make_dataset(str(path), env_id, arrays, None if ref_min is None else float(ref_min),
                         None if ref_max is None else float(ref_max), {"source": str(path)})


def _make_dataset(name, env_id, arrays, ref_min, ref_max, metadata) -> Dataset:
    obs = arrays["obs"]
    return Dataset(
        name=name, env_id=env_id,
        obs=jnp.asarray(obs), action=jnp.asarray(arrays["action"]), reward=jnp.asarray(arrays["reward"]),
        next_obs=jnp.asarray(arrays["next_obs"]), terminal=jnp.asarray(arrays["terminal"]),
        episode_end=jnp.asarray(arrays["end"]),
        obs_mean=jnp.asarray(obs.mean(0)), obs_std=jnp.asarray(np.maximum(obs.std(0), 1e-3)),
        ref_min_score=None if ref_min is None else float(ref_min),
        ref_max_score=None if ref_max is None else float(ref_max),
        metadata=metadata,
    )


def label(dataset: str) -> str:
    """A folder-safe name of a dataset argument, for run directories and wandb groups."""
    if dataset.endswith((".npz", ".hdf5", ".h5")):
        return Path(dataset).stem
    return dataset.replace("/", "_")


def references(data: Dataset) -> tuple[float, float]:
    """(ref_min_score, ref_max_score) for normalized scores: the dataset's own, else the env's."""
    if data.ref_min_score is not None and data.ref_max_score is not None:
        return data.ref_min_score, data.ref_max_score
    if data.env_id is None:
        raise DatasetError(f"{data.name} has no reference scores and no env to take them from")
    from envs import reference_scores

    return reference_scores(data.env_id)
