"""MPPI planning on the learned dynamics ensemble, in one file: config, planner, optional
policy prior / terminal value, offline evaluation and online (PETS-style) mode.

    python train.py mppi --env walker-walk --dataset expert                  # trains or reuses the model
    python train.py mppi --env walker-walk --dataset expert --model-from runs/dynamics/walker-walk/expert/seed0
    python train.py mppi --env walker-walk --dataset medium --prior-from runs/cqlsac/walker-walk/medium/seed0
    python train.py mppi --env walker-walk --online

Each env step the planner refines a Gaussian over `horizon`-step action sequences for
`num_iterations` rounds: `num_samples` sequences are drawn around the mean and clipped to the
action bounds [-1, 1], each is rolled through the elites' mean prediction and scored by its
discounted uncertainty-penalized reward (MOPO's r - lambda * u, so plans avoid where the model
is unsure), plus, with `--prior-from`, the borrowed critic's value at the last state; the
`num_elites` best sequences, softmax-weighted by score / temperature, give the next mean and
std (std clipped to [min_std, max_std]). With a prior, `num_prior_samples` extra sequences
come from rolling the borrowed policy through the model (MBOP / TD-MPC), and where the model's
uncertainty at the policy's own action is above `policy_fallback_above` (optionally moved to
a percentile of u on the model's own data: `fallback_threshold`) the policy acts: there the
model is at a loss and a plan that beats the policy's is most likely its error. Otherwise
the first action of the mean is taken; the mean, shifted by one step, warm-starts the next
plan (a per-env planner state carried by the evaluation harness). Planning for all eval envs
is one jitted call.

Online mode (PETS / TD-MPC style): `seed_steps` of uniform random actions, then the planner
acts, every `refit_every` env steps the ensemble is refit (warm-started) on all data so far.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

import envs
from algorithms import cqlsac, dynamics
from algorithms.common import ConfigError, Run, RunConfig, field, load_checkpoint, restore_tree

StepFn = Callable[[jax.Array, jax.Array], tuple[jax.Array, jax.Array, jax.Array]]
"""step_fn(obs [N, D], action [N, A]) -> (next_obs [N, D], reward [N], uncertainty [N])."""


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    dataset: str = field("expert", "offline: the dataset the model is trained on (suite quality, Minari id or "
                                   "file); also gives the normalized score's references")
    model_from: str = field("", "a dynamics run directory to plan with; empty = the dataset's default dynamics "
                                "run (runs/dynamics/<env>/<dataset>/seed0), trained there first if missing")
    prior_from: str = field("", "a cqlsac or mopo run directory: its policy proposes trajectories and its critic "
                                "scores the last state (MBOP / TD-MPC); empty = plan on model rewards alone")
    horizon: int = field(25, "planning horizon in env steps. Without --prior-from there is no terminal value, so "
                             "the horizon must see a fall coming: with the true simulator as the model, horizon 5 "
                             "lets the walker fall (random-level return) while 15 stands and walks (reward ~1/step); "
                             "on the learned walker-walk medium model (penalty 2, init std 0.5) 25 kept 8 of 10 "
                             "episodes up, 15 kept 4 (reports/probes/)")
    # 64 x 2 is what the leaderboard's grid can afford on 2 CPU cores. It is 4.35 GFLOP of model
    # matmuls per action, so its cost follows the machine's matmul peak: 20.7 ms per action (10
    # envs per call) in reports/speed.md on a 474 GFLOP/s CPU, 38-44 ms on the 203 GFLOP/s CPU of
    # 2026-12-04 (about 35 min for a cell's 50 episodes). 256 x 4 takes 8x as long.
    num_samples: int = field(64, "action sequences sampled around the mean per iteration")
    num_iterations: int = field(2, "refinement rounds per env step")
    num_elites: int = field(8, "best sequences that set the next mean and std")
    num_prior_samples: int = field(24, "with --prior-from: sequences from the borrowed policy, every iteration")
    policy_fallback_above: float = field(1.0, "with --prior-from (ignored without): where the model's uncertainty "
                                              "u at the current state and the policy's action is above this, the "
                                              "policy acts, not the plan (0: never). On walker-walk expert u sits "
                                              "at its ceiling (2.09) while the walker is off the expert's gait and "
                                              "at 0.25-0.3 on it; 1.0 lifted walker-walk expert from 55.9 to 99.6 "
                                              "and medium from 39.8 to 48.4 (reports/probes/mppi-fallback-1)")
    fallback_noisy_data_percentile: float = field(0.0, "with the fallback: where the model's u on most of its own "
                                                       "data (the median) is above --policy-fallback-above, the "
                                                       "threshold is this percentile of u on the data instead (0: "
                                                       "keep it). Noisy data keep u high everywhere (walker-walk "
                                                       "medium-replay: 1.19-1.23 on every transition), and 1.0 "
                                                       "hands the policy every step there; 95 lets the plan act. "
                                                       "Off by default: on walker-run medium-replay 95 scored "
                                                       "8.9 against 13.0 at 1.0 over 50 episodes "
                                                       "(reports/probes/mppi-fallback-p95)")
    fallback_clean_data_percentile: float = field(95.0, "with the fallback: where the model's u on most of its own "
                                                        "data (the median) is below --policy-fallback-above, the "
                                                        "threshold is lowered to this percentile of u on the data "
                                                        "where that is lower (0: keep it). On walker-run expert u is "
                                                        "0.81 at the data's 95th percentile and 0.95 with the walker "
                                                        "down: at 1.0 the policy never acted and the planner scored "
                                                        "72.9 against its policy's 91.6, at 0.81 92.0 "
                                                        "(reports/probes/mppi-fallback-clean-p95)")
    temperature: float = field(0.5, "softmax temperature over elite scores (score / temperature); lower = greedier")
    init_std: float = field(0.5, "std of the first iteration at every step (only the mean is warm-started); 0.5 "
                                 "keeps samples near the warm start, where 2.0 makes most of them bang-bang")
    min_std: float = field(0.05, "lower clip of the sampling std")
    max_std: float = field(2.0, "upper clip of the sampling std")
    uncertainty_penalty: float = field(2.0, "lambda of the penalized reward r - lambda * u, u = max elite std "
                                            "norm in units of the data's target spread (~0.5 along the chosen plans on "
                                            "walker medium); 2 keeps the plan where the model is right (on "
                                            "walker-walk medium its reward for the chosen 25-step plan tracks the "
                                            "env's, correlation 0.93), at the price of staying near the data's "
                                            "behaviour (reports/probes/)")
    discount: float = field(0.99, "discount of rewards within the plan and of the terminal value")
    model_hidden_dim: int = field(200, "model trained here (no --model-from): width of its hidden layers")
    model_num_layers: int = field(4, "model trained here: hidden layers")
    model_max_updates: int = field(20_000, "model trained here: update budget of each fit (early stopping ends "
                                           "it sooner)")
    online: bool = field(False, "plan in the env from scratch, collecting data and refitting the model (PETS)")
    total_env_steps: int = field(50_000, "online: env steps to run", resume_safe=True)
    seed_steps: int = field(5_000, "online: env steps of uniform random actions before the first fit")
    refit_every: int = field(5_000, "online: env steps between model refits (multiple of the episode length)")
    eval_every: int = field(10_000, "online: env steps between evaluations", resume_safe=True)
    checkpoint_every: int = field(10_000, "online: env steps between checkpoints (data + model)", resume_safe=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.num_elites <= self.num_samples:
            raise ConfigError("--num-elites must be in [1, --num-samples]")
        if not 0 < self.min_std <= self.max_std:
            raise ConfigError("need 0 < --min-std <= --max-std")
        if self.temperature <= 0 or self.horizon < 1 or self.num_iterations < 1:
            raise ConfigError("--temperature must be > 0, --horizon and --num-iterations >= 1")
        if self.policy_fallback_above < 0:
            raise ConfigError("--policy-fallback-above must be >= 0 (0 turns the fallback off)")
        if not 0 <= self.fallback_noisy_data_percentile <= 100:
            raise ConfigError("--fallback-noisy-data-percentile must be in [0, 100] (0 keeps --policy-fallback-above)")
        if not 0 <= self.fallback_clean_data_percentile <= 100:
            raise ConfigError("--fallback-clean-data-percentile must be in [0, 100] (0 keeps --policy-fallback-above)")

    @property
    def falls_back_on_policy(self) -> bool:
        return bool(self.prior_from) and self.policy_fallback_above > 0

    @property
    def fallback_follows_data(self) -> bool:
        """Whether the threshold depends on u on the model's data (`fallback_threshold`)."""
        return self.falls_back_on_policy and (self.fallback_noisy_data_percentile > 0
                                              or self.fallback_clean_data_percentile > 0)


