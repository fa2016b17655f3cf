"""Measure an env's uniform-random reference return with the evaluation harness.

    python -m envs.references                       # walker-walk and walker-run, 100 episodes
    python -m envs.references --env walker-run --episodes 200

Writes `envs/references.json`: {env_id: {"random": {mean, std, episodes, seed, command}}}.
The expert entry is added by the dataset builder once an expert generator exists.
"""

from __future__ import annotations

import json
import sys

import fire
import jax.numpy as jnp

from envs import PRIMARY_ENV_IDS, make
from envs.evaluation import REFERENCES_PATH, evaluate, uniform_random_policy


def measure_random(env_id: str, episodes: int = 100, seed: int = 0) -> dict:
    action_template = jnp.zeros(make(env_id).action_space.shape)
    result = evaluate(
        env_id, uniform_random_policy, action_template, episodes, seed=seed, num_envs=10, references=(0.0, 1.0)
    )
    return {"mean": result.mean, "std": result.std, "episodes": episodes, "seed": seed,
            "episodes_per_s": result.episodes_per_s}


def main(env: str | None = None, episodes: int = 100, seed: int = 0) -> None:
    refs = json.loads(REFERENCES_PATH.read_text()) if REFERENCES_PATH.exists() else {}
    for env_id in [env] if env else PRIMARY_ENV_IDS:
        entry = measure_random(env_id, episodes, seed)
        entry["command"] = "python -m envs.references " + " ".join(sys.argv[1:])
        refs.setdefault(env_id, {})["random"] = entry
        print(f"{env_id}: random {entry['mean']:.1f} +- {entry['std']:.1f} over {episodes} episodes "
              f"({entry['episodes_per_s']:.2f} episodes/s)")
    REFERENCES_PATH.write_text(json.dumps(refs, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    fire.Fire(main)
