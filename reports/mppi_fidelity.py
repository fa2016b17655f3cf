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
- has the walker left the data? The model's uncertainty u (MOPO's, the planner's penalty term)
  at each real state and the action taken there, per 100-step bin, beside u on the dataset's
  own transitions: u well above the data's means the model is guessing where the walker is.

With `--prior-from RUN_DIR` the planner borrows that run's policy and critic, as in training.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import envs
from algorithms import dynamics, mppi
from algorithms.common import CheckpointError, ConfigError, parse_config
from envs.evaluation import episode_seed, wave_step_keys


@dataclasses.dataclass(frozen=True)
class Replay:
    """The harness's first evaluation episodes of the planner, step for step."""

    realized: np.ndarray  # [E, T] the env's rewards
    predicted: np.ndarray  # [E, T, H] the model's rewards for each step's chosen plan
    uncertainty: np.ndarray  # [E, T] the model's u at the real state and the action taken
    policy_acted: np.ndarray  # [E, T] steps where the fallback handed the step to the policy
    data_uncertainty: np.ndarray  # u on a sample of the dataset's own transitions
    references: tuple[float, float]
    fallback_threshold: float  # the u above which the policy acted (mppi.fallback_threshold)


def play(config: mppi.Config, episodes: int = 10, data_sample: int = dynamics.DATA_SAMPLE) -> Replay:
    """The harness's first `episodes` evaluation episodes of the planner (same env seeds, same
    per-step keys, so the same returns as `envs.evaluate`), with the model's view of each step."""
    import datasets

    if not 1 <= episodes <= envs.NUM_EVAL_ENVS:
        raise ConfigError(f"--episodes must be in [1, {envs.NUM_EVAL_ENVS}] (one wave of the harness's envs)")
    data = datasets.load(config.env, config.dataset)
    model = dynamics.model_for(config.model_from, mppi.model_config(config), data)
    prior, prior_params = mppi.prior_for(config, data.obs.shape[-1], data.action.shape[-1])
    step_fn = mppi.model_step_fn(model)
    data_uncertainty = mppi.data_uncertainty(step_fn, data.obs, data.action, data_sample)
    threshold = mppi.fallback_threshold(config, data_uncertainty)
    config = dataclasses.replace(config, policy_fallback_above=threshold)  # as the evaluation plans
    act = jax.jit(mppi.make_act_fn(config, prior))

    @jax.jit
    def model_view(obs: jax.Array, plans: jax.Array, actions: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Model rewards [B, H] of each env's plan [B, H, A] from its state [B, D], u [B] at
        the state and the action the env gets, and whether the policy acted there [B]."""
        def body(state, action):
            next_state, reward, _ = step_fn(state, action)
            return next_state, reward
        rewards = jax.lax.scan(body, obs, plans.transpose(1, 0, 2))[1].T
        policy_acted = jnp.zeros(obs.shape[0], bool)
        if config.falls_back_on_policy:
            policy_acted = mppi.policy_fallback(config, step_fn, obs, prior, prior_params)[1]
        return rewards, step_fn(obs, actions)[2], policy_acted


    batch = [envs.make(config.env) for _ in range(episodes)]
    obs = np.stack([env.reset(seed=episode_seed(config.seed, i))[0] for i, env in enumerate(batch)])
    length = batch[0].max_episode_steps
    plans = mppi.initial_plan(config, batch[0].action_space.shape[0])(episodes)
    keys = wave_step_keys(jax.random.PRNGKey(config.seed), length)[1]  # the harness's first wave
    realized, predicted = np.zeros((episodes, length)), np.zeros((episodes, length, config.horizon))
    uncertainty, policy_acted = np.zeros((episodes, length)), np.zeros((episodes, length), bool)
    for t in range(length):
        actions, plans = act((model, prior_params), obs, keys[t], plans)
        view = model_view(jnp.asarray(obs), plans, actions)
        predicted[:, t], uncertainty[:, t], policy_acted[:, t] = map(np.asarray, view)
        for i, (env, action) in enumerate(zip(batch, np.asarray(actions))):
            obs[i], realized[i, t], *_ = env.step(action)
    return Replay(realized, predicted, uncertainty, policy_acted, data_uncertainty, datasets.references(data),
                  threshold)


def report(config: mppi.Config, replay: Replay, bin_steps: int = 100, down_below: float = 0.1) -> str:
    realized, predicted = replay.realized, replay.predicted
    episodes, length = realized.shape
    h = config.horizon
    windows = length - h
    realized_h = np.lib.stride_tricks.sliding_window_view(realized, h, axis=1)[:, :windows].sum(-1)
    predicted_h = predicted[:, :windows].sum(-1)
    corr_h = np.corrcoef(predicted_h.ravel(), realized_h.ravel())[0, 1]
    corr_1 = np.corrcoef(predicted[:, :, 0].ravel(), realized.ravel())[0, 1]
    returns = realized.sum(1)
    down = realized < down_below
    u, u_data = replay.uncertainty, replay.data_uncertainty
    u_data_95 = np.percentile(u_data, 95)
    prior = f", policy prior and terminal value from {config.prior_from}" if config.prior_from else ""
    bins = length // bin_steps
    header = " | ".join(f"{s}-{s + bin_steps}" for s in range(0, bins * bin_steps, bin_steps))

    def per_bin(values: np.ndarray, fmt: str) -> str:
        return " | ".join(format(b, fmt) for b in values[: bins * bin_steps].reshape(bins, bin_steps).mean(1))

    lines = [
        (f"MPPI on {config.env}/{config.dataset}: horizon {h}, {config.num_samples} samples x "
         f"{config.num_iterations} iterations, {config.num_elites} elites, init std {config.init_std}, "
         f"uncertainty penalty {config.uncertainty_penalty}{prior}; {episodes} episodes "
         f"(eval seeds of --seed {config.seed})."),
        "",
        (f"- return {returns.mean():.1f} +- {returns.std():.1f}, normalized "
         f"{envs.normalized_score(returns.mean(), *replay.references):.1f}"),
        (f"- fidelity: predicted vs realized {h}-step reward: mean {predicted_h.mean():.2f} vs {realized_h.mean():.2f}, "
         f"correlation {corr_h:.2f}; first step: {predicted[:, :, 0].mean():.3f} vs {realized.mean():.3f}, "
         f"correlation {corr_1:.2f}"),
        f"- steps down (reward < {down_below}): {100 * down.mean():.0f}%",
        (f"- model uncertainty u at the real state and action: mean {u.mean():.3f} (steps up "
         f"{u[~down].mean() if (~down).any() else float('nan'):.3f}, down "
         f"{u[down].mean() if down.any() else float('nan'):.3f}); on the data's transitions mean "
         f"{u_data.mean():.3f}, 95th percentile {u_data_95:.3f}; real steps above that: {100 * (u > u_data_95).mean():.0f}%"),
        *([(f"- the policy acted (u at its action above {replay.fallback_threshold:.3f}) on "
            f"{100 * replay.policy_acted.mean():.1f}% of the steps, the plan on the rest; by episode step below")]
          if config.falls_back_on_policy else []),
        "",
        "Reward per step, by episode step:",
        "",
        f"| episode | return | {header} |",
        "|---|---|" + "---|" * bins,
        *(f"| {i} | {returns[i]:.0f} | {per_bin(realized[i], '.2f')} |" for i in range(episodes)),
        "",
        "Model uncertainty u at the real state and action, by episode step:",
        "",
        f"| episode | return | {header} |",
        "|---|---|" + "---|" * bins,
        *(f"| {i} | {returns[i]:.0f} | {per_bin(u[i], '.3f')} |" for i in range(episodes)),
    ]
    if config.falls_back_on_policy:
        lines += ["", "Share of steps the policy acted (the fallback), by episode step:", "",
                  f"| episode | return | {header} |", "|---|---|" + "---|" * bins,
                  *(f"| {i} | {returns[i]:.0f} | {per_bin(replay.policy_acted[i].astype(float), '.2f')} |"
                    for i in range(episodes))]
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
        text = report(config, play(config, own.episodes), own.bin_steps, own.down_below)
    except (ConfigError, CheckpointError, datasets.DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if own.out:
        Path(own.out).write_text(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