# ----------------------------------------------------------------------------- policy prior


@flax.struct.dataclass
class PriorParams:
    """A borrowed SAC agent (cqlsac or mopo run): its actor and critic on normalized obs."""

    actor: Any
    critic: Any
    obs_mean: jax.Array
    obs_std: jax.Array


@dataclasses.dataclass(frozen=True)
class Prior:
    """Proposal policy and terminal value of the plan, as pure functions of PriorParams."""

    actor: cqlsac.Actor
    critic: cqlsac.DoubleCritic

    def sample(self, params: PriorParams, obs: jax.Array, key: jax.Array) -> jax.Array:
        mean, log_std = self.actor.apply(params.actor, (obs - params.obs_mean) / params.obs_std)
        return cqlsac.sample_tanh_gaussian(mean, log_std, key)[0]

    def act(self, params: PriorParams, obs: jax.Array) -> jax.Array:
        """The policy's deterministic action (its evaluation action)."""
        return jnp.tanh(self.actor.apply(params.actor, (obs - params.obs_mean) / params.obs_std)[0])

    def value(self, params: PriorParams, obs: jax.Array) -> jax.Array:
        norm = (obs - params.obs_mean) / params.obs_std
        return self.critic.apply(params.critic, norm, self.act(params, obs)).min(0)


