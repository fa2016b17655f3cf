"""The one evaluation harness, shared by every algorithm and by `evaluate.py`.

Several envs step in lockstep and the policy is called once per step on the whole batch
(one jitted call), so evaluation costs about as much as raw dm_control stepping. Episode
seeds come from a range disjoint from every seed used to build or train on data.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import jax
import numpy as np

from envs.dmc import DMCEnv, parse_env_id

# Evaluation episodes use env seeds EVAL_SEED_BASE + 10_000 * seed + episode; datasets and
# online training draw theirs below EVAL_SEED_BASE, so the two never meet.
EVAL_SEED_BASE = 2_000_000_000
NUM_EVAL_ENVS = 10  # envs stepped in lockstep: the batch every planner/policy call sees
REFERENCES_PATH = Path(__file__).with_name("references.json")
# DMC rewards lie in [0, 1] per step, so 1000 bounds every return. It stands in for the
# expert reference of an env that has no measured expert yet (see references.json).
DMC_MAX_RETURN = 1000.0

PolicyFn = Callable[[object, jax.Array, jax.Array], jax.Array]
"""act_fn(params, obs[B, obs_dim], key) -> actions[B, act_dim] in [-1, 1]."""


@dataclass(frozen=True)
class EvalResult:
    env_id: str
    returns: tuple[float, ...]
    mean: float
    std: float
    normalized_score: float
    ref_min_score: float
    ref_max_score: float
    episodes: int
    env_steps: int  # env_steps and seconds cover the episodes played in this call,
    seconds: float  # not the `resumed_episodes` scored by an earlier, interrupted one
    resumed_episodes: int = 0

    @property
    def episodes_per_s(self) -> float:
        played = self.episodes - self.resumed_episodes
        return played / self.seconds if played else float("nan")

    def as_dict(self) -> dict:
        return {**asdict(self), "returns": list(self.returns), "episodes_per_s": self.episodes_per_s}


def reference_scores(env_id: str) -> tuple[float, float]:
    """(ref_min_score, ref_max_score): the uniform-random and expert mean returns of an env.

    Measured by `python -m envs.references` and stored in `envs/references.json`. An env
    whose expert has not been measured yet uses DMC's maximum return (1000) as its ceiling.
    """
    parse_env_id(env_id)
    refs = json.loads(REFERENCES_PATH.read_text()) if REFERENCES_PATH.exists() else {}
    if env_id not in refs or "random" not in refs[env_id]:
        raise KeyError(
            f"no random-policy reference for {env_id!r} in {REFERENCES_PATH}; "
            f"measure it with: python -m envs.references --env {env_id}"
        )
    entry = refs[env_id]
    expert = entry.get("expert", {}).get("mean", DMC_MAX_RETURN)
    return float(entry["random"]["mean"]), float(expert)


def normalized_score(returns: float | np.ndarray, ref_min_score: float, ref_max_score: float):
    """100 * (R - R_random) / (R_expert - R_random), D4RL's and Minari's convention (x100)."""
    return 100.0 * (np.asarray(returns) - ref_min_score) / (ref_max_score - ref_min_score)


def uniform_random_policy(action_template: jax.Array, obs: jax.Array, key: jax.Array) -> jax.Array:
    """Uniform actions in [-1, 1]; `action_template` is any array of the action's shape."""
    return jax.random.uniform(key, (obs.shape[0], *action_template.shape), minval=-1.0, maxval=1.0)


_jitted: dict[Callable, Callable] = {}
_env_pool: dict[tuple[str, bool], list[DMCEnv]] = {}


def episode_seed(seed: int, episode: int) -> int:
    """The env seed of evaluation episode `episode` under eval `seed`."""
    return EVAL_SEED_BASE + 10_000 * seed + episode


def wave_step_keys(key: jax.Array, num_steps: int) -> tuple[jax.Array, np.ndarray]:
    """(the key for the next wave, this wave's per-step policy keys as host data [num_steps, 2])."""
    # Drawn at once, as host data: a jax.random.split per step is a device dispatch that cost
    # about as much as the policy call itself.
    key, wave_key = jax.random.split(key)
    return key, np.asarray(jax.random.split(wave_key, num_steps))


def _eval_envs(env_id: str, num_envs: int, render: bool) -> list[DMCEnv]:
    # Built once per process and reused by every evaluation (each episode resets with its own
    # seed): parsing the model costs ~50 ms an env, a quarter of a 10-episode periodic eval.
    pool = _env_pool.setdefault((env_id, render), [])
    while len(pool) < num_envs:
        pool.append(DMCEnv(env_id, render_mode="rgb_array" if render else None))
    return pool[:num_envs]


def _jit(act_fn: PolicyFn) -> Callable:
    # One compiled policy per function for the whole process: periodic evals reuse it.
    if act_fn not in _jitted:
        _jitted[act_fn] = jax.jit(act_fn)
    return _jitted[act_fn]


