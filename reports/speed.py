"""Measure the suite's hot paths on this machine and write `reports/speed.md`.

    python -m reports.speed                 # ~5 minutes on 2 CPU cores
    python -m reports.speed --quick         # a smoke version (tests)

In one process: the machine's matmul GFLOP/s (the peak an update can reach), the rate at the
networks' own matmul shape and the memory rate; for each update step, compile time, updates/s
(fastest chunk), FLOPs and bytes per update counted by XLA's cost analysis, the resulting share
of the peak and recompiles;
vmapped-seed scaling; env steps/s of raw dm_control, our gymnasium wrapper and the evaluation
harness; dataset building; the online training loop end to end; MPPI's planning cost.
Run it on an otherwise idle machine: it measures whatever the cores give it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fire
import jax
import jax.numpy as jnp
import numpy as np

import envs
from algorithms import bc, cqlsac
from algorithms.common import machine_description, stack_trees

OUT = Path(__file__).with_name("speed.md")


def _best_seconds(f, x: jax.Array, repeats: int) -> float:
    """Fastest of `repeats` timed calls f(x), after one call that compiles."""
    f(x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        f(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(n: int = 2048, repeats: int = 10) -> float:
    """float32 n x n matmul throughput, best of `repeats` (a proxy for the MLP peak)."""
    return 2 * n**3 / _best_seconds(jax.jit(lambda x: x @ x), jnp.ones((n, n), jnp.float32), repeats) / 1e9


def copy_gbytes_per_s(mebibytes: int = 256, repeats: int = 10) -> float:
    """Device memory bandwidth: a jitted elementwise pass over a float32 array of `mebibytes`,
    counting its read and its write. The other ceiling beside the matmul peak: an update that
    moves more bytes per FLOP than peak / bandwidth is bound by memory, not arithmetic."""
    x = jnp.arange(mebibytes * 2**20 // 4, dtype=jnp.float32)
    return 2 * x.nbytes / _best_seconds(jax.jit(lambda x: x * 1.5 + 1.0), x, repeats) / 1e9


def layer_matmul_gflops(batch: int = 256, width: int = 256, chain: int = 200, repeats: int = 10) -> float:
    """float32 throughput of the networks' own matmul shape ([batch, width] x [width, width]),
    `chain` dependent products in one jitted scan so dispatch is paid once: the ceiling an
    update of 2 x 256 layers at batch 256 could reach, next to the 2048² peak."""
    x, w = jnp.ones((batch, width), jnp.float32), jnp.eye(width, dtype=jnp.float32)  # eye: no overflow
    f = jax.jit(lambda x: jax.lax.scan(lambda h, _: (h @ w, None), x, length=chain)[0])
    return 2 * batch * width**2 * chain / _best_seconds(f, x, repeats) / 1e9


def _timed_chunks(chunk, state, args: tuple, chunks: int) -> tuple[Any, float, float]:
    """(state, compile seconds incl. the first chunk, seconds of the fastest later chunk).
    The fastest, like `_best_seconds`: on a shared machine a mean absorbs other tenants' bursts."""
    start = time.perf_counter()
    state, *rest = chunk(state, *args)
    jax.block_until_ready(rest)
    compile_s = time.perf_counter() - start
    best = float("inf")
    for _ in range(chunks):
        start = time.perf_counter()
        state, *rest = chunk(state, *args)
        jax.block_until_ready(rest)
        best = min(best, time.perf_counter() - start)
    return state, compile_s, best


def _synthetic_walker_data(n: int, obs_dim: int = 24, action_dim: int = 6) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    data = {"obs": rng.normal(size=(n, obs_dim)), "action": rng.uniform(-1, 1, (n, action_dim)),
            "reward": rng.uniform(size=n), "next_obs": rng.normal(size=(n, obs_dim))}
    return {k: jnp.asarray(v, jnp.float32) for k, v in data.items()}


