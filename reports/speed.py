"""Measure the suite's hot paths on this machine and write `reports/speed.md`.

    python -m reports.speed                 # ~2 minutes on 2 CPU cores
    python -m reports.speed --quick         # a smoke version (tests)

In one process: the machine's matmul GFLOP/s (the peak an update can reach); for the SAC
update, compile time, updates/s, FLOPs per update counted by XLA's cost analysis and the
resulting share of the peak; env steps/s of raw dm_control, our gymnasium wrapper and the
evaluation harness; and the online training loop's env steps/s and updates/s end to end.
Run it on an otherwise idle machine: it measures whatever the cores give it.
"""

from __future__ import annotations

import datetime
import json
import platform
import tempfile
import time
from pathlib import Path

import fire
import jax
import jax.numpy as jnp
import numpy as np

import envs
from algorithms import cqlsac

OUT = Path(__file__).with_name("speed.md")


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """float32 n x n matmul throughput, best of `repeats` (a proxy for the MLP peak)."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def sac_update_speed(config: cqlsac.Config, num_updates: int, chunks: int) -> dict:
    obs_dim, action_dim = 24, 6
    state = cqlsac.init_state(config, obs_dim, action_dim, jax.random.PRNGKey(0))
    batch = {"obs": jnp.zeros((config.batch_size, obs_dim)), "action": jnp.zeros((config.batch_size, action_dim)),
             "reward": jnp.zeros(config.batch_size), "next_obs": jnp.zeros((config.batch_size, obs_dim))}
    one_update = jax.jit(lambda s, b: cqlsac.update(config, s, b)).lower(state, batch).compile()
    flops = float(one_update.cost_analysis()["flops"])

    rng = np.random.default_rng(0)
    transitions = {"obs": rng.normal(size=(num_updates, obs_dim)), "action": rng.uniform(-1, 1, (num_updates, action_dim)),
                   "reward": rng.uniform(size=num_updates), "next_obs": rng.normal(size=(num_updates, obs_dim))}
    transitions = {k: jnp.asarray(v, jnp.float32) for k, v in transitions.items()}
    replay = cqlsac.Replay.create(100_000, obs_dim, action_dim)
    chunk = cqlsac.make_train_chunk(config, num_updates)
    start = time.perf_counter()
    state, replay, metrics = chunk(state, replay, transitions)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(chunks):
        state, replay, metrics = chunk(state, replay, transitions)
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
    return {"compile_s": compile_s, "updates_per_s": chunks * num_updates / seconds, "flops_per_update": flops,
            "recompiles": chunk._cache_size() - 1}


def env_speed(steps: int, episodes: int, rounds: int = 3) -> dict:
    """Raw dm_control vs our wrapper, interleaved over `rounds` and best of each (single
    timings drift by 10-20% with CPU frequency and cache state)."""
    from dm_control import suite

    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 6))
    raw = suite.load("walker", "walk", task_kwargs={"random": 0})
    env = envs.make("walker-walk")
    raw.reset()
    env.reset(seed=0)
    raw_rate = wrapper_rate = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        for a in actions:
            if raw.step(a).last():
                raw.reset()
        raw_rate = max(raw_rate, steps / (time.perf_counter() - start))
        start = time.perf_counter()
        for a in actions.astype(np.float32):
            if env.step(a)[3]:
                env.reset(seed=0)
        wrapper_rate = max(wrapper_rate, steps / (time.perf_counter() - start))

    from envs.evaluation import _jit, uniform_random_policy

    _jit(uniform_random_policy)(jnp.zeros(6), jnp.zeros((10, 24)), jax.random.PRNGKey(0))  # compile outside the timing
    result = envs.evaluate("walker-walk", uniform_random_policy, jnp.zeros(6), episodes, num_envs=10,
                           references=(0, 1))
    return {"raw_steps_per_s": raw_rate, "wrapper_steps_per_s": wrapper_rate,
            "harness_steps_per_s": result.env_steps / result.seconds, "harness_episodes_per_s": result.episodes_per_s}


def online_speed(env_steps: int) -> dict:
    """End-to-end online SAC (default network sizes) on walker-walk, after a warm-up."""
    with tempfile.TemporaryDirectory() as root:
        config = cqlsac.Config(online=True, total_env_steps=env_steps, learning_starts=1000, log_every=env_steps // 4,
                               eval_every=10**9, checkpoint_every=10**9, final_eval_episodes=1, wandb="disabled",
                               run_root=root)
        cqlsac.train(config)
        lines = (Path(root) / "cqlsac/walker-walk/online/seed0/metrics.jsonl").read_text().splitlines()
        last = json.loads([line for line in lines if "speed/env_steps_per_s" in line][-1])
    return {"env_steps_per_s": last["speed/env_steps_per_s"], "updates_per_s": last["speed/updates_per_s"]}


def main(quick: bool = False, out: str = str(OUT)) -> dict:
    peak = matmul_gflops(repeats=3 if quick else 10)
    config = cqlsac.Config(online=True)
    update = sac_update_speed(config, num_updates=50 if quick else 500, chunks=1 if quick else 4)
    update["share_of_peak"] = update["updates_per_s"] * update["flops_per_update"] / (peak * 1e9)
    env = env_speed(steps=1000 if quick else 5000, episodes=10 if quick else 20)
    online = online_speed(env_steps=4000 if quick else 20_000)
    results = {"matmul_gflops": peak, "sac_update": update, "env": env, "online": online}
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    header = (f"Measured {datetime.date.today()} by `python -m reports.speed{' --quick' if quick else ''}` on "
              f"{cpu}, {jax.local_device_count()} x {jax.devices()[0].platform.upper()} device, "
              f"{len(jax.devices('cpu'))} JAX CPU device, jax {jax.__version__}.")
    c = config
    table = f"""# Speed

{header}

| what | figure |
|---|---|
| matmul peak (float32 2048², jit) | {peak:.0f} GFLOP/s |
| SAC update ({c.num_layers} x {c.hidden_dim}, batch {c.batch_size}, LayerNorm critics): compile | {update['compile_s']:.1f} s |
| SAC update: throughput (`lax.scan` chunks) | {update['updates_per_s']:.0f} updates/s |
| SAC update: FLOPs (XLA cost analysis) | {update['flops_per_update'] / 1e9:.3f} GFLOP |
| SAC update: share of the matmul peak | {100 * update['share_of_peak']:.0f}% |
| SAC update: recompiles after the first chunk | {update['recompiles']} |
| raw dm_control walker-walk | {env['raw_steps_per_s']:.0f} env steps/s |
| our gymnasium wrapper | {env['wrapper_steps_per_s']:.0f} env steps/s ({env['raw_steps_per_s'] / env['wrapper_steps_per_s']:.2f}x raw) |
| evaluation harness (10 envs in lockstep, random policy) | {env['harness_steps_per_s']:.0f} env steps/s = {env['harness_episodes_per_s']:.2f} episodes/s ({env['raw_steps_per_s'] / env['harness_steps_per_s']:.2f}x raw) |
| online SAC end to end (action repeat 2, UTD 1) | {online['env_steps_per_s']:.0f} env steps/s, {online['updates_per_s']:.0f} updates/s |
"""
    Path(out).write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    fire.Fire(main)