def load_prior(directory: str | Path, obs_dim: int, action_dim: int) -> tuple[Prior, PriorParams]:
    directory = Path(directory)
    config_path, checkpoint = directory / "config.json", directory / "checkpoint.npz"
    if not config_path.exists() or not checkpoint.exists():
        raise ConfigError(f"--prior-from {directory}: no run there (config.json + checkpoint.npz)")
    stored = json.loads(config_path.read_text())
    algo = stored.pop("algo", None)
    if algo not in ("cqlsac", "mopo"):
        raise ConfigError(f"--prior-from takes a cqlsac or mopo run; {directory} is {algo!r}")
    module = importlib.import_module(f"algorithms.{algo}")
    known = {f.name for f in dataclasses.fields(module.Config)}
    run_config = module.Config(**{k: v for k, v in stored.items() if k in known})
    sac_config = run_config if algo == "cqlsac" else module.sac_config(run_config)
    actor, critic = cqlsac.networks(sac_config, action_dim)
    obs, action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
    _, arrays = load_checkpoint(checkpoint)
    key = jax.random.PRNGKey(0)
    prefix = module.SAC_PREFIX if algo == "mopo" else "state"  # mopo's state wraps the SAC agent
    params = PriorParams(
        actor=restore_tree(actor.init(key, obs), arrays, f"{prefix}.actor.params"),
        critic=restore_tree(critic.init(key, obs, action), arrays, f"{prefix}.critic.params"),
        obs_mean=jnp.asarray(arrays.get("norm.obs_mean", np.zeros(obs_dim, np.float32))),
        obs_std=jnp.asarray(arrays.get("norm.obs_std", np.ones(obs_dim, np.float32))),
    )
    return Prior(actor, critic), params


# ----------------------------------------------------------------------------- planner