def sac_update_speed(config: cqlsac.Config, num_updates: int, chunks: int) -> dict:
    """Online SAC: the replay-buffer chunk the online loop runs (add + `num_updates` updates)."""
    obs_dim, action_dim = 24, 6
    state = cqlsac.init_state(config, obs_dim, action_dim, jax.random.PRNGKey(0))
    transitions = _synthetic_walker_data(num_updates)
    batch = {k: v[: config.batch_size] for k, v in _synthetic_walker_data(config.batch_size).items()}
    flops, bytes_accessed = xla_cost(lambda s, b: cqlsac.update(config, s, b), state, batch)
    replay = cqlsac.Replay.create(100_000, obs_dim, action_dim)
    chunk = cqlsac.make_train_chunk(config, num_updates)

    def run(carry):  # keep the replay in the carry: (state, replay) -> ((state, replay), metrics)
        state, replay, metrics = chunk(*carry, transitions)
        return (state, replay), metrics

    _, compile_s, seconds = _timed_chunks(run, (state, replay), (), chunks)
    return {"compile_s": compile_s, "updates_per_s": num_updates / seconds, "flops_per_update": flops,
            "bytes_per_update": bytes_accessed,
            "recompiles": chunk._cache_size() - 1}


def xla_cost(fn, *args) -> tuple[float, float]:
    """(FLOPs, bytes accessed) of one call of `fn(*args)` as counted by XLA's cost analysis of the
    compiled program: a scan body counts once, whatever its trip count, and the bytes are each
    fused op's operands and results, as if no cache held them."""
    cost = jax.jit(fn).lower(*args).compile().cost_analysis()
    return float(cost["flops"]), float(cost["bytes accessed"])


def offline_update_speed(algo: str, config, chunks: int, seeds: int = 1) -> dict:
    """An offline algorithm's jitted `lax.scan` chunk on a walker-shaped on-device dataset,
    `seeds` seeds vmapped into one program as `--seeds` does (seed-updates/s counts all; FLOPs
    and bytes are the vmapped update's, per seed)."""
    obs_dim, action_dim = 24, 6
    data = _synthetic_walker_data(100_000)
    if algo == "bc":
        data = {"obs": data["obs"], "action": data["action"]}
        init = lambda k: bc.init_state(config, jnp.zeros(obs_dim), jnp.ones(obs_dim), action_dim, k)
        make_chunk, update = bc.make_train_chunk, lambda s, b: bc.update(config, s, b)
    else:
        init = lambda k: cqlsac.init_state(config, obs_dim, action_dim, k, offline=True)
        make_chunk, update = cqlsac.make_offline_chunk, lambda s, b: cqlsac.update(config, s, b, offline=True)
    states = [init(jax.random.PRNGKey(s)) for s in range(seeds)]
    train_chunk, state = make_chunk(config), states[0]
    if seeds > 1:  # one program trains every seed, as `--seeds` runs them
        vmap = lambda f: jax.vmap(f, in_axes=(0, None))
        train_chunk, update, state = vmap(train_chunk), vmap(update), stack_trees(states)
    flops, bytes_accessed = xla_cost(update, state, {k: v[: config.batch_size] for k, v in data.items()})
    chunk = jax.jit(train_chunk, donate_argnums=0)
    _, compile_s, seconds = _timed_chunks(chunk, state, (data,), chunks)
    updates_per_s = seeds * config.updates_per_chunk / seconds
    return {"compile_s": compile_s, "updates_per_s": updates_per_s, "flops_per_update": flops / seeds,
            "bytes_per_update": bytes_accessed / seeds,
            "recompiles": chunk._cache_size() - 1, "seeds": seeds}


def mppi_speed(repeats: int, **overrides) -> dict:
    """MPPI's milliseconds per action, 10 eval envs planned in one jitted call, on a model of
    the default ensemble size (planning cost does not depend on the weights)."""
    from algorithms import dynamics, mppi

    config = mppi.Config(**overrides)
    model = dynamics.init_model(mppi.model_config(config), 24, 6, jax.random.PRNGKey(0))
    obs = np.random.default_rng(0).normal(size=(10, 24)).astype(np.float32)
    result = mppi.planner_speed(mppi.make_act_fn(config), (model, None), obs, mppi.initial_plan(config, 6), repeats)
    # Counted by hand: XLA's cost analysis counts a scan body once, not once per trip
    # (0.9 of the suite planner's 43.5 GFLOP per call). Model forward passes are all the matmuls.
    layer_macs = sum(w.shape[1] * w.shape[2] for w in (layer["w"] for layer in model.params["layers"]))
    rows = config.num_samples * config.num_iterations * config.horizon  # model rows per action, per elite
    flops_per_action = 2 * layer_macs * rows * model.elites.shape[0]
    return {**result, "flops_per_action": flops_per_action, "config": config}


