"""Build the suite's Minari datasets from the committed generator checkpoints.

    python -m datasets.build                                  # all ten: 2 envs x 5 qualities
    python -m datasets.build --env walker-run --quality expert
    python -m datasets.build --force                          # rebuild even if present

`dmc/<env>/{random,medium,expert}-v0`: `--episodes` (100) episodes of 1000 native steps each;
random acts uniformly, medium and expert sample from their stochastic generator policy, which
acts at the action repeat it was trained with (2): a held action appears in consecutive rows.
`medium-replay-v0` replays the online run's recorded actions up to the medium checkpoint
(its replay buffer) from the same episode seeds; `medium-expert-v0` is medium + expert.

Every dataset carries `ref_min_score` (uniform random, measured by the evaluation harness
over 100 episodes: envs/references.json) and `ref_max_score` (the expert dataset's mean
return, 100 episodes collected exactly like the data). Same seed and machine, same arrays.
A build writes into a temporary folder and moves it into place when complete, so a killed
build never leaves a dataset that loads. Each build records a hash of its env's generator
folder; when the committed generators change (a stronger expert moves every dataset's
ref_max_score), datasets built from the old ones count as stale and are rebuilt.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import fire
import numpy as np

import envs
from datasets import (
    BUILD_MARKER,
    QUALITIES,
    SUITE_ENVS,
    DatasetError,
    dataset_id,
    dataset_path,
    datasets_root,
    file_sha256,
    is_complete,
)

GENERATORS_DIR = Path(__file__).with_name("generators")
# Dataset episodes use env seeds in [1e9, 2e9): disjoint from training (< 2e8) and evaluation (>= 2e9).
DATA_SEED_BASE = 1_000_000_000
NUM_ENVS = 20

ActionFn = Callable[[int, np.ndarray, np.ndarray], np.ndarray]
"""choose(agent_step, obs[N, obs_dim], episode_index[N]) -> actions[N, act_dim]."""


def episode_seeds(seed: int, quality: str, episodes: int) -> list[int]:
    if not 0 <= seed < 100 or episodes > 1_000_000:
        raise DatasetError("dataset seeds need 0 <= seed < 100 and at most 1e6 episodes")
    return [DATA_SEED_BASE + 10_000_000 * seed + 1_000_000 * QUALITIES.index(quality) + i for i in range(episodes)]


def rollout(env_id: str, choose: ActionFn, seeds: list[int], action_repeat: int, desc: str,
            num_envs: int = NUM_ENVS) -> list:
    """Episodes from `seeds`, `num_envs` envs in lockstep, one batched action call per agent
    step; every native step is recorded (a held action repeats in consecutive rows)."""
    from minari.data_collector import EpisodeBuffer
    from tqdm import tqdm

    env_list = [envs.make(env_id) for _ in range(min(num_envs, len(seeds)))]
    episodes = []
    bar = tqdm(total=len(seeds) * env_list[0].max_episode_steps, unit="step", unit_scale=True, desc=desc,
               mininterval=2.0, disable=None)
    for wave_start in range(0, len(seeds), len(env_list)):
        wave = list(range(wave_start, min(wave_start + len(env_list), len(seeds))))
        record = [{"obs": [], "action": [], "reward": []} for _ in wave]
        obs = np.stack([env_list[i].reset(seed=seeds[ep])[0] for i, ep in enumerate(wave)])
        for i in range(len(wave)):
            record[i]["obs"].append(obs[i].copy())
        running = np.ones(len(wave), bool)
        t = 0
        while running.any():
            actions = np.asarray(choose(t, obs, np.asarray(wave)), np.float32)
            for i in np.flatnonzero(running):
                for _ in range(action_repeat):
                    obs[i], reward, terminated, truncated, _ = env_list[i].step(actions[i])
                    record[i]["obs"].append(obs[i].copy())
                    record[i]["action"].append(actions[i])
                    record[i]["reward"].append(reward)
                    if terminated or truncated:
                        running[i] = False
                        break
                bar.update(action_repeat)
            t += 1
        for i, ep in enumerate(wave):
            steps = len(record[i]["action"])
            truncations = np.zeros(steps, bool)
            truncations[-1] = True
            episodes.append(EpisodeBuffer(
                id=ep, seed=seeds[ep], observations=np.stack(record[i]["obs"]).astype(np.float32),
                actions=np.stack(record[i]["action"]).astype(np.float32),
                rewards=np.asarray(record[i]["reward"], np.float32), terminations=np.zeros(steps, bool),
                truncations=truncations, infos={},
            ))
    bar.close()
    return episodes


# ----------------------------------------------------------------------------- generators


def generators_fingerprint(env_id: str, generators_dir: Path = GENERATORS_DIR) -> str:
    """sha256 over the env's generator folder (generators.json and every checkpoint)."""
    digest = hashlib.sha256()
    for path in sorted((generators_dir / env_id).glob("*")):
        digest.update(path.name.encode() + b"\0" + bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


def is_stale(marker: dict) -> bool:
    """A dataset built from the suite's generators that no longer match the committed ones
    (markers from before the fingerprint count as stale). Builds from other generator
    folders (tests, users' own) are never stale."""
    if marker.get("generators", "suite") != "suite":
        return False
    return marker.get("generators_sha256") != generators_fingerprint(marker["env_id"], GENERATORS_DIR)


def generator_info(env_id: str, generators_dir: Path = GENERATORS_DIR) -> dict:
    path = generators_dir / env_id / "generators.json"
    if not path.exists():
        raise DatasetError(f"no generator checkpoints for {env_id} in {path.parent}; they are exported from "
                           f"online runs by: python -m datasets.generators")
    return json.loads(path.read_text())


def policy_actions(env_id: str, name: str, seed: int, generators_dir: Path = GENERATORS_DIR) -> tuple[ActionFn, int, dict]:
    """A generator's stochastic policy as an ActionFn, its action repeat and its record.

    The policy runs in float64 NumPy with NumPy's seeded noise, not in XLA: XLA's float32
    kernels differ between CPU generations (vector width, FMA), and one differing action bit
    sends a chaotic walker episode elsewhere. Rounded to float32, float64 actions agree on
    any machine, so the same seed gives the same dataset everywhere.
    """
    from algorithms.common import load_checkpoint

    info = generator_info(env_id, generators_dir)[name]
    _, arrays = load_checkpoint(generators_dir / env_id / info["file"])
    layers = [(arrays[f"actor['params']['MLP_0']['Dense_{i}']['kernel']"].astype(np.float64),
               arrays[f"actor['params']['MLP_0']['Dense_{i}']['bias']"].astype(np.float64))
              for i in range(info["num_layers"] + 1)]
    lo, hi = info["log_std_min"], info["log_std_max"]

    def choose(t: int, obs: np.ndarray, episode_index: np.ndarray) -> np.ndarray:
        x = np.asarray(obs, np.float64)
        for kernel, bias in layers[:-1]:
            x = np.maximum(x @ kernel + bias, 0.0)
        mean, raw_log_std = np.split(x @ layers[-1][0] + layers[-1][1], 2, axis=-1)
        log_std = lo + 0.5 * (hi - lo) * (np.tanh(raw_log_std) + 1)  # the Actor's squash (algorithms/cqlsac.py)
        rng = np.random.default_rng([DATA_SEED_BASE, seed, QUALITIES.index(name), int(episode_index[0]), t])
        return np.tanh(mean + np.exp(log_std) * rng.standard_normal(mean.shape)).astype(np.float32)

    return choose, int(info["action_repeat"]), info


def replay_actions(env_id: str, generators_dir: Path = GENERATORS_DIR) -> tuple[ActionFn, list[int], int, dict]:
    """The online run's recorded actions up to the medium checkpoint, episode by episode."""
    info = generator_info(env_id, generators_dir)["medium-replay"]
    with np.load(generators_dir / env_id / info["file"]) as f:
        actions, seeds = f["actions"], f["episode_seeds"].tolist()
    steps_per_episode = actions.shape[0] // len(seeds)

    def choose(t: int, obs: np.ndarray, episode_index: np.ndarray) -> np.ndarray:
        return actions[episode_index * steps_per_episode + t]

    return choose, seeds, int(info["action_repeat"]), info


# ----------------------------------------------------------------------------- writing


def content_sha256(episodes: list) -> str:
    """A hash of the episodes' observations, actions and rewards (float32 bytes), independent of
    file format and timestamps: two builds hold the same data exactly when these agree."""
    digest = hashlib.sha256()
    for e in episodes:
        for array in (e.observations, e.actions, e.rewards):
            digest.update(np.ascontiguousarray(np.asarray(array, np.float32)).tobytes())
    return digest.hexdigest()


def episode_returns(episodes: list) -> np.ndarray:
    return np.array([np.sum(np.asarray(e.rewards, np.float64)) for e in episodes])


@contextmanager
def _minari_root(root: Path):
    previous = os.environ.get("MINARI_DATASETS_PATH")
    os.environ["MINARI_DATASETS_PATH"] = str(root)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("MINARI_DATASETS_PATH")
        else:
            os.environ["MINARI_DATASETS_PATH"] = previous


def code_version() -> str:
    try:
        repo = Path(__file__).resolve().parents[1]
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "datasets", "envs", "algorithms"], cwd=repo,
                               capture_output=True, text=True, check=False).stdout.strip()
        return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_dataset(env_id: str, quality: str, episodes: list, ref_min: float, ref_max: float, extra: dict,
                  start: float) -> dict:
    """Create the Minari dataset in a temporary root, then move it into place atomically."""
    import minari

    minari_id = dataset_id(env_id, quality)
    root = datasets_root()
    tmp_root = root / f".build-{os.getpid()}-{quality}"
    shutil.rmtree(tmp_root, ignore_errors=True)
    returns = episode_returns(episodes)
    with _minari_root(tmp_root):
        minari.create_dataset_from_buffers(
            dataset_id=minari_id, buffer=episodes, env=envs.gym_id(env_id), eval_env=envs.gym_id(env_id),
            algorithm_name=f"walker-offline-rl {quality} generator", code_permalink="datasets/build.py",
            author="walker-offline-rl", author_email="walker-offline-rl@users.noreply.github.com",
            ref_min_score=ref_min, ref_max_score=ref_max,
            num_episodes_average_score=len(episodes),
            description=f"{env_id} {quality}: {len(episodes)} episodes, built by python -m datasets.build",
        )
    built = tmp_root / minari_id
    marker = {
        "dataset_id": minari_id, "env_id": env_id, "quality": quality,
        "episodes": len(episodes), "transitions": int(sum(len(e.actions) for e in episodes)),
        "return_mean": float(returns.mean()), "return_std": float(returns.std()),
        "normalized_score": float(100 * (returns.mean() - ref_min) / (ref_max - ref_min)),
        "ref_min_score": ref_min, "ref_max_score": ref_max,
        "sha256": file_sha256(built / "data" / "main_data.hdf5"),
        "content_sha256": content_sha256(episodes),  # of the arrays alone: compare builds across machines
        "code_version": code_version(), "built_at": datetime.datetime.now().isoformat(timespec="seconds"),
        "build_seconds": time.perf_counter() - start,  # rollouts and writing; for medium-expert, the repack
        **extra,
    }
    (built / BUILD_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    final = dataset_path(minari_id)
    final.parent.mkdir(parents=True, exist_ok=True)
    for namespace_file in tmp_root.rglob("namespace_metadata.json"):  # minari's namespace records
        target = root / namespace_file.relative_to(tmp_root)
        if not target.exists():
            shutil.copy(namespace_file, target)
    if final.exists():
        shutil.rmtree(final)
    os.replace(built, final)
    shutil.rmtree(tmp_root, ignore_errors=True)
    return marker


def _expert_reference(env_id: str, seed: int, episodes: int, generators_dir: Path) -> float:
    minari_id = dataset_id(env_id, "expert")
    if not is_complete(minari_id):
        build_dataset(env_id, "expert", seed=seed, episodes=episodes, generators_dir=generators_dir)
    return json.loads((dataset_path(minari_id) / BUILD_MARKER).read_text())["return_mean"]


def build_dataset(env_id: str, quality: str, *, seed: int = 0, episodes: int = 100, force: bool = False,
                  generators_dir: Path = GENERATORS_DIR, record_reference: bool = False) -> dict:
    """Build one dataset (and the expert first: it fixes ref_max_score); returns its marker.
    `record_reference` writes a built expert's return into envs/references.json."""
    minari_id = dataset_id(env_id, quality)
    if is_complete(minari_id) and not force:
        marker = json.loads((dataset_path(minari_id) / BUILD_MARKER).read_text())
        if not is_stale(marker):
            return marker
        print(f"{minari_id} was built from other generator checkpoints than datasets/generators/{env_id}: "
              f"rebuilding it", flush=True)
    start = time.perf_counter()
    ref_min = envs.reference_scores(env_id)[0]
    suite = generators_dir.resolve() == GENERATORS_DIR.resolve()
    extra: dict = {"seed": seed, "generators": "suite" if suite else str(generators_dir),
                   "generators_sha256": generators_fingerprint(env_id, generators_dir)}
    if quality == "random":
        seeds = episode_seeds(seed, quality, episodes)
        rng = np.random.default_rng([seed, QUALITIES.index(quality)])
        action_dim = envs.make(env_id).action_space.shape[0]
        choose = lambda t, obs, idx: rng.uniform(-1, 1, (len(obs), action_dim))
        data = rollout(env_id, choose, seeds, 1, f"{minari_id}")
        extra["generator"] = "uniform random actions in [-1, 1]"
    elif quality in ("medium", "expert"):
        choose, action_repeat, info = policy_actions(env_id, quality, seed, generators_dir)
        data = rollout(env_id, choose, episode_seeds(seed, quality, episodes), action_repeat, f"{minari_id}")
        extra["generator"] = info
    elif quality == "medium-replay":
        choose, seeds, action_repeat, info = replay_actions(env_id, generators_dir)
        data = rollout(env_id, choose, seeds, action_repeat, f"{minari_id}")
        extra["generator"] = info
    else:  # medium-expert
        import minari

        parts = [build_dataset(env_id, q, seed=seed, episodes=episodes, generators_dir=generators_dir)
                 for q in ("medium", "expert")]
        from minari.data_collector import EpisodeBuffer

        data = []
        for q in ("medium", "expert"):
            for e in minari.load_dataset(dataset_id(env_id, q)).iterate_episodes():
                data.append(EpisodeBuffer(id=len(data), observations=e.observations, actions=e.actions,
                                          rewards=e.rewards, terminations=e.terminations,
                                          truncations=e.truncations, infos={}))
        extra["generator"] = {"medium": parts[0]["generator"], "expert": parts[1]["generator"]}
    if quality == "expert":
        ref_max = float(episode_returns(data).mean())
    else:
        ref_max = _expert_reference(env_id, seed, episodes, generators_dir)
    marker = write_dataset(env_id, quality, data, ref_min, ref_max, extra, start)
    if quality == "expert" and record_reference:
        _record_expert_reference(env_id, marker)
    return marker


def _record_expert_reference(env_id: str, marker: dict) -> None:
    """Keep envs/references.json's expert entry equal to the built expert dataset's return."""
    from envs.evaluation import REFERENCES_PATH

    refs = json.loads(REFERENCES_PATH.read_text())
    refs.setdefault(env_id, {})["expert"] = {
        "mean": marker["return_mean"], "std": marker["return_std"], "episodes": marker["episodes"],
        "source": f"{marker['dataset_id']} (python -m datasets.build)",
    }
    REFERENCES_PATH.write_text(json.dumps(refs, indent=2, sort_keys=True) + "\n")


def main(env: str = "all", quality: str = "all", seed: int = 0, episodes: int = 100, force: bool = False) -> None:
    env_ids = SUITE_ENVS if env == "all" else (env,)
    qualities = ("expert", "random", "medium", "medium-replay", "medium-expert") if quality == "all" else (quality,)
    start = time.perf_counter()
    try:
        for env_id in env_ids:
            for q in qualities:
                marker = build_dataset(env_id, q, seed=seed, episodes=episodes, force=force, record_reference=True)
                print(f"{marker['dataset_id']}: {marker['episodes']} episodes, {marker['transitions']:,} transitions, "
                      f"return {marker['return_mean']:.1f} +- {marker['return_std']:.1f} "
                      f"(normalized {marker['normalized_score']:.1f}), built in {marker['build_seconds']:.0f} s")
    except DatasetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    fire.Fire(main)
