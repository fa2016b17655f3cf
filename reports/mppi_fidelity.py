"""Why does MPPI score what it scores? Plan fidelity and where the reward goes, per episode.

    python -m reports.mppi_fidelity --env walker-walk --dataset medium \
        --model-from runs/dynamics/walker-walk/medium/seed0 --episodes 10 [any mppi flag, e.g. --horizon 25]

Replays the harness's first `episodes` (<= 10) evaluation episodes exactly (same env seeds and
per-step keys, envs in lockstep, one batched planner call per step) and, at every step, rolls the plan the planner settled on
through the model. Two questions separate a bad model from a bad planner:

- fidelity: does the model's reward for the chosen plan match what the env then pays? (the
  correlation of the plan's predicted H-step reward with the realized reward of the next H
  steps, and the first step's predicted vs realized reward). High fidelity with a low score
  means the planner, not the model, is what fails.
- where the return is lost: the reward per 100-step bin of every episode, and the share of
  steps "down" (reward below `down_below`, e.g. a fallen walker earns ~0.03 per step).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import envs
from algorithms import dynamics, mppi
from algorithms.common import ConfigError, parse_config
from envs.evaluation import episode_seed, wave_step_keys


def play(config: mppi.Config, episodes: int = 10) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """The harness's first `episodes` evaluation episodes of the planner, step for step (same env
    seeds, same per-step keys, so the same returns as `envs.evaluate`): realized rewards
    [E, T], the model's rewards of each step's chosen plan [E, T, H], and the references."""
    import datasets

    if not 1 <= episodes <= envs.NUM_EVAL_ENVS:
        raise ConfigError(f"--episodes must be in [1, {envs.NUM_EVAL_ENVS}] (one wave of the harness's envs)")
    data = datasets.load(config.env, config.dataset)
    model = dynamics.model_for(config.model_from, mppi.model_config(config), data)
    act = jax.jit(mppi.make_act_fn(config))
    step_fn = mppi.model_step_fn(model)

    @jax.jit
    def predicted_rewards(obs: jax.Array, plans: jax.Array) -> jax.Array:
        """Model rewards [B, H] of each env's plan [B, H, A] from its state [B, D]."""
        def body(state, action):
            next_state, reward, _ = step_fn(state, action)
            return next_state, reward
        return jax.lax.scan(body, obs, plans.transpose(1, 0, 2))[1].T

    batch = [envs.make(config.env) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=episode_seed(config.seed, i))[0] for i, env in enumerate(batch)])
    length = batch[0].max_episode_steps
    plans = mppi.initial_plan(config, batch[0].action_space.shape[0])(episodes)
    keys = wave_step_keys(jax.random.PRNGKey(config.seed), length)[1]  # the harness's first wave
    realized, predicted = np.zeros((episodes, length)), np.zeros((episodes, length, config.horizon))
    for t in range(length):
        actions, plans = act((model, None), obs, keys[t], plans)
        predicted[:, t] = np.asarray(predicted_rewards(jnp.asarray(obs), plans))
        for i, (env, action) in enumerate(zip(batch, np.asarray(actions))):
            obs[i], realized[i, t], *_ = env.step(action)
    return realized, predicted, datasets.references(data)


def report(config: mppi.Config, realized: np.ndarray, predicted: np.ndarray, references: tuple[float, float],
           bin_steps: int = 100, down_below: float = 0.1) -> str:
    episodes, length = realized.shape
    h = config.horizon
    windows = length - h
    realized_h = np.lib.stride_tricks.sliding_window_view(realized, h, axis=1)[:, :windows].sum(-1)
    predicted_h = predicted[:, :windows].sum(-1)
    corr_h = np.corrcoef(predicted_h.ravel(), realized_h.ravel())[0, 1]
    corr_1 = np.corrcoef(predicted[:, :, 0].ravel(), realized.ravel())[0, 1]
    returns = realized.sum(1)
    lines = [
        (f"MPPI on {config.env}/{config.dataset}: horizon {h}, {config.num_samples} samples x "
        f"{config.num_iterations} iterations, {config.num_elites} elites, init std {config.init_std}, "
        f"uncertainty penalty {config.uncertainty_penalty}; {episodes} episodes (eval seeds of --seed {config.seed})."),
        "",
        (f"- return {returns.mean():.1f} +- {returns.std():.1f}, normalized "
        f"{envs.normalized_score(returns.mean(), *references):.1f}"),
        (f"- fidelity: predicted vs realized {h}-step reward: mean {predicted_h.mean():.2f} vs {realized_h.mean():.2f}, "
        f"correlation {corr_h:.2f}; first step: {predicted[:, :, 0].mean():.3f} vs {realized.mean():.3f}, "
        f"correlation {corr_1:.2f}"),
        f"- steps down (reward < {down_below}): {100 * (realized < down_below).mean():.0f}%",
        "",
        "| episode | return | " + " | ".join(f"{s}-{s + bin_steps}" for s in range(0, length, bin_steps)) + " |",
        "|---|---|" + "---|" * (length // bin_steps),
    ]
    for i in range(episodes):
        bins = realized[i, : length // bin_steps * bin_steps].reshape(-1, bin_steps).mean(1)
        lines.append(f"| {i} | {returns[i]:.0f} | " + " | ".join(f"{b:.2f}" for b in bins) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    """Own flags (--episodes, --bin-steps, --down-below, --out); every other flag is an mppi
    Config field (--env, --dataset, --model-from, --horizon, ...), parsed as train.py does."""
    import datasets

    parser = argparse.ArgumentParser(prog="python -m reports.mppi_fidelity", allow_abbrev=False)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--bin-steps", type=int, default=100)
    parser.add_argument("--down-below", type=float, default=0.1)
    parser.add_argument("--out", default="")
    own, planner_flags = parser.parse_known_args(argv)
    try:
        config = parse_config(mppi.Config, planner_flags)
        text = report(config, *play(config, own.episodes), own.bin_steps, own.down_below)
    except (ConfigError, datasets.DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if own.out:
        Path(own.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