def dataset_build_speed(episodes: int) -> dict:
    """Transitions/s of `datasets.build` (expert generator and uniform random) in a temp root."""
    from datasets import build

    rates = {}
    with tempfile.TemporaryDirectory() as root:
        previous = os.environ.get("MINARI_DATASETS_PATH")
        os.environ["MINARI_DATASETS_PATH"] = root
        try:
            for quality in ("expert", "random"):
                marker = build.build_dataset("walker-walk", quality, episodes=episodes)
                rates[quality] = marker["transitions"] / marker["build_seconds"]
        finally:
            if previous is None:
                os.environ.pop("MINARI_DATASETS_PATH")
            else:
                os.environ["MINARI_DATASETS_PATH"] = previous
    return rates


def env_speed(steps: int, episodes: int, rounds: int = 3) -> dict:
    """Raw dm_control vs our wrapper vs the evaluation harness (random policy, and a 2 x 256
    actor), interleaved over `rounds` and best of each: single timings drift by 10-20% with
    CPU frequency and cache state, so every row gets the same treatment."""
    from functools import partial

    from dm_control import suite

    from envs.evaluation import uniform_random_policy

    actions = np.random.default_rng(0).uniform(-1, 1, (steps, 6))
    raw = suite.load("walker", "walk", task_kwargs={"random": 0})
    env = envs.make("walker-walk")
    raw.reset()
    env.reset(seed=0)
    actor, _ = cqlsac.networks(cqlsac.Config(), action_dim=6)
    actor_params = actor.init(jax.random.PRNGKey(0), jnp.zeros((1, 24)))
    policies = {"random": (uniform_random_policy, jnp.zeros(6)),
                "actor": (partial(cqlsac.deterministic_action, actor=actor), actor_params)}
    rates = {"raw": 0.0, "wrapper": 0.0, "harness_random": 0.0, "harness_actor": 0.0}
    for _ in range(rounds):
        start = time.perf_counter()
        for a in actions:
            if raw.step(a).last():
                raw.reset()
        rates["raw"] = max(rates["raw"], steps / (time.perf_counter() - start))
        start = time.perf_counter()
        for a in actions.astype(np.float32):
            if env.step(a)[3]:
                env.reset(seed=0)
        rates["wrapper"] = max(rates["wrapper"], steps / (time.perf_counter() - start))
        for name, (policy, params) in policies.items():
            # The first round's first call compiles; rounds take the best, so it is not counted.
            result = envs.evaluate("walker-walk", policy, params, episodes, num_envs=10, references=(0, 1))
            rates[f"harness_{name}"] = max(rates[f"harness_{name}"], result.env_steps / result.seconds)
    return {"raw_steps_per_s": rates["raw"], "wrapper_steps_per_s": rates["wrapper"],
            "harness_steps_per_s": rates["harness_random"], "harness_actor_steps_per_s": rates["harness_actor"]}


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


def update_configs(quick: bool = False) -> tuple[cqlsac.Config, cqlsac.Config, bc.Config]:
    """(SAC, CQL-SAC, BC) configs of the update rows; CQL at the peers' sizes (JAX-CORL / CORL:
    2 x 256, batch 256, 10 sampled actions of each kind)."""
    return (cqlsac.Config(online=True),
            cqlsac.Config(cql_num_actions=10, batch_size=256, updates_per_chunk=20 if quick else 200),
            bc.Config(updates_per_chunk=100 if quick else 2000))