def plan(config: Config, step_fn: StepFn, obs: jax.Array, prev_mean: jax.Array, key: jax.Array,
         prior: Prior | None = None, prior_params: PriorParams | None = None) -> tuple[jax.Array, jax.Array]:
    """MPPI for one state `obs` [D]: returns (action [A] in [-1, 1], the final mean [H, A]).
    `prev_mean` is the previous step's plan; it is shifted by one step to warm-start this one."""
    horizon, action_dim = prev_mean.shape
    mean = jnp.concatenate([prev_mean[1:], jnp.zeros_like(prev_mean[:1])])
    std = jnp.full_like(mean, jnp.clip(config.init_std, config.min_std, config.max_std))
    prior_key, key = jax.random.split(key)

    def returns(actions: jax.Array, key: jax.Array) -> jax.Array:
        def body(carry, action):
            state, total, discount = carry
            next_state, reward, uncertainty = step_fn(state, action)
            total = total + discount * dynamics.penalized_reward(reward, uncertainty, config.uncertainty_penalty)
            return (next_state, total, discount * config.discount), None

        n = actions.shape[0]
        start = (jnp.broadcast_to(obs, (n, obs.shape[-1])), jnp.zeros(n), jnp.ones(n))
        (last, total, discount), _ = jax.lax.scan(body, start, actions.transpose(1, 0, 2))
        if prior is not None:
            total = total + discount * prior.value(prior_params, last)
        # A diverging model must not win the softmax: non-finite scores rank last.
        return jnp.where(jnp.isfinite(total), total, -1e9)

    prior_actions = None
    if prior is not None:
        # The borrowed policy rolled through the model: proposals kept for every iteration.
        def policy_step(state, key):
            action = prior.sample(prior_params, state, key)
            return step_fn(state, action)[0], action

        state = jnp.broadcast_to(obs, (config.num_prior_samples, obs.shape[-1]))
        prior_actions = jax.lax.scan(policy_step, state, jax.random.split(prior_key, horizon))[1].transpose(1, 0, 2)

    def iteration(carry, key):
        mean, std = carry
        noise_key, eval_key = jax.random.split(key)
        noise = jax.random.normal(noise_key, (config.num_samples, horizon, action_dim))
        actions = jnp.clip(mean + std * noise, -1.0, 1.0)  # every candidate respects the bounds
        if prior_actions is not None:
            actions = jnp.concatenate([actions, prior_actions])
        scores = returns(actions, eval_key)
        elite_scores, elite_idx = jax.lax.top_k(scores, config.num_elites)
        weights = jax.nn.softmax((elite_scores - elite_scores.max()) / config.temperature)
        elites = actions[elite_idx]
        mean = jnp.einsum("k,kha->ha", weights, elites)
        std = jnp.sqrt(jnp.einsum("k,kha->ha", weights, (elites - mean) ** 2))
        return (mean, jnp.clip(std, config.min_std, config.max_std)), elite_scores.max()

    (mean, _), _ = jax.lax.scan(iteration, (mean, std), jax.random.split(key, config.num_iterations))
    action = jnp.clip(mean[0], -1.0, 1.0)
    if prior is not None and config.policy_fallback_above > 0:
        policy_action, unsure = policy_fallback(config, step_fn, obs[None], prior, prior_params)
        action = jnp.where(unsure[0], policy_action[0], action)
    return action, mean


def policy_fallback(config: Config, step_fn: StepFn, obs: jax.Array, prior: Prior, prior_params: PriorParams
                    ) -> tuple[jax.Array, jax.Array]:
    """The borrowed policy's actions [B, A] at `obs` [B, D], and where it takes over from the
    plan [B]: where the model's uncertainty there is above `policy_fallback_above`. Where the
    model is at a loss its scores are guesses, and a guess that beats the policy's proposals is
    most likely the model's error."""
    policy_action = prior.act(prior_params, obs)
    return policy_action, step_fn(obs, policy_action)[2] > config.policy_fallback_above


def data_uncertainty(step_fn: StepFn, obs: np.ndarray, action: np.ndarray,
                     sample: int = dynamics.DATA_SAMPLE) -> np.ndarray:
    """The model's u on a fixed sample of its own data's transitions (`obs` [N, D], `action` [N, A]);
    the same rows as the dynamics run's logged percentiles (`dynamics.uncertainty_on_data`)."""
    rows = dynamics.data_sample_rows(len(obs), sample)
    return np.asarray(jax.jit(step_fn)(jnp.asarray(obs[rows]), jnp.asarray(action[rows]))[2])


