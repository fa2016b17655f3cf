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


_pick_headless_backend()

import gymnasium as gym  # noqa: E402

from envs.dmc import PRIMARY_ENV_IDS, DMCEnv, flatten_observation, parse_env_id, valid_env_ids  # noqa: E402


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

from envs.evaluation import EvalResult, evaluate, normalized_score, reference_scores  # noqa: E402

__all__ = [
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
