"""MOPO (Yu et al., 2020): SAC on uncertainty-penalized rollouts of the learned dynamics
ensemble, in one file: config, rollouts, update chunk, train loop.

    python train.py mopo --env walker-walk --dataset medium           # trains or reuses the model
    python train.py mopo --env walker-walk --dataset medium --model-from runs/dynamics/walker-walk/medium/seed0

Every `rollout_every` updates, `rollout_batch` dataset states start `rollout_horizon`-step
rollouts of the current policy through the ensemble (a random elite per row and step, sampled
from its Gaussian, as in MBPO); each model transition's reward is replaced by the pessimistic
r - penalty_weight * u, with u the largest elite's predicted-std norm (on normalized outputs), so
the policy only exploits the model where the ensemble agrees. The rollouts fill a model replay buffer on the
device; SAC (the networks and update of `algorithms/cqlsac.py`, conservative weight 0) trains
on batches of `real_ratio` dataset and the rest model transitions. A rollout and the chunk's
updates run in one jitted call (rollout, then a lax.scan of updates); seeds vmap.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

import datasets
import envs
from algorithms import cqlsac, dynamics
from algorithms.common import (
    ConfigError,
    RunConfig,
    check_chunking,
    field,
    load_checkpoint,
    restore_tree,
    train_offline_seeds,
)

SAC_PREFIX = "state.sac"  # where the SAC agent sits in a mopo checkpoint (mppi's --prior-from reads it)
# Share of real transitions per SAC batch, by suite dataset. MOPO's 0.05 everywhere but on medium,
# where half real data lifted both cells and cut the episodes that fail (3 seeds each, walker-walk
# 52.4 -> 58.1, walker-run 39.5 -> 44.5; reports/probes/README.md, mopo-real-ratio-0.5).
REAL_RATIO = {"medium": 0.5, "default": 0.05}


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    dataset: str = field("medium", "a suite dataset (random, medium, medium-replay, expert, medium-expert), "
                                   "a Minari id or a .npz/.hdf5 file")
    model_from: str = field("", "a dynamics run directory; empty = the dataset's default dynamics run "
                                "(runs/dynamics/<env>/<dataset>/seed0), trained there first if missing")
    rollout_horizon: int = field(5, "steps of each model rollout (MOPO/MBPO: 1-5)")
    # u is MOPO's max elite std norm, taken on normalized outputs (dynamics.step): on walker medium
    # ~0.9 on dataset actions and ~1.4 on bang-bang ones. On raw outputs it was 4-8, dominated by the
    # joint velocities, so lambda 1 gave penalized rewards ~ -6 against rewards <= 1. With lambda 0.5
    # the penalty's spread between in- and out-of-data actions (~0.25) is of the order of the
    # reward's own spread, the balance MOPO's tuned lambdas (0.5-2.5 on their scales) strike.
    penalty_weight: float = field(0.5, "lambda of the penalized reward r - lambda * u, u = max elite std norm in "
                                       "units of the data's target spread (peers: 0.5-2.5)")
    real_ratio: float | None = field(None, "share of dataset transitions in every SAC batch, the rest model data; "
                                           "None = by dataset type (REAL_RATIO: 0.5 on suite medium, by name or Minari "
                                           "id; else 0.05)")
    rollout_batch: int = field(10_000, "dataset start states per rollout")
    rollout_every: int = field(1_000, "SAC updates between rollouts (one jitted chunk: a rollout, then the updates)")
    model_buffer_size: int = field(250_000, "capacity of the model replay buffer (5 rollouts at the defaults)")
    model_max_updates: int = field(20_000, "model trained here (no --model-from): update budget of its fit "
                                           "(early stopping may end it sooner)")
    updates: int = field(30_000, "SAC gradient updates (the leaderboard's budget)", resume_safe=True)
    batch_size: int = field(256, "transitions per SAC update")
    hidden_dim: int = field(256, "width of every hidden layer of actor and critics")
    num_layers: int = field(2, "hidden layers of actor and critics")
    critic_layernorm: bool = field(True, "LayerNorm after each critic hidden layer (stabilises TD learning)")
    actor_lr: float = field(1e-4, "actor learning rate (Adam)")
    critic_lr: float = field(3e-4, "critic learning rate (Adam)")
    alpha_lr: float = field(3e-4, "entropy temperature learning rate (Adam)")
    gamma: float = field(0.99, "discount")
    tau: float = field(0.005, "Polyak rate of the target critics")
    init_alpha: float = field(0.1, "initial entropy temperature")
    target_entropy: float | None = field(None, "entropy target of the temperature; None = -action_dim")
    log_std_min: float = field(-5.0, "lower bound of the policy's log-std")
    log_std_max: float = field(2.0, "upper bound of the policy's log-std")
    eval_every: int = field(10_000, "updates between evaluations", resume_safe=True)
    checkpoint_every: int = field(10_000, "updates between checkpoints", resume_safe=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.resolve_default("real_ratio", REAL_RATIO, datasets.suite_quality(self.dataset))
        if not 0.0 <= self.real_ratio <= 1.0:
            raise ConfigError("--real-ratio must be in [0, 1]")
        if self.rollout_horizon < 1 or self.rollout_batch < 1:
            raise ConfigError("--rollout-horizon and --rollout-batch must be >= 1")
        if self.rollout_batch * self.rollout_horizon > self.model_buffer_size:
            raise ConfigError("--model-buffer-size must hold at least one rollout (rollout_batch x rollout_horizon)")
        # One chunk is a rollout plus `rollout_every` updates: budgets fall on chunk boundaries.
        check_chunking(self.rollout_every, "rollout-every", updates=self.updates, eval_every=self.eval_every,
                       checkpoint_every=self.checkpoint_every)


def sac_config(config: Config) -> cqlsac.Config:
    """The SAC settings as cqlsac's Config: plain SAC (online_cql_alpha 0, entropy backup)."""
    shared = ("env", "seed", "batch_size", "hidden_dim", "num_layers", "critic_layernorm", "actor_lr", "critic_lr",
              "alpha_lr", "gamma", "tau", "init_alpha", "target_entropy", "log_std_min", "log_std_max")
    return cqlsac.Config(**{k: getattr(config, k) for k in shared}, online_cql_alpha=0.0, wandb="disabled")