def fallback_threshold(config: Config, u_data: np.ndarray) -> float:
    """The u above which the policy acts, given u on the model's data (`data_uncertainty`).

    `policy_fallback_above` is meant to mark where the model is less sure than on its data. On
    a model of noisy data u is high on the data too; where the data's median u is above the
    threshold it would mark the data itself, so the threshold rises to the data's
    `fallback_noisy_data_percentile`. On a model of clean data u can stay below it off the
    data as well (walker-run expert's fallen walker), so it falls to the data's
    `fallback_clean_data_percentile` where that is lower."""
    threshold = config.policy_fallback_above
    noisy = np.median(u_data) > threshold
    percentile = config.fallback_noisy_data_percentile if noisy else config.fallback_clean_data_percentile
    if not config.falls_back_on_policy or percentile == 0:
        return threshold
    data_level = float(np.percentile(u_data, percentile))
    return data_level if noisy else min(threshold, data_level)


def model_step_fn(model: dynamics.Model) -> StepFn:
    # Planning uses the elites' mean prediction; their spread enters through the penalty.
    return lambda obs, action: dynamics.step(model, obs, action, jax.random.PRNGKey(0), deterministic=True)


def make_act_fn(config: Config, prior: Prior | None = None):
    """The planner as the harness's stateful policy: act(params, obs [B, D], key, prev_means
    [B, H, A]) -> (actions [B, A], means), params = (model, prior params or None). All envs
    are planned for in one jitted call (vmapped)."""

    def act(params: tuple, obs: jax.Array, key: jax.Array, prev_means: jax.Array):
        model, prior_params = params
        one = lambda o, m, k: plan(config, model_step_fn(model), o, m, k, prior, prior_params)
        return jax.vmap(one)(obs, prev_means, jax.random.split(key, obs.shape[0]))

    return act


def initial_plan(config: Config, action_dim: int) -> Callable[[int], jax.Array]:
    return lambda num_envs: jnp.zeros((num_envs, config.horizon, action_dim))


def planner_speed(act: Callable, params: tuple, obs: np.ndarray, init: Callable[[int], jax.Array],
                  repeats: int = 5) -> dict[str, float]:
    """Planner cost on a batch `obs` [B, D], after compiling: milliseconds per jitted call
    (all B envs planned together) and per action (call / B)."""
    jitted = jax.jit(act)
    batch, carry = jnp.asarray(obs), init(len(obs))
    start = time.perf_counter()
    jax.block_until_ready(jitted(params, batch, jax.random.PRNGKey(0), carry))
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for i in range(repeats):
        actions, carry = jitted(params, batch, jax.random.PRNGKey(i), carry)
    jax.block_until_ready(actions)
    ms = 1000 * (time.perf_counter() - start) / repeats
    return {"speed/compile_s": compile_s, "speed/plan_batch": len(obs), "speed/ms_per_call": ms,
            "speed/ms_per_action": ms / len(obs)}


# ----------------------------------------------------------------------------- train / evaluate


def model_config(config: Config, dataset: str | None = None) -> dynamics.Config:
    """The dynamics config of a model trained on behalf of this run (shared with `train.py dynamics`)."""
    return dynamics.consumer_config(config.env, dataset or config.dataset, config.run_root, config.wandb,
                                    config.model_max_updates, hidden_dim=config.model_hidden_dim,
                                    num_layers=config.model_num_layers)


def train(config: Config) -> list[dict]:
    if config.seeds:
        raise ConfigError("mppi evaluates one --seed at a time (nothing is trained per seed)")
    return [train_online(config) if config.online else evaluate_offline(config)]


def prior_for(config: Config, obs_dim: int, action_dim: int) -> tuple[Prior | None, PriorParams | None]:
    """The run's borrowed policy and critic (`--prior-from`), or (None, None) without one."""
    return load_prior(config.prior_from, obs_dim, action_dim) if config.prior_from else (None, None)