def evaluate(
    env_id: str,
    act_fn: PolicyFn,
    params: object,
    episodes: int = 10,
    *,
    seed: int = 0,
    num_envs: int = NUM_EVAL_ENVS,
    action_repeat: int = 1,
    references: tuple[float, float] | None = None,
    video_path: str | Path | None = None,
    video_every: int = 2,
    init_policy_state: Callable[[int], object] | None = None,
    on_step: Callable[[int, DMCEnv, float], None] | None = None,
    on_wave: Callable[[list[float]], None] | None = None,
    done_returns: Sequence[float] = (),
) -> EvalResult:
    """Run `episodes` episodes of `act_fn` and score them.

    `num_envs` envs step in lockstep; each step makes one batched, jitted policy call. Each
    action is held for `action_repeat` native steps (1 for every offline agent; online
    generators may act at 2). `references` overrides the (random, expert) pair of
    `reference_scores`. With `video_path`, episode 0 is rendered (every `video_every`-th
    frame) and written there as mp4. A stateful policy (e.g. a planner warm-starting from its
    previous plan) passes `init_policy_state(num_envs)`, the state at the start of every wave
    of episodes; it is then called as act_fn(params, obs, key, state) -> (actions, state).
    `on_wave(returns)` is called after each wave with the returns so far (to advance a
    progress bar or checkpoint a long planner evaluation). `done_returns`, the returns of the
    first waves of an interrupted call with the same arguments, resumes it: those waves are
    skipped (their keys drawn all the same), so the result is the uninterrupted call's.
    """
    if episodes < 1:
        raise ValueError(f"episodes must be >= 1, got {episodes}")
    num_envs = min(num_envs, episodes)
    if len(done_returns) > episodes or (len(done_returns) % num_envs and len(done_returns) != episodes):
        raise ValueError(f"done_returns must be whole waves of {num_envs} episodes out of {episodes}, "
                         f"got {len(done_returns)}")
    if video_path and done_returns:
        raise ValueError("the video shows episode 0, which a resumed evaluation does not play")
    policy = _jit(act_fn)
    ref_min, ref_max = references if references is not None else reference_scores(env_id)
    envs = _eval_envs(env_id, num_envs, render=video_path is not None)
    key = jax.random.PRNGKey(seed)
    returns: list[float] = [float(r) for r in done_returns]
    frames: list[np.ndarray] = []
    env_steps = 0
    start = time.perf_counter()
    for wave_start in range(0, episodes, num_envs):
        if wave_start < len(returns):
            key, _ = wave_step_keys(key, 1)  # the next wave's key does not depend on the step count
            continue
        wave = range(wave_start, min(wave_start + num_envs, episodes))
        obs = np.zeros((num_envs, *envs[0].observation_space.shape), np.float32)
        for i, episode in enumerate(wave):
            obs[i], _ = envs[i].reset(seed=episode_seed(seed, episode))
        running = np.zeros(num_envs, bool)
        running[: len(wave)] = True
        wave_returns = np.zeros(num_envs)
        policy_state = init_policy_state(num_envs) if init_policy_state is not None else None
        key, step_keys = wave_step_keys(key, -(-envs[0].max_episode_steps // action_repeat))
        for step_key in step_keys:
            if not running.any():
                break
            if policy_state is None:
                actions = np.asarray(policy(params, obs, step_key))
            else:
                actions, policy_state = policy(params, obs, step_key, policy_state)
                actions = np.asarray(actions)
            for i in np.flatnonzero(running):
                for _ in range(action_repeat):
                    obs[i], reward, terminated, truncated, _ = envs[i].step(actions[i])
                    wave_returns[i] += reward
                    env_steps += 1
                    if on_step is not None:
                        on_step(wave[i], envs[i], reward)
                    if video_path and wave_start == 0 and i == 0 and env_steps % video_every == 0:
                        frames.append(envs[0].render())
                    if terminated or truncated:
                        running[i] = False
                        break
        if running.any():
            raise RuntimeError(f"an episode of {env_id} outlasted max_episode_steps {envs[0].max_episode_steps}")
        returns.extend(wave_returns[: len(wave)].tolist())
        if on_wave is not None:
            on_wave(list(returns))
    seconds = time.perf_counter() - start
    if video_path:
        _write_video(frames, Path(video_path), fps=round(envs[0].metadata["render_fps"] / video_every))
    returns_arr = np.asarray(returns)
    return EvalResult(
        env_id=env_id,
        returns=tuple(float(r) for r in returns_arr),
        mean=float(returns_arr.mean()),
        std=float(returns_arr.std()),
        normalized_score=float(normalized_score(returns_arr.mean(), ref_min, ref_max)),
        ref_min_score=ref_min,
        ref_max_score=ref_max,
        episodes=episodes,
        env_steps=env_steps,
        seconds=seconds,
        resumed_episodes=len(done_returns),
    )


def _write_video(frames: list[np.ndarray], path: Path, fps: int) -> None:
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, frames, fps=fps, macro_block_size=1)