def model_config(config: Config) -> dynamics.Config:
    """The default dynamics run of the dataset (seed 0): the same run `train.py dynamics` makes."""
    return dynamics.consumer_config(config.env, config.dataset, config.run_root, config.wandb, config.model_max_updates)


@flax.struct.dataclass
class MOPOState:
    sac: cqlsac.SACState
    buffer: cqlsac.Replay  # model transitions, observations normalized like the agent's


def init_state(config: Config, obs_dim: int, action_dim: int, key: jax.Array) -> MOPOState:
    return MOPOState(cqlsac.init_state(sac_config(config), obs_dim, action_dim, key),
                     cqlsac.Replay.create(config.model_buffer_size, obs_dim, action_dim))


# ----------------------------------------------------------------------------- rollouts


def generate_rollouts(config: Config, actor: Any, model: dynamics.Model, start_obs: jax.Array,
                      obs_mean: jax.Array, obs_std: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
    """`rollout_horizon` steps of the policy (actor TrainState) through the model from
    `rollout_batch` random dataset states (raw obs); arrays [horizon, batch, ...], observations
    normalized, `reward` penalized, plus the model's own `model_reward` and `uncertainty`."""
    start_key, key = jax.random.split(key)
    obs = start_obs[jax.random.randint(start_key, (config.rollout_batch,), 0, start_obs.shape[0])]
    normalize = lambda o: (o - obs_mean) / obs_std

    def body(obs: jax.Array, key: jax.Array):
        action_key, model_key = jax.random.split(key)
        action, _ = cqlsac.sample_tanh_gaussian(*actor.apply_fn(actor.params, normalize(obs)), action_key)
        next_obs, reward, uncertainty = dynamics.step(model, obs, action, model_key)
        penalized = dynamics.penalized_reward(reward, uncertainty, config.penalty_weight)
        return next_obs, {"obs": normalize(obs), "action": action, "reward": penalized,
                          "next_obs": normalize(next_obs), "model_reward": reward, "uncertainty": uncertainty}

    return jax.lax.scan(body, obs, jax.random.split(key, config.rollout_horizon))[1]


def make_train_chunk(config: Config):
    """One rollout into the model buffer, then `rollout_every` SAC updates on mixed batches
    (pure in (state, data); the driver jits it and vmaps it over seeds)."""
    sac = sac_config(config)
    num_real = round(config.real_ratio * config.batch_size)

    def train_chunk(state: MOPOState, data: dict[str, Any]):
        key, rollout_key = jax.random.split(state.sac.key)
        rollouts = generate_rollouts(config, state.sac.actor, data["model"], data["start_obs"], data["obs_mean"],
                                     data["obs_std"], rollout_key)
        flat = {k: v.reshape(-1, *v.shape[2:]) for k, v in rollouts.items()}
        buffer = state.buffer.add(flat["obs"], flat["action"], flat["reward"], flat["next_obs"])
        real_data = data["real"]

        def one_update(agent: cqlsac.SACState, _):
            key, real_key, model_key = jax.random.split(agent.key, 3)
            idx = jax.random.randint(real_key, (num_real,), 0, real_data["obs"].shape[0])
            fake = buffer.sample(model_key, config.batch_size - num_real)
            batch = {k: jnp.concatenate([real_data[k][idx], fake[k]]) for k in fake}
            return cqlsac.update(sac, agent.replace(key=key), batch)

        agent, metrics = jax.lax.scan(one_update, state.sac.replace(key=key), length=config.rollout_every)
        # Rollout statistics, once per chunk, spread over its updates for the per-update log.
        stats = {"uncertainty_mean": rollouts["uncertainty"].mean(), "uncertainty_max": rollouts["uncertainty"].max(),
                 "model_reward_mean": rollouts["model_reward"].mean(),
                 "penalized_reward_mean": rollouts["reward"].mean()}
        metrics.update({k: jnp.full(config.rollout_every, v) for k, v in stats.items()})
        return MOPOState(agent, buffer), metrics

    return train_chunk


# ----------------------------------------------------------------------------- train / load


def train(config: Config) -> list[dict]:
    data = datasets.load(config.env, config.dataset)
    model = dynamics.model_for(config.model_from, model_config(config), data)
    return train_with_model(config, data, model)


def train_with_model(config: Config, data, model: dynamics.Model) -> list[dict]:
    obs_dim, action_dim = data.obs.shape[-1], data.action.shape[-1]
    if model.obs_dim != obs_dim:
        raise ConfigError(f"the dynamics model predicts {model.obs_dim}-dim observations, the data has {obs_dim}")
    references = datasets.references(data)
    act_fn = partial(cqlsac.normalized_action, actor=cqlsac.networks(sac_config(config), action_dim)[0])
    chunk_data = {"real": cqlsac.normalized_transitions(data), "start_obs": data.obs, "model": model,
                  "obs_mean": data.obs_mean, "obs_std": data.obs_std}

    def evaluate(state: MOPOState, episodes: int, seed: int) -> envs.EvalResult:
        return envs.evaluate(config.env, act_fn, (state.sac.actor.params, data.obs_mean, data.obs_std), episodes,
                             seed=seed, references=references)

    return train_offline_seeds(
        "mopo", config, datasets.label(config.dataset), chunk_data,
        init_state=lambda seed: init_state(config, obs_dim, action_dim, jax.random.PRNGKey(seed)),
        train_chunk=make_train_chunk(config), evaluate=evaluate,
        extra_arrays={"norm.obs_mean": np.asarray(data.obs_mean), "norm.obs_std": np.asarray(data.obs_std)},
        updates=config.updates, updates_per_chunk=config.rollout_every, eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every, dataset_sha256=datasets.fingerprint(data),
    )


def load_policy(directory: Path, config: Config) -> tuple[envs.evaluation.PolicyFn, Any, int]:
    """(act_fn, params, action_repeat) of a run's latest checkpoint, for `evaluate.py`."""
    env = envs.make(config.env)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    actor, _ = cqlsac.networks(sac_config(config), action_dim)
    template = actor.init(jax.random.PRNGKey(0), jnp.zeros((1, obs_dim)))
    _, arrays = load_checkpoint(Path(directory) / "checkpoint.npz")
    params = restore_tree(template, arrays, f"{SAC_PREFIX}.actor.params")
    norm = (jnp.asarray(arrays["norm.obs_mean"]), jnp.asarray(arrays["norm.obs_std"]))
    return partial(cqlsac.normalized_action, actor=actor), (params, *norm), 1
