"""Export the dataset generators from the suite's own online SAC runs.

    python -m datasets.generators --env walker-walk --run runs/cqlsac/walker-walk/online/seed0

* expert: the run's final actor (the latest checkpoint);
* medium: the actor snapshot whose stochastic return (the way data is collected) is closest
  to `--medium-fraction` (0.5) of the expert's;
* medium-replay: the actions the online run took up to the medium snapshot, with their
  episode seeds. Replaying them reproduces the run's replay buffer at every native step; the
  export checks that replaying reproduces the buffer's observations exactly.

`--dry-run` only measures the latest checkpoint's stochastic return (what a candidate expert
would score as ref_max_score). `--only expert` replaces just the expert (from a stronger run) and keeps the committed medium
and medium-replay files, so those datasets stay byte-identical; the expert's entry then
records its own run.

Writes `datasets/generators/<env>/` (a few hundred KB per env) and its generators.json, which
records the command, seed and steps that produced each file.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import sys
from functools import partial
from pathlib import Path

import fire
import jax
import jax.numpy as jnp
import numpy as np

import envs
from algorithms import cqlsac
from algorithms.common import config_from_stored, flatten_tree, load_checkpoint, restore_tree, save_checkpoint
from datasets.build import GENERATORS_DIR


def stochastic_return(env_id: str, actor: cqlsac.Actor, params, action_repeat: int, episodes: int) -> float:
    result = envs.evaluate(env_id, partial(cqlsac.sample_action, actor=actor), params, episodes, seed=1,
                           num_envs=episodes, action_repeat=action_repeat, references=(0.0, 1.0))
    return result.mean


def run_command(config: cqlsac.Config) -> str:
    """The train.py command that reproduces an online run: every non-default training flag."""
    not_training = {"env", "online", "seed", "seeds", "run_root", "wandb", "wandb_project"}
    defaults = cqlsac.Config()
    flags = [f"--{f.name.replace('_', '-')} {getattr(config, f.name)}" for f in dataclasses.fields(config)
             if f.name not in not_training and getattr(config, f.name) != getattr(defaults, f.name)]
    return " ".join([f"python train.py cqlsac --env {config.env} --online --seed {config.seed}", *flags])


def main(env: str, run: str, medium_fraction: float = 0.5, episodes: int = 20, only: str = "",
         dry_run: bool = False, out: str = str(GENERATORS_DIR)) -> None:
    """Export the generators; `--dry-run` only prints the run's expert stochastic return."""
    if only not in ("", "expert"):
        sys.exit(f"error: --only takes 'expert' (or nothing for all three generators), not {only!r}")
    out_dir = Path(out) / env
    if only == "expert" and not dry_run and not (out_dir / "generators.json").exists():
        sys.exit(f"error: --only expert replaces the expert among existing generators, but {out_dir} has no "
                 f"generators.json; export all three first (without --only)")
    run_dir = Path(run)
    config = config_from_stored(cqlsac.Config, json.loads((run_dir / "config.json").read_text()))
    if not config.online or config.env != env or config.num_envs != 1:
        sys.exit(f"error: {run_dir} is not a single-env online cqlsac run on {env}")
    probe = envs.make(env)
    obs_dim, action_dim = probe.observation_space.shape[0], probe.action_space.shape[0]
    actor, _ = cqlsac.networks(config, action_dim)
    template = actor.init(jax.random.PRNGKey(0), jnp.zeros((1, obs_dim)))
    final_step, arrays = load_checkpoint(run_dir / "checkpoint.npz")
    expert_params = restore_tree(template, arrays, "state.actor.params")
    expert_return = stochastic_return(env, actor, expert_params, config.action_repeat, 2 * episodes)
    print(f"expert (step {final_step:,}): stochastic return {expert_return:.1f} over {2 * episodes} episodes")
    if dry_run:
        return
    online_run = {"command": run_command(config), "seed": config.seed,
                  "export": f"python -m datasets.generators --env {env} --run {run}" + (f" --only {only}" if only else "")}
    expert_info = {"file": "expert.npz", "env_steps": final_step, "stochastic_return": expert_return,
                   "hidden_dim": config.hidden_dim, "num_layers": config.num_layers,
                   "log_std_min": config.log_std_min, "log_std_max": config.log_std_max,
                   "action_repeat": config.action_repeat}
    if only == "expert":
        info = json.loads((out_dir / "generators.json").read_text())
        medium_return = info["medium"]["stochastic_return"]
        print(f"kept medium: stochastic return {medium_return:.1f} = {medium_return / expert_return:.0%} of the new "
              f"expert (target {medium_fraction:.0%}); medium-replay kept")
        info["expert"] = {**expert_info, "online_run": online_run}
        save_checkpoint(out_dir / "expert.npz", final_step, flatten_tree(expert_params, "actor"))
        (out_dir / "generators.json").write_text(json.dumps(info, indent=2) + "\n")
        print(f"wrote {out_dir / 'expert.npz'}")
        return

    target = medium_fraction * expert_return
    best = None
    for path in sorted((run_dir / "snapshots").glob("step*.npz")):
        step, snap = load_checkpoint(path)
        params = restore_tree(template, snap, "actor")
        ret = stochastic_return(env, actor, params, config.action_repeat, episodes)
        print(f"  snapshot step {step:,}: {ret:.1f}")
        if best is None or abs(ret - target) < abs(best[1] - target):
            best = (step, ret, path)
        if ret > 1.5 * target:
            break  # returns only grow from here on in practice; the closest one is behind us
    medium_step, medium_return, medium_path = best
    print(f"medium: step {medium_step:,}, stochastic return {medium_return:.1f} (target {target:.1f})")

    # medium-replay: the agent's actions in the replay buffer up to the medium snapshot.
    agent_steps = medium_step // config.action_repeat
    episode_agent_steps = probe.max_episode_steps // config.action_repeat
    num_episodes = agent_steps // episode_agent_steps
    actions = arrays["replay.action"][: num_episodes * episode_agent_steps]
    seeds = np.array([cqlsac._train_seed(config.seed, k) for k in range(num_episodes)], np.int64)
    _check_replay_reproduces_buffer(env, actions, seeds, arrays["replay.obs"], config.action_repeat,
                                    episode_agent_steps)

    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / "expert.npz", final_step, flatten_tree(expert_params, "actor"))
    shutil.copy(medium_path, out_dir / "medium.npz")
    np.savez_compressed(out_dir / "medium-replay.npz", actions=actions, episode_seeds=seeds)
    info = {
        "expert": expert_info,
        "medium": {**expert_info, "file": "medium.npz", "env_steps": medium_step, "stochastic_return": medium_return},
        "medium-replay": {"file": "medium-replay.npz", "env_steps": num_episodes * probe.max_episode_steps,
                          "episodes": num_episodes, "action_repeat": config.action_repeat},
        "online_run": online_run,
    }
    (out_dir / "generators.json").write_text(json.dumps(info, indent=2) + "\n")
    print(f"wrote {out_dir}")


def _check_replay_reproduces_buffer(env_id, actions, seeds, buffer_obs, action_repeat, episode_agent_steps,
                                    check_episodes: int = 3) -> None:
    """Replay the first episodes' actions: the observations must equal the buffer's exactly."""
    env = envs.make(env_id)
    for k in range(min(check_episodes, len(seeds))):
        obs, _ = env.reset(seed=int(seeds[k]))
        for t in range(episode_agent_steps):
            row = k * episode_agent_steps + t
            if not np.array_equal(obs, buffer_obs[row]):
                sys.exit(f"error: replaying episode {k} diverges from the replay buffer at agent step {t}")
            for _ in range(action_repeat):
                obs = env.step(actions[row])[0]
    print(f"replay check: {min(check_episodes, len(seeds))} episodes reproduce the replay buffer exactly")


if __name__ == "__main__":
    fire.Fire(main)