def inputs_fingerprint(model: dynamics.Model, prior_params: PriorParams | None) -> str:
    """A hash of everything an evaluation plans with beyond its config: a resumed one must
    find the same model and prior, not a retrained one at the same path."""
    digest = hashlib.sha256()
    for leaf in jax.tree_util.tree_leaves((model, prior_params)):
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def evaluate_offline(config: Config) -> dict:
    """Plan with the dataset's model in the real env: the final evaluation through the harness.
    It takes most of an hour on a CPU, so every wave of episodes is checkpointed (the returns so
    far) and rerunning the command resumes at the next wave, with the uninterrupted run's result."""
    import datasets

    data = datasets.load(config.env, config.dataset)
    obs_dim, action_dim = data.obs.shape[-1], data.action.shape[-1]
    model = dynamics.model_for(config.model_from, model_config(config), data)
    prior, prior_params = prior_for(config, obs_dim, action_dim)
    threshold = config.policy_fallback_above  # u on the data is only needed to move it
    if config.fallback_follows_data:
        threshold = fallback_threshold(config, data_uncertainty(model_step_fn(model), data.obs, data.action))
    act = make_act_fn(dataclasses.replace(config, policy_fallback_above=threshold), prior)
    init = initial_plan(config, action_dim)
    run = Run("mppi", config, datasets.label(config.dataset), config.final_eval_episodes, "episode",
              dataset_sha256=datasets.fingerprint(data))
    fingerprint = inputs_fingerprint(model, prior_params)
    restored = run.restore()
    done: tuple[float, ...] = ()
    if restored is not None and "eval.returns" in restored[1]:  # older runs saved no returns: replay
        if str(restored[1].get("eval.inputs_sha256")) != fingerprint:
            raise ConfigError(f"{run.dir} was evaluating with another model or prior than --model-from / "
                              f"--prior-from hold now; pick another --run-root or delete the directory")
        done = tuple(float(r) for r in restored[1]["eval.returns"])
    final_path = run.dir / "final_eval.json"
    if len(done) == config.final_eval_episodes and final_path.exists():  # keep its timings: nothing to redo
        print(f"{run.dir} is finished; its final evaluation: {final_path}", file=sys.stderr)
        return json.loads(final_path.read_text())
    arrays = {**dynamics.model_arrays(model), "obs_dim": np.int64(obs_dim), "action_dim": np.int64(action_dim),
              "eval.inputs_sha256": np.asarray(fingerprint)}

    def checkpoint(returns: list[float]) -> None:
        run.save(len(returns), {**arrays, "eval.returns": np.asarray(returns)})
        run.advance(len(returns))

    run.start(len(done))
    try:
        # The batch the harness plans for: min(its envs, episodes).
        batch = min(envs.NUM_EVAL_ENVS, config.final_eval_episodes)
        speed = planner_speed(act, (model, prior_params), np.asarray(data.obs[:batch]), init)
        print(", ".join(f"{k} {v:.1f}" for k, v in speed.items()), file=sys.stderr)
        if config.falls_back_on_policy:
            print(f"the policy acts where u at its action is above {threshold:.3f}", file=sys.stderr)
        # The bar counts episodes: a 50-episode evaluation is the whole run (minutes per wave).
        result = envs.evaluate(config.env, act, (model, prior_params), config.final_eval_episodes, seed=config.seed,
                               num_envs=batch, references=datasets.references(data), init_policy_state=init,
                               on_wave=checkpoint, done_returns=done)
    except BaseException:
        run.close()
        raise
    if result.env_steps:
        speed["speed/eval_ms_per_env_step"] = 1000 * result.seconds / result.env_steps
    final = {**result.as_dict(), **speed, "seed": config.seed,
             **({"policy_fallback_threshold": threshold} if config.falls_back_on_policy else {})}
    run.log(0, {"eval/return": result.mean, "eval/normalized_score": result.normalized_score, **speed,
                "final": True})
    run.finish(final)
    return final


def load_policy(directory: Path, config: Config):
    raise ConfigError("MPPI carries a plan from step to step: evaluate it with python train.py mppi "
                      f"--model-from ... (its final evaluation is in {directory}/final_eval.json)")


