"""DeepMind Control tasks as gymnasium envs and the one evaluation harness.

`envs.make('walker-walk', seed=0)` builds an env; `envs.evaluate(...)` scores a policy.
Every id is also registered with gymnasium as `dmc/<domain>-<task>-v0` through a string
entry point, so Minari can recover the env from a dataset's metadata.
"""

import ctypes.util
import os


def _pick_headless_backend() -> None:
    # MuJoCo picks its GL backend at import. Headless machines have no display: use EGL (GPU
    # or Mesa's software EGL) or else OSMesa, whichever library the machine has.
    if "MUJOCO_GL" not in os.environ:
        backend = "egl" if ctypes.util.find_library("EGL") else "osmesa" if ctypes.util.find_library("OSMesa") else None
        if backend:
            os.environ["MUJOCO_GL"] = backend
            os.environ.setdefault("PYOPENGL_PLATFORM", backend)


def _prefer_synchronous_cpu_dispatch() -> None:
    # On CPU, JAX hands every call to a worker thread by default. For the per-step policy call
    # of the harness and the online loop, that hand-off costs more than the call itself (30 vs
    # 8 us for 10 envs) and slows the env steps around it; training's lax.scan chunks measured
    # the same either way. It must be set before JAX's CPU backend starts, so it lives here, in
    # the package every entry point imports first.
    # WALKER_CPU_ASYNC_DISPATCH=1 keeps JAX's default.
    if os.environ.get("WALKER_CPU_ASYNC_DISPATCH", "0") != "1":
        jax.config.update("jax_cpu_enable_async_dispatch", False)


_pick_headless_backend()

import gymnasium as gym
import jax

_prefer_synchronous_cpu_dispatch()

from envs.dmc import PRIMARY_ENV_IDS, DMCEnv, flatten_observation, parse_env_id, valid_env_ids


def gym_id(env_id: str) -> str:
    """The gymnasium registry id of a suite env id: 'walker-walk' -> 'dmc/walker-walk-v0'."""
    parse_env_id(env_id)
    return f"dmc/{env_id}-v0"


def make(env_id: str, seed: int | None = None, **kwargs) -> DMCEnv:
    """Build one env (native control step, 1000-step episodes, truncation only)."""
    return DMCEnv(env_id, seed=seed, **kwargs)


for _env_id in valid_env_ids():
    if gym_id(_env_id) not in gym.registry:
        gym.register(id=gym_id(_env_id), entry_point="envs.dmc:DMCEnv", kwargs={"env_id": _env_id})

from envs.evaluation import NUM_EVAL_ENVS, EvalResult, evaluate, normalized_score, reference_scores

__all__ = [
    "NUM_EVAL_ENVS",
    "PRIMARY_ENV_IDS",
    "DMCEnv",
    "EvalResult",
    "evaluate",
    "flatten_observation",
    "gym_id",
    "make",
    "normalized_score",
    "parse_env_id",
    "reference_scores",
    "valid_env_ids",
]