def main(quick: bool = False, out: str = str(OUT)) -> dict:
    repeats = 3 if quick else 10
    peak = matmul_gflops(repeats=repeats)
    large_peak = matmul_gflops(n=4096, repeats=repeats)  # a GPU may need a larger product to fill it
    layer_peak = layer_matmul_gflops(repeats=repeats)
    bandwidth = copy_gbytes_per_s(repeats=repeats)
    chunks = 1 if quick else 3
    sac_config, cql_config, bc_config = update_configs(quick)

    def beside_layer_rate(measure: Callable[[], dict]) -> dict:
        """`measure()`'s row with the 256² matmul rate, the better of just before and just after
        it: on a shared machine that rate drifts by a third from minute to minute, and the
        updates' rates drift too, so each row is set against its own ceiling."""
        before = layer_matmul_gflops(repeats=repeats)
        row = measure()
        return {**row, "layer_gflops": max(before, layer_matmul_gflops(repeats=repeats))}

    sac_updates = 50 if quick else 500
    updates = {
        "SAC (online chunk)": beside_layer_rate(lambda: sac_update_speed(sac_config, sac_updates, chunks)),
        # What the critics' LayerNorm costs: elementwise work a matmul-bound update would not do.
        "SAC (online chunk), critics without LayerNorm": beside_layer_rate(lambda: sac_update_speed(
            dataclasses.replace(sac_config, critic_layernorm=False), sac_updates, chunks)),
        "CQL-SAC (offline, 10 actions)": beside_layer_rate(lambda: offline_update_speed("cqlsac", cql_config, chunks)),
        "BC (deterministic)": beside_layer_rate(lambda: offline_update_speed("bc", bc_config, chunks)),
    }
    suite_cql = cqlsac.Config()
    if suite_cql.cql_num_actions != cql_config.cql_num_actions:
        updates[f"CQL-SAC (offline, suite default {suite_cql.cql_num_actions} actions)"] = beside_layer_rate(
            lambda: offline_update_speed(
                "cqlsac", dataclasses.replace(suite_cql, updates_per_chunk=cql_config.updates_per_chunk), chunks))
    for row in updates.values():
        gflops_per_s = row["updates_per_s"] * row["flops_per_update"] / 1e9
        row["share_of_peak"], row["share_of_layer_rate"] = gflops_per_s / peak, gflops_per_s / row["layer_gflops"]
    # vmapped seeds: one compiled program trains all of them (`--seeds`); short chunks keep 16 affordable.
    scaling_config = dataclasses.replace(cql_config, updates_per_chunk=5 if quick else 20)
    scaling = {n: offline_update_speed("cqlsac", scaling_config, chunks, seeds=n) for n in ((1, 2) if quick else (1, 4, 16))}
    env = env_speed(steps=1000 if quick else 5000, episodes=10 if quick else 20)
    build = dataset_build_speed(episodes=2 if quick else 20)
    # The suite's planner (64 x 2) and a 4x larger one (256 x 4, 32 elites) for scale.
    planners = [mppi_speed(2 if quick else 5),
                mppi_speed(2 if quick else 5, num_samples=256, num_iterations=4, num_elites=32)]
    for p in planners:
        p["share_of_peak"] = p["flops_per_action"] / (p["speed/ms_per_action"] / 1000) / (peak * 1e9)
    online = online_speed(env_steps=4000 if quick else 20_000)
    results = {"matmul_gflops": peak, "matmul_4096_gflops": large_peak, "layer_matmul_gflops": layer_peak,
               "copy_gbytes_per_s": bandwidth, "updates": updates, "seed_scaling": scaling, "env": env,
               "dataset_build": build, "online": online,
               "mppi": [{k: v for k, v in p.items() if k != "config"} for p in planners]}
    device = jax.devices()[0]
    asynchronous = jax.config.read("jax_cpu_enable_async_dispatch")
    dispatch = f", {'asynchronous' if asynchronous else 'synchronous'} CPU dispatch" if device.platform == "cpu" else ""
    header = (f"Measured {datetime.date.today()} by `python -m reports.speed{' --quick' if quick else ''}` on "
              f"{machine_description()['cpu']}, JAX device {device.platform.upper()} ({device.device_kind}), "
              f"jax {jax.__version__}{dispatch}. Updates at 2 x 256 networks, batch 256, on walker-shaped data; "
              f"compile = the first chunk, compilation included; updates/s from the fastest of {chunks} later chunk(s).")
    update_rows = "\n".join(
        f"| {name} | {r['compile_s']:.1f} s | {r['updates_per_s']:.1f} | {r['flops_per_update'] / 1e9:.3f} | "
        f"{r['bytes_per_update'] / 1e9:.3f} ({r['flops_per_update'] / r['bytes_per_update']:.1f}) | "
        f"{100 * r['share_of_peak']:.0f}% | {r['layer_gflops']:.0f} GFLOP/s, {100 * r['share_of_layer_rate']:.0f}% | "
        f"{r['recompiles']} |" for name, r in updates.items())
    base = scaling[1]["updates_per_s"]
    scaling_rows = "\n".join(f"| {n} | {r['compile_s']:.1f} s | {r['updates_per_s']:.1f} | "
                              f"{r['updates_per_s'] / base:.2f}x | {r['flops_per_update'] / 1e9:.3f} | "
                              f"{r['bytes_per_update'] / 1e9:.3f} |" for n, r in scaling.items())
    planner_rows = "\n".join(
        f"| MPPI, {p['config'].num_samples} samples x {p['config'].num_iterations} iterations, horizon "
        f"{p['config'].horizon}, {p['config'].num_elites} elites (10 envs per call) | {p['speed/ms_per_action']:.1f} ms "
        f"per action ({p['speed/ms_per_call']:.0f} ms per call, compile {p['speed/compile_s']:.1f} s; "
        f"{p['flops_per_action'] / 1e9:.2f} GFLOP per action, {100 * p['share_of_peak']:.0f}% of the matmul peak) |"
        for p in planners)
    table = f"""# Speed

{header}

Matmul peak (float32 2048², jit): **{peak:.0f} GFLOP/s** (4096²: {large_peak:.0f} GFLOP/s). At the networks'
own shape (256 x 256 times 256 x 256, 200 chained in one jit): {layer_peak:.0f} GFLOP/s ({100 * layer_peak / peak:.0f}% of
the peak). Memory, a jitted pass over 256 MiB of float32 (read and write counted): **{bandwidth:.0f} GB/s**, so
below {peak / bandwidth:.0f} FLOP per byte a program's counted bytes take longer than its FLOPs unless caches
hold them.

The last-but-one column sets each update against the 256² rate measured around it (the better
of just before and just after), the ceiling for its layers, which drifts on a shared machine.

| update | compile | updates/s | GFLOP/update (XLA) | GB/update (XLA; FLOP per byte) | share of matmul peak | 256² rate around it; share | recompiles after the first chunk |
|---|---|---|---|---|---|---|---|
{update_rows}

CQL-SAC seeds vmapped into one program (`--seeds`), 10 sampled actions:

| seeds | compile | seed-updates/s | vs 1 seed | GFLOP per seed-update (XLA) | GB per seed-update (XLA) |
|---|---|---|---|---|---|
{scaling_rows}

| what | figure |
|---|---|
| raw dm_control walker-walk | {env['raw_steps_per_s']:.0f} env steps/s |
| our gymnasium wrapper | {env['wrapper_steps_per_s']:.0f} env steps/s ({env['raw_steps_per_s'] / env['wrapper_steps_per_s']:.2f}x raw) |
| evaluation harness (10 envs in lockstep, random policy) | {env['harness_steps_per_s']:.0f} env steps/s ({env['raw_steps_per_s'] / env['harness_steps_per_s']:.2f}x raw) |
| evaluation harness (10 envs in lockstep, 2 x 256 actor) | {env['harness_actor_steps_per_s']:.0f} env steps/s ({env['raw_steps_per_s'] / env['harness_actor_steps_per_s']:.2f}x raw) |
| dataset build, expert generator (20 envs in lockstep) | {build['expert']:.0f} transitions/s |
| dataset build, uniform random | {build['random']:.0f} transitions/s |
| online SAC end to end (action repeat 2, UTD 1) | {online['env_steps_per_s']:.0f} env steps/s, {online['updates_per_s']:.0f} updates/s |
{planner_rows}
"""
    Path(out).write_text(table)
    print(table)
    return results


if __name__ == "__main__":
    fire.Fire(main)