def train_online(config: Config) -> dict:
    """PETS-style: random seed data, then plan, collect, refit every `refit_every` env steps."""
    env = envs.make(config.env)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    length = env.max_episode_steps
    for name in ("refit_every", "seed_steps", "checkpoint_every"):
        if getattr(config, name) % length or getattr(config, name) <= 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive multiple of the episode length {length}")
    if config.seed_steps < 2 * length:
        raise ConfigError(f"--seed-steps must cover 2 episodes ({2 * length} steps): the model holds out whole episodes")
    references = envs.reference_scores(config.env)
    prior, prior_params = prior_for(config, obs_dim, action_dim)
    act = make_act_fn(config, prior)
    jitted = jax.jit(act)
    init = initial_plan(config, action_dim)
    fit_config = dataclasses.replace(model_config(config, "online"), seed=config.seed)
    run = Run("mppi", config, "online", config.total_env_steps, "env-step")
    keys = ("obs", "action", "reward", "next_obs", "episode_end")
    data: dict[str, list[np.ndarray]] = {k: [] for k in keys}
    model, env_steps = None, 0
    restored = run.restore()
    if restored is not None:
        env_steps, arrays = restored
        data = {k: [arrays[f"data.{k}"]] for k in keys}
        if "model.elites" in arrays:
            template = dynamics.init_model(fit_config, obs_dim, action_dim, jax.random.PRNGKey(0))
            model = restore_tree(template, arrays, "model")
    run.start(env_steps)

    def evaluate(episodes: int) -> envs.EvalResult:
        return envs.evaluate(config.env, act, (model, prior_params), episodes, seed=config.seed,
                             references=references, init_policy_state=init)

    try:
        while env_steps < config.total_env_steps:
            episode = env_steps // length
            # Training episodes use seeds below the eval range (envs.evaluation.EVAL_SEED_BASE).
            obs, _ = env.reset(seed=config.seed * 1_000_000 + episode)
            rng = np.random.default_rng([config.seed, episode])
            carry, rows, episode_return = init(1), {k: [] for k in keys}, 0.0
            for t in range(length):
                if model is None:
                    action = rng.uniform(-1, 1, action_dim).astype(np.float32)
                else:
                    key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 10_000), env_steps + t)
                    action, carry = jitted((model, prior_params), jnp.asarray(obs[None]), key, carry)
                    action = np.asarray(action[0])
                next_obs, reward, terminated, truncated, _ = env.step(action)
                for k, v in zip(keys, (obs, action, reward, next_obs, terminated or truncated)):
                    rows[k].append(v)
                episode_return += reward
                obs = next_obs
                if terminated or truncated:
                    break
            for k in keys:
                data[k].append(np.asarray(rows[k], bool if k == "episode_end" else np.float32))
            env_steps += len(rows["reward"])
            record = {"train/episode_return": episode_return}
            if env_steps >= config.seed_steps and (model is None or env_steps % config.refit_every == 0):
                transitions = dynamics.Transitions(*(np.concatenate(data[k]) for k in keys))
                model, diagnostics = dynamics.fit(fit_config, transitions, init=model)
                record.update({f"model/{k}": v for k, v in diagnostics.items() if isinstance(v, (int, float))})
            if env_steps % config.eval_every == 0 and env_steps < config.total_env_steps and model is not None:
                result = evaluate(config.eval_episodes)
                record.update({"eval/return": result.mean, "eval/normalized_score": result.normalized_score})
            run.log(env_steps, record)
            if env_steps % config.checkpoint_every == 0 or env_steps >= config.total_env_steps:
                arrays = {f"data.{k}": np.concatenate(data[k]) for k in keys}
                if model is not None:
                    arrays.update(dynamics.model_arrays(model))
                run.save(env_steps, arrays)
        if model is None:
            raise ConfigError("--total-env-steps ended before --seed-steps: no model was ever fit")
        result = evaluate(config.final_eval_episodes)
    except BaseException:
        run.close()
        raise
    final = {**result.as_dict(), "env_steps": env_steps, "seed": config.seed}
    run.log(env_steps, {"eval/return": result.mean, "eval/normalized_score": result.normalized_score, "final": True})
    run.finish(final)
    return final
