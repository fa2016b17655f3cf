"""CQL-SAC: soft actor-critic with CQL's conservative critic term, offline and online, in
one file: config, networks, losses, update, train loops.

Offline (`python train.py cqlsac --env walker-run --dataset medium`): CQL(H) (Kumar et al.,
2020) on top of SAC. The critic loss adds, for each critic,
    cql_alpha * (logsumexp_a Q(s, a) - Q(s, a_data)),
the logsumexp estimated from `cql_num_actions` uniform actions and as many policy actions at
s and at s' (importance-weighted by their densities), which pushes Q down on actions the data
does not support. `--cql-lagrange` tunes the weight by dual descent toward a target gap.
The dataset (observations normalized) lives on the device; one jitted `lax.scan` runs
`updates_per_chunk` updates at a time.

Online mode (`python train.py cqlsac --env walker-walk --online`) is how the suite trains
its own data generators. The env steps on the host; every `steps_per_chunk` agent steps the
collected transitions go to the replay buffer (JAX arrays on the accelerator) and one jitted
call runs all the chunk's updates as a `lax.scan`: no Python per update, no host sync inside.

DMC never terminates (the 1000-step limit is a truncation), so every TD target bootstraps.
"""

from __future__ import annotations

import dataclasses
import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training.train_state import TrainState

import datasets
import envs
from algorithms.common import (
    ConfigError,
    Run,
    RunConfig,
    check_chunking,
    check_finite,
    field,
    flatten_tree,
    load_checkpoint,
    restore_tree,
    run_dir,
    train_offline_seeds,
)

# Weight of the actor's pull toward the data's actions, by suite dataset. On expert data plain
# CQL-SAC's policy stays far from the data in the drop each walker episode starts with and never
# stands up in a third of its episodes (walker-run expert: 49.8 against BC's 90.8); with the pull
# it scores 92.9 (walker-run) and 94.4 (walker-walk) over 3 seeds (reports/probes/). Elsewhere
# CQL-SAC already matches or leads BC without it.
ACTOR_BC_WEIGHT = {"expert": 1.0, "default": 0.0}

# Conservative weight by (env, suite dataset). On walker-run medium-expert alpha 5 holds the policy
# at the medium half's pace (56.6 at 60k updates); alpha 1 with 60k updates reaches 85.8 (3 seeds;
# seeds 3-5: 88.3). On walker-walk medium-expert alpha 1 cost 21 points, so it is not the
# medium-expert default (reports/probes/).
CQL_ALPHA = {("walker-run", "medium-expert"): 1.0, "default": 5.0}
# Offline update budget, chosen from the learning curves (reports/curves/): the expert curves
# plateau by about 16k and walker-walk medium-expert climbs until 30k; walker-run medium-expert
# needs 60k at alpha 1 (alpha 1 at 30k: 56.0).
OFFLINE_UPDATES = {("walker-run", "medium-expert"): 60_000, "default": 30_000}


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    online: bool = field(False, "train by interacting with the env (online SAC) instead of from a dataset")
    dataset: str = field("medium", "offline: a suite dataset (random, medium, medium-replay, expert, "
                                   "medium-expert), a Minari id or a .npz/.hdf5 file")
    updates: int | None = field(None, "offline: gradient updates; None = by env and dataset (OFFLINE_UPDATES: 60k "
                                      "on walker-run medium-expert, else 30k)", resume_safe=True)
    updates_per_chunk: int = field(1_000, "offline: updates per jitted lax.scan chunk")
    cql_alpha: float | None = field(None, "offline: weight of the conservative term (the Lagrange multiplier's "
                                          "scale); None = by env and dataset (CQL_ALPHA: 1.0 on walker-run "
                                          "medium-expert, else 5.0)")
    online_cql_alpha: float = field(0.0, "online: weight of the conservative term (0 = plain SAC)")
    cql_num_actions: int = field(4, "sampled actions per state for each of uniform, pi(s) and pi(s') (the "
                                    "leaderboard's setting; the peers use 10, the speed table's CQL-SAC row)")
    cql_importance_sampling: bool = field(True, "weight sampled Q-values by their proposal densities (CQL(H))")
    cql_lagrange: bool = field(False, "tune the conservative weight by dual descent toward --cql-target-gap")
    cql_target_gap: float = field(5.0, "Lagrange: the conservative gap the dual variable aims for")
    offline_actor_lr: float = field(1e-4, "offline: actor learning rate (Adam); slower than the critic's")
    offline_backup_entropy: bool = field(False, "offline: subtract alpha * log pi in the TD target")
    offline_actor_bc_weight: float | None = field(None, "offline: add this times the squared distance of the "
                                                       "policy's mean action from the data's to the actor loss, its Q "
                                                       "term scaled to unit size (TD3+BC's balance; its alpha 2.5, the "
                                                       "distance summed over |A| = 6 dims, is 0.067 here); 0 = plain "
                                                       "CQL-SAC; None = by dataset type (ACTOR_BC_WEIGHT: 1.0 on suite "
                                                       "expert, by name or Minari id; else 0)", absent=0.0)
    cql_max_target_backup: bool = field(False, "offline: TD target from the best of --cql-num-actions policy samples "
                                               "at s' (CQL's max backup), not one sample (off: on walker-run expert "
                                               "its values overshoot past 100, reports/probes/)")
    offline_bc_steps: int = field(0, "offline: first updates whose actor loss is behaviour cloning, alpha * log pi - "
                                     "log pi(a_data), critics as usual (CQL's policy_eval_start; off: it hurt on "
                                     "walker-run expert, reports/probes/)")
    online_steps: int = field(0, "offline-to-online: env steps of online fine-tuning after the offline updates "
                                 "(action repeat 1, replay seeded with the dataset, --online-cql-alpha weight)")
    total_env_steps: int = field(1_000_000, "online: native env steps to train for", resume_safe=True)
    action_repeat: int = field(2, "online: native steps each action is held (2 halves the updates, as in TD-MPC)")
    num_envs: int = field(1, "online: envs stepped in lockstep with one batched policy call")
    steps_per_chunk: int = field(50, "online: agent steps between jitted update chunks (divides episode length)")
    utd_ratio: int = field(1, "online: gradient updates per agent step (update-to-data ratio)")
    learning_starts: int = field(5_000, "online: agent steps of uniform random actions before updates start")
    buffer_size: int = field(1_000_000, "online: replay buffer capacity in agent transitions")
    batch_size: int = field(256, "transitions per gradient update")
    hidden_dim: int = field(256, "width of every hidden layer of actor and critics")
    num_layers: int = field(2, "hidden layers of actor and critics")
    critic_layernorm: bool = field(True, "LayerNorm after each critic hidden layer (stabilises TD learning)")
    actor_lr: float = field(3e-4, "actor learning rate (Adam)")
    critic_lr: float = field(3e-4, "critic learning rate (Adam)")
    alpha_lr: float = field(3e-4, "entropy temperature learning rate (Adam)")
    gamma: float = field(0.99, "discount")
    tau: float = field(0.005, "Polyak rate of the target critics")
    init_alpha: float = field(0.1, "initial entropy temperature")
    target_entropy: float | None = field(None, "entropy target of the temperature; None = -action_dim")
    log_std_min: float = field(-5.0, "lower bound of the policy's log-std")
    log_std_max: float = field(2.0, "upper bound of the policy's log-std")
    eval_every: int = field(20_000, "env steps (online) or updates (offline) between evaluations", resume_safe=True)
    log_every: int = field(5_000, "online: env steps between metric logs", resume_safe=True)
    checkpoint_every: int = field(50_000, "env steps (online, at episode ends) or updates (offline) between "
                                          "checkpoints", resume_safe=True)
    snapshot_every: int = field(10_000, "online: env steps between small actor snapshots (generator candidates)",
                                resume_safe=True)

    def __post_init__(self) -> None:
        super().__post_init__()
        quality = datasets.suite_quality(self.dataset)
        self.resolve_default("offline_actor_bc_weight", ACTOR_BC_WEIGHT, quality)
        self.resolve_default("cql_alpha", CQL_ALPHA, (self.env, quality))
        self.resolve_default("updates", OFFLINE_UPDATES, (self.env, quality))
        if self.offline_actor_bc_weight < 0:
            raise ConfigError("--offline-actor-bc-weight must be >= 0")


# ----------------------------------------------------------------------------- networks


class MLP(nn.Module):
    hidden_dim: int
    num_layers: int
    out_dim: int
    layernorm: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for _ in range(self.num_layers):
            x = nn.Dense(self.hidden_dim)(x)
            if self.layernorm:
                x = nn.LayerNorm()(x)
            x = nn.relu(x)
        return nn.Dense(self.out_dim)(x)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy; returns the pre-tanh mean and a bounded log-std."""

    action_dim: int
    hidden_dim: int
    num_layers: int
    log_std_min: float
    log_std_max: float

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        out = MLP(self.hidden_dim, self.num_layers, 2 * self.action_dim)(obs)
        mean, raw_log_std = jnp.split(out, 2, axis=-1)
        # A smooth squash into [min, max] keeps gradients alive at the bounds (unlike clip).
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (jnp.tanh(raw_log_std) + 1)
        return mean, log_std


class DoubleCritic(nn.Module):
    """Two Q-networks evaluated as one vmapped ensemble: returns Q of shape [2, batch]."""

    hidden_dim: int
    num_layers: int
    layernorm: bool

    @nn.compact
    def __call__(self, obs: jax.Array, action: jax.Array) -> jax.Array:
        ensemble = nn.vmap(
            MLP, variable_axes={"params": 0}, split_rngs={"params": True}, in_axes=None, out_axes=0, axis_size=2
        )
        q = ensemble(self.hidden_dim, self.num_layers, 1, self.layernorm)(jnp.concatenate([obs, action], -1))
        return q[..., 0]


ACTION_CLIP = 1.0 - 1e-6  # dataset actions are clipped to this before their atanh


def tanh_gaussian_log_prob(mean: jax.Array, log_std: jax.Array, action: jax.Array) -> jax.Array:
    """log pi(a) of a given action (a dataset's) under the tanh-squashed Gaussian."""
    action = jnp.clip(action, -ACTION_CLIP, ACTION_CLIP)
    noise = (jnp.arctanh(action) - mean) / jnp.exp(log_std)
    gaussian_logp = (-0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    return gaussian_logp - jnp.log1p(-(action**2)).sum(-1)


def sample_tanh_gaussian(mean: jax.Array, log_std: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """An action a = tanh(u), u ~ N(mean, std), and its log-probability under the squash."""
    noise = jax.random.normal(key, mean.shape)
    pre_tanh = mean + jnp.exp(log_std) * noise
    gaussian_logp = (-0.5 * noise**2 - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
    # log|d tanh(u)/du| = 2 (log 2 - u - softplus(-2u)), the numerically stable form.
    log_det = (2 * (math.log(2.0) - pre_tanh - jax.nn.softplus(-2 * pre_tanh))).sum(-1)
    return jnp.tanh(pre_tanh), gaussian_logp - log_det


# ----------------------------------------------------------------------------- state


@flax.struct.dataclass
class SACState:
    actor: TrainState
    critic: TrainState
    target_critic_params: Any
    log_alpha: TrainState
    key: jax.Array
    updates: jax.Array
    # log of the conservative weight's dual variable (offline with --cql-lagrange only); None
    # leaves the pytree, so online checkpoints keep their layout.
    cql_log_alpha: TrainState | None = None


@flax.struct.dataclass
class Replay:
    """Ring buffer of agent transitions on the device; no terminal flag: DMC never ends early."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    next_obs: jax.Array
    size: jax.Array
    ptr: jax.Array

    @classmethod
    def create(cls, capacity: int, obs_dim: int, action_dim: int) -> Replay:
        zeros = partial(jnp.zeros, dtype=jnp.float32)
        return cls(zeros((capacity, obs_dim)), zeros((capacity, action_dim)), zeros((capacity,)),
                   zeros((capacity, obs_dim)), jnp.int32(0), jnp.int32(0))

    def add(self, obs: jax.Array, action: jax.Array, reward: jax.Array, next_obs: jax.Array) -> Replay:
        capacity = self.obs.shape[0]
        idx = (self.ptr + jnp.arange(obs.shape[0])) % capacity
        return self.replace(
            obs=self.obs.at[idx].set(obs), action=self.action.at[idx].set(action),
            reward=self.reward.at[idx].set(reward), next_obs=self.next_obs.at[idx].set(next_obs),
            size=jnp.minimum(self.size + obs.shape[0], capacity), ptr=(self.ptr + obs.shape[0]) % capacity,
        )

    def sample(self, key: jax.Array, batch_size: int) -> dict[str, jax.Array]:
        idx = jax.random.randint(key, (batch_size,), 0, self.size)
        return {"obs": self.obs[idx], "action": self.action[idx], "reward": self.reward[idx],
                "next_obs": self.next_obs[idx]}


def networks(config: Config, action_dim: int) -> tuple[Actor, DoubleCritic]:
    actor = Actor(action_dim, config.hidden_dim, config.num_layers, config.log_std_min, config.log_std_max)
    return actor, DoubleCritic(config.hidden_dim, config.num_layers, config.critic_layernorm)


def init_state(config: Config, obs_dim: int, action_dim: int, key: jax.Array, offline: bool = False) -> SACState:
    actor, critic = networks(config, action_dim)
    key, actor_key, critic_key = jax.random.split(key, 3)
    obs, action = jnp.zeros((1, obs_dim)), jnp.zeros((1, action_dim))
    actor_params = actor.init(actor_key, obs)
    critic_params = critic.init(critic_key, obs, action)

    def train_state(apply_fn, params, learning_rate: float) -> TrainState:
        # A strong int32 step: a weak-typed Python 0 would make the first update recompile.
        state = TrainState.create(apply_fn=apply_fn, params=params, tx=optax.adam(learning_rate))
        return state.replace(step=jnp.zeros((), jnp.int32))

    lagrange = offline and config.cql_lagrange
    return SACState(
        actor=train_state(actor.apply, actor_params, config.offline_actor_lr if offline else config.actor_lr),
        critic=train_state(critic.apply, critic_params, config.critic_lr),
        target_critic_params=jax.tree.map(jnp.copy, critic_params),  # own buffers: the state is donated
        log_alpha=train_state(None, {"log_alpha": jnp.log(jnp.float32(config.init_alpha))}, config.alpha_lr),
        key=key,
        updates=jnp.zeros((), jnp.int32),
        cql_log_alpha=train_state(None, {"log_alpha": jnp.float32(0.0)}, config.critic_lr) if lagrange else None,
    )


# ----------------------------------------------------------------------------- update


def per_state(x: jax.Array, n: int) -> jax.Array:
    """[B, d] -> [B, n, d]: a row per state for each of n sampled actions."""
    return jnp.broadcast_to(x[:, None], (x.shape[0], n, x.shape[-1]))


def conservative_gap(config: Config, critic_params: Any, state: SACState, batch: dict[str, jax.Array],
                     q_data: jax.Array, pi: tuple[jax.Array, jax.Array], next_pi: tuple[jax.Array, jax.Array],
                     key: jax.Array) -> jax.Array:
    """CQL(H)'s gap logsumexp_a Q(s, a) - Q(s, a_data), per critic and state: [2, batch].

    The logsumexp over all actions is estimated from N uniform actions and N actions of the
    current policy at s and at s' (`pi`, `next_pi`: its (mean, log_std) there, computed once
    per state, not once per sample); with importance sampling each sampled Q is divided by
    its proposal density (a log-space subtraction), as in the CQL paper's appendix.
    """
    n, (batch_size, action_dim) = config.cql_num_actions, batch["action"].shape
    uniform_key, pi_key, next_pi_key = jax.random.split(key, 3)
    repeat = partial(per_state, n=n)
    uniform_actions = jax.random.uniform(uniform_key, (batch_size, n, action_dim), minval=-1.0, maxval=1.0)
    pi_actions, pi_logp = sample_tanh_gaussian(*map(repeat, pi), pi_key)
    next_pi_actions, next_pi_logp = sample_tanh_gaussian(*map(repeat, next_pi), next_pi_key)
    # One critic call on all 3N sampled actions of every state: [2, B, 3N].
    sampled = jnp.concatenate([uniform_actions, pi_actions, next_pi_actions], axis=1)
    q_sampled = state.critic.apply_fn(critic_params, jnp.repeat(batch["obs"][:, None], 3 * n, axis=1), sampled)
    if config.cql_importance_sampling:
        log_density = jnp.concatenate(
            [jnp.full((batch_size, n), -action_dim * math.log(2.0)), pi_logp, next_pi_logp], axis=1)
        logsumexp = jax.nn.logsumexp(q_sampled - log_density, axis=-1) - math.log(3 * n)
    else:
        logsumexp = jax.nn.logsumexp(jnp.concatenate([q_sampled, q_data[..., None]], -1), axis=-1)
    return logsumexp - q_data


def update(config: Config, state: SACState, batch: dict[str, jax.Array], offline: bool = False
           ) -> tuple[SACState, dict[str, jax.Array]]:
    """One update: critics (TD + conservative term), then actor and temperature on the new
    critics, then the targets. `offline` selects the offline weight and backup settings."""
    action_dim = batch["action"].shape[-1]
    target_entropy = -action_dim if config.target_entropy is None else config.target_entropy
    cql_alpha = config.cql_alpha if offline else config.online_cql_alpha
    backup_entropy = config.offline_backup_entropy if offline else True
    key, next_key, pi_key, cql_key = jax.random.split(state.key, 4)
    alpha = jnp.exp(state.log_alpha.params["log_alpha"])

    # The current policy at s' (and, for the conservative term, at s): no gradient flows
    # into the actor here, and each is one forward pass shared by every sample drawn from it.
    next_pi = jax.lax.stop_gradient(state.actor.apply_fn(state.actor.params, batch["next_obs"]))
    if offline and config.cql_max_target_backup:
        # One sample of a broad policy lands off the sharp peak CQL carves around the data's
        # actions, so each backup falls short of the peak and the shortfall compounds over the
        # horizon; the best of N samples per critic (then the smaller critic) tracks the peak.
        repeat = partial(per_state, n=config.cql_num_actions)
        next_actions, next_logps = sample_tanh_gaussian(*map(repeat, next_pi), next_key)  # [B, N, A], [B, N]
        q_all = state.critic.apply_fn(state.target_critic_params, repeat(batch["next_obs"]), next_actions)
        next_q = q_all.max(-1).min(0)  # [2, B, N] -> [B]
        next_logp = next_logps.mean(-1)  # for the entropy backup: the policy's entropy estimate at s'
    else:
        next_action, next_logp = sample_tanh_gaussian(*next_pi, next_key)
        next_q = state.critic.apply_fn(state.target_critic_params, batch["next_obs"], next_action).min(0)
    if backup_entropy:
        next_q = next_q - alpha * next_logp
    target_q = batch["reward"] + config.gamma * next_q  # DMC never terminates: always bootstrap

    if state.cql_log_alpha is not None:
        cql_weight = cql_alpha * jnp.clip(jnp.exp(state.cql_log_alpha.params["log_alpha"]), 0.0, 1e6)
    else:
        cql_weight = jnp.float32(cql_alpha)

    if cql_alpha != 0:
        pi = jax.lax.stop_gradient(state.actor.apply_fn(state.actor.params, batch["obs"]))

    def critic_loss_fn(params):
        q = state.critic.apply_fn(params, batch["obs"], batch["action"])
        td_loss = ((q - target_q) ** 2).mean(1).sum()
        if cql_alpha == 0:
            return td_loss, (q, td_loss, jnp.zeros(()))
        gap = conservative_gap(config, params, state, batch, q, pi, next_pi, cql_key).mean(1)  # [2]
        target_gap = config.cql_target_gap if state.cql_log_alpha is not None else 0.0
        return td_loss + (cql_weight * (gap - target_gap)).sum(), (q, td_loss, gap.mean())

    (critic_loss, (q, td_loss, gap)), critic_grads = jax.value_and_grad(critic_loss_fn, has_aux=True)(
        state.critic.params)
    critic = state.critic.apply_gradients(grads=critic_grads)

    bc_phase = offline and config.offline_bc_steps > 0

    def actor_loss_fn(params):
        mean, log_std = state.actor.apply_fn(params, batch["obs"])
        action, logp = sample_tanh_gaussian(mean, log_std, pi_key)
        q_pi = critic.apply_fn(critic.params, batch["obs"], action).min(0)
        loss = (alpha * logp - q_pi).mean()
        if offline and config.offline_actor_bc_weight > 0:
            # TD3+BC's balance: the SAC loss in units of Q's mean size, so the weight reads the
            # same on any reward scale (never amplified: early on Q is near 0; the temperature
            # still holds the entropy target). The pull reaches states where Q barely separates
            # actions, such as the drop every walker episode starts with.
            scale = jnp.maximum(jax.lax.stop_gradient(jnp.abs(q_pi).mean()), 1.0)
            distance = ((jnp.tanh(mean) - batch["action"]) ** 2).sum(-1).mean()
            loss = loss / scale + config.offline_actor_bc_weight * distance
        if bc_phase:
            # Warm start: the actor first imitates the data, so the critics' pi-sampled terms
            # probe actions near it rather than a random policy's.
            bc_loss = (alpha * logp - tanh_gaussian_log_prob(mean, log_std, batch["action"])).mean()
            loss = jnp.where(state.updates < config.offline_bc_steps, bc_loss, loss)
        return loss, (logp, mean)

    (actor_loss, (logp, pi_mean)), actor_grads = jax.value_and_grad(actor_loss_fn, has_aux=True)(
        state.actor.params)
    actor = state.actor.apply_gradients(grads=actor_grads)

    entropy = -jax.lax.stop_gradient(logp).mean()
    # d/dlog_alpha of -log_alpha * (target_entropy - entropy): raises alpha while entropy is too low.
    alpha_grad = entropy - target_entropy
    log_alpha = state.log_alpha.apply_gradients(grads={"log_alpha": alpha_grad})

    cql_log_alpha = state.cql_log_alpha
    if cql_log_alpha is not None:
        # Dual ascent on the weight: it grows while the gap exceeds its target, shrinks below.
        dual_grad = -cql_alpha * jnp.exp(cql_log_alpha.params["log_alpha"]) * (gap - config.cql_target_gap)
        cql_log_alpha = cql_log_alpha.apply_gradients(grads={"log_alpha": dual_grad})

    target = optax.incremental_update(critic.params, state.target_critic_params, config.tau)
    metrics = {"critic_loss": critic_loss, "td_loss": td_loss, "actor_loss": actor_loss, "alpha": alpha,
               "entropy": entropy, "q_mean": q.mean(), "q_max": q.max(), "target_q_mean": target_q.mean(),
               # How far the evaluation policy's action is from the batch's: offline, the distance
               # from the data; online, from the replayed (older) behaviour.
               "action_mse": ((jnp.tanh(pi_mean) - batch["action"]) ** 2).mean()}
    if cql_alpha != 0:
        metrics.update({"cql_gap": gap, "cql_weight": cql_weight})
    new_state = SACState(actor, critic, target, log_alpha, key, state.updates + 1, cql_log_alpha)
    return new_state, metrics


def make_train_chunk(config: Config, num_updates: int):
    """Jitted: add a chunk of transitions to the buffer, then `num_updates` scanned updates."""

    def train_chunk(state: SACState, replay: Replay, transitions: dict[str, jax.Array]):
        replay = replay.add(transitions["obs"], transitions["action"], transitions["reward"], transitions["next_obs"])

        def one_update(state: SACState, _):
            key, sample_key = jax.random.split(state.key)
            state, metrics = update(config, state.replace(key=key), replay.sample(sample_key, config.batch_size))
            return state, metrics

        state, metrics = jax.lax.scan(one_update, state, length=num_updates)
        return state, replay, metrics

    return jax.jit(train_chunk, donate_argnums=(0, 1))


@jax.jit
def _add_only(replay: Replay, transitions: dict[str, jax.Array]) -> Replay:
    return replay.add(transitions["obs"], transitions["action"], transitions["reward"], transitions["next_obs"])


def sample_action(actor_params: Any, obs: jax.Array, key: jax.Array, actor: Actor) -> jax.Array:
    mean, log_std = actor.apply(actor_params, obs)
    return sample_tanh_gaussian(mean, log_std, key)[0]


def deterministic_action(actor_params: Any, obs: jax.Array, key: jax.Array, actor: Actor) -> jax.Array:
    """The evaluation policy: the mean action tanh(mean)."""
    return jnp.tanh(actor.apply(actor_params, obs)[0])


def load_policy(directory: Path, config: Config) -> tuple[envs.evaluation.PolicyFn, Any, int]:
    """(act_fn, params, action_repeat) of a run's latest checkpoint, for `evaluate.py`."""
    env = envs.make(config.env)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    actor, _ = networks(config, action_dim)
    template = actor.init(jax.random.PRNGKey(0), jnp.zeros((1, obs_dim)))
    _, arrays = load_checkpoint(Path(directory) / "checkpoint.npz")
    params = restore_tree(template, arrays, "state.actor.params")
    action_repeat = config.action_repeat if config.online else 1
    if "norm.obs_mean" not in arrays:  # plain online SAC acts on raw observations
        return partial(deterministic_action, actor=actor), params, action_repeat
    norm = (jnp.asarray(arrays["norm.obs_mean"]), jnp.asarray(arrays["norm.obs_std"]))
    return partial(normalized_action, actor=actor), (params, *norm), action_repeat


# ----------------------------------------------------------------------------- train loop


def _check_online_config(config: Config, episode_length: int) -> None:
    agent_episode = episode_length // config.action_repeat
    if episode_length % config.action_repeat or agent_episode % config.steps_per_chunk:
        raise ConfigError(
            f"--steps-per-chunk {config.steps_per_chunk} must divide the episode's {agent_episode} agent steps "
            f"(episode length {episode_length} / action repeat {config.action_repeat}) so checkpoints fall "
            f"on episode boundaries"
        )


def train(config: Config) -> list[dict]:
    """Train per `config`; returns the final evaluation of each seed."""
    if config.online:
        if config.seeds:
            raise ConfigError("--seeds trains offline seeds together; online runs take one --seed each")
        return [train_online(config)]
    if config.online_steps and config.seeds:
        raise ConfigError("--online-steps fine-tunes one seed at a time; drop --seeds")
    check_chunking(config.updates_per_chunk, updates=config.updates, eval_every=config.eval_every,
                   checkpoint_every=config.checkpoint_every)
    data = datasets.load(config.env, config.dataset)
    finals = train_offline(config, data)
    return [fine_tune(config, data)] if config.online_steps else finals


def normalized_transitions(data) -> dict[str, jax.Array]:
    """The dataset's transitions with observations normalized by its own statistics: what
    the offline agent trains on and what seeds the replay buffer when it fine-tunes."""
    normalize = lambda x: (x - data.obs_mean) / data.obs_std
    return {"obs": normalize(data.obs), "action": data.action, "reward": data.reward,
            "next_obs": normalize(data.next_obs)}


@dataclasses.dataclass(frozen=True)
class FineTuneStart:
    """Where offline-to-online fine-tuning starts: the offline agent and its dataset."""

    state: SACState
    data: dict[str, jax.Array]  # normalized observations, like the agent was trained on
    obs_mean: np.ndarray
    obs_std: np.ndarray
    label: str
    references: tuple[float, float]
    dataset_sha256: str | None  # the dataset build's content hash (datasets.fingerprint)


def fine_tune(config: Config, data) -> dict:
    """Continue the finished offline run of `config` on `data` in the env (its own run
    directory, `<dataset>-to-online`), the replay buffer seeded with the dataset."""
    label = datasets.label(config.dataset)
    obs_dim, action_dim = data.obs.shape[-1], data.action.shape[-1]
    template = init_state(config, obs_dim, action_dim, jax.random.PRNGKey(config.seed), offline=True)
    _, arrays = load_checkpoint(run_dir("cqlsac", config, label) / "checkpoint.npz")
    start = FineTuneStart(
        state=restore_tree(template, arrays, "state"),
        data=normalized_transitions(data),
        obs_mean=np.asarray(data.obs_mean), obs_std=np.asarray(data.obs_std), label=f"{label}-to-online",
        references=datasets.references(data), dataset_sha256=datasets.fingerprint(data),
    )
    online_config = dataclasses.replace(config, online=True, total_env_steps=config.online_steps, action_repeat=1,
                                        learning_starts=0, online_steps=0,
                                        buffer_size=max(config.buffer_size, data.size + config.online_steps))
    return train_online(online_config, start)


def make_offline_chunk(config: Config):
    """`updates_per_chunk` offline updates on batches sampled from the device dataset (pure;
    the driver jits it, vmapped over seeds when there are several)."""

    def train_chunk(state: SACState, data: dict[str, jax.Array]):
        def one_update(state: SACState, _):
            key, sample_key = jax.random.split(state.key)
            idx = jax.random.randint(sample_key, (config.batch_size,), 0, data["obs"].shape[0])
            return update(config, state.replace(key=key), {k: v[idx] for k, v in data.items()}, offline=True)

        return jax.lax.scan(one_update, state, length=config.updates_per_chunk)

    return train_chunk


def normalized_action(params: tuple, obs: jax.Array, key: jax.Array, actor: Actor) -> jax.Array:
    """The offline evaluation policy: tanh(mean) on observations normalized like the data."""
    actor_params, obs_mean, obs_std = params
    return deterministic_action(actor_params, (obs - obs_mean) / obs_std, key, actor)


def train_offline(config: Config, data) -> list[dict]:
    references = datasets.references(data)
    obs_dim, action_dim = data.obs.shape[-1], data.action.shape[-1]
    act_fn = partial(normalized_action, actor=networks(config, action_dim)[0])

    def evaluate(state: SACState, episodes: int, seed: int) -> envs.EvalResult:
        return envs.evaluate(config.env, act_fn, (state.actor.params, data.obs_mean, data.obs_std), episodes,
                             seed=seed, references=references)

    return train_offline_seeds(
        "cqlsac", config, datasets.label(config.dataset), normalized_transitions(data),
        init_state=lambda seed: init_state(config, obs_dim, action_dim, jax.random.PRNGKey(seed), offline=True),
        train_chunk=make_offline_chunk(config), evaluate=evaluate,
        extra_arrays={"norm.obs_mean": np.asarray(data.obs_mean), "norm.obs_std": np.asarray(data.obs_std)},
        updates=config.updates, updates_per_chunk=config.updates_per_chunk, eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every, dataset_sha256=datasets.fingerprint(data),
    )


def train_online(config: Config, start: FineTuneStart | None = None) -> dict:
    train_envs = [envs.make(config.env) for _ in range(config.num_envs)]
    obs_dim = train_envs[0].observation_space.shape[0]
    action_dim = train_envs[0].action_space.shape[0]
    _check_online_config(config, train_envs[0].max_episode_steps)
    references = start.references if start else envs.reference_scores(config.env)
    # Fine-tuning acts on observations normalized like its dataset; plain SAC on raw ones.
    obs_mean = start.obs_mean if start else np.zeros(obs_dim, np.float32)
    obs_std = start.obs_std if start else np.ones(obs_dim, np.float32)
    actor, _ = networks(config, action_dim)
    act = jax.jit(partial(sample_action, actor=actor))
    policy = partial(normalized_action, actor=actor)
    updates_per_chunk = config.steps_per_chunk * config.num_envs * config.utd_ratio
    train_chunk = make_train_chunk(config, updates_per_chunk)
    env_steps_per_chunk = config.steps_per_chunk * config.num_envs * config.action_repeat

    run = Run("cqlsac", config, dataset=start.label if start else "online", total_steps=config.total_env_steps,
              step_unit="env-step", dataset_sha256=start.dataset_sha256 if start else None)
    state = start.state if start else init_state(config, obs_dim, action_dim, jax.random.PRNGKey(config.seed))
    replay = Replay.create(config.buffer_size, obs_dim, action_dim)
    if start:
        replay = _add_only(replay, start.data)
    env_steps, episodes = 0, 0
    restored = run.restore()
    if restored is not None:
        env_steps, arrays = restored
        state = restore_tree(state, arrays, "state")
        replay = _restore_replay(replay, arrays)
        episodes = int(arrays["episodes"])
    run.start(env_steps)

    def evaluate(num_episodes: int) -> envs.EvalResult:
        return envs.evaluate(config.env, policy, (state.actor.params, obs_mean, obs_std), num_episodes,
                             seed=config.seed, action_repeat=config.action_repeat, references=references)

    obs = np.stack([env.reset(seed=_train_seed(config.seed, episodes + i))[0] for i, env in enumerate(train_envs)])
    episodes += config.num_envs
    episode_returns = np.zeros(config.num_envs)
    finished_returns: list[float] = []
    last_log, last_ckpt = env_steps, env_steps
    timer = {"env": 0.0, "update": 0.0, "env_steps": 0, "updates": 0}
    try:
        while env_steps < config.total_env_steps:
            t0 = time.perf_counter()
            chunk = {k: np.zeros((config.steps_per_chunk, config.num_envs, d), np.float32)
                     for k, d in (("obs", obs_dim), ("action", action_dim), ("next_obs", obs_dim))}
            chunk["reward"] = np.zeros((config.steps_per_chunk, config.num_envs), np.float32)
            agent_steps = env_steps // config.action_repeat
            warmup = agent_steps < config.learning_starts
            rng = np.random.default_rng([config.seed, env_steps])  # per chunk: identical after a resume
            for t in range(config.steps_per_chunk):
                agent_obs = (obs - obs_mean) / obs_std
                if warmup:
                    actions = rng.uniform(-1, 1, (config.num_envs, action_dim)).astype(np.float32)
                else:
                    key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 10_000), env_steps + t)
                    actions = np.asarray(act(state.actor.params, jnp.asarray(agent_obs), key))
                chunk["obs"][t], chunk["action"][t] = agent_obs, actions
                for i, env in enumerate(train_envs):
                    reward, done = 0.0, False
                    for _ in range(config.action_repeat):
                        next_obs, r, terminated, truncated, _ = env.step(actions[i])
                        reward += r
                        if terminated or truncated:
                            done = True
                            break
                    chunk["reward"][t, i], chunk["next_obs"][t, i] = reward, (next_obs - obs_mean) / obs_std
                    episode_returns[i] += reward
                    if done:  # truncation: next_obs above is the episode's last observation
                        finished_returns.append(episode_returns[i])
                        episode_returns[i] = 0.0
                        next_obs, _ = env.reset(seed=_train_seed(config.seed, episodes))
                        episodes += 1
                    obs[i] = next_obs
            env_steps += env_steps_per_chunk
            t1 = time.perf_counter()
            flat = {k: jnp.asarray(v.reshape(-1, *v.shape[2:])) for k, v in chunk.items()}
            if warmup:
                replay = _add_only(replay, flat)
                metrics = None
            else:
                state, replay, metrics = train_chunk(state, replay, flat)
                metrics = check_finite(jax.device_get(metrics), int(state.updates) - updates_per_chunk)
                timer["updates"] += updates_per_chunk
            t2 = time.perf_counter()
            timer["env"] += t1 - t0
            timer["update"] += t2 - t1
            timer["env_steps"] += env_steps_per_chunk

            if env_steps - last_log >= config.log_every or env_steps >= config.total_env_steps:
                record = {"train/episode_return": np.mean(finished_returns) if finished_returns else float("nan"),
                          "speed/env_steps_per_s": timer["env_steps"] / (timer["env"] + timer["update"]),
                          "speed/updates_per_s": timer["updates"] / max(timer["update"], 1e-9),
                          "updates": int(state.updates)}
                if metrics is not None:
                    record.update({f"train/{k}": float(v.mean()) for k, v in metrics.items()})
                run.log(env_steps, record)
                finished_returns.clear()
                timer = {"env": 0.0, "update": 0.0, "env_steps": 0, "updates": 0}
                last_log = env_steps
            if env_steps % config.eval_every < env_steps_per_chunk and env_steps < config.total_env_steps:
                result = evaluate(config.eval_episodes)
                run.log(env_steps, {"eval/return": result.mean, "eval/return_std": result.std,
                                    "eval/normalized_score": result.normalized_score})
            at_episode_start = (env_steps // config.num_envs) % train_envs[0].max_episode_steps == 0
            if at_episode_start and (env_steps - last_ckpt >= config.checkpoint_every
                                     or env_steps >= config.total_env_steps):
                # Envs were just reset, so resuming here replays exactly the same future.
                norm = {"norm.obs_mean": obs_mean, "norm.obs_std": obs_std} if start else {}
                run.save(env_steps, {**flatten_tree(state, "state"), **_replay_arrays(replay),
                                     "episodes": np.int64(episodes - config.num_envs), **norm})
                last_ckpt = env_steps
            if env_steps % config.snapshot_every < env_steps_per_chunk:
                # Small actor snapshots along the way: the dataset builder picks its medium
                # generator (and medium-replay cut-off) among them.
                run.save_snapshot(env_steps, flatten_tree(state.actor.params, "actor"))
            run.advance(env_steps)
        result = evaluate(config.final_eval_episodes)
    except BaseException:
        run.close()
        raise
    final = {**result.as_dict(), "env_steps": env_steps, "updates": int(state.updates)}
    run.log(env_steps, {"eval/return": result.mean, "eval/return_std": result.std,
                        "eval/normalized_score": result.normalized_score, "final": True})
    run.finish(final)
    return final


def _train_seed(seed: int, episode: int) -> int:
    # Training episodes use seeds below 2e8 (seed < 200, < 1e6 episodes); dataset builds draw from
    # [1e9, 2e9) and evaluation from 2e9 up (envs.evaluation.EVAL_SEED_BASE): the three never meet.
    return seed * 1_000_000 + episode


def _replay_arrays(replay: Replay) -> dict[str, np.ndarray]:
    size = int(replay.size)  # only the filled rows: an empty 1M buffer would cost 220 MB
    rows = {k: np.asarray(getattr(replay, k)[:size]) for k in ("obs", "action", "reward", "next_obs")}
    return {**{f"replay.{k}": v for k, v in rows.items()}, "replay.size": np.int64(size),
            "replay.ptr": np.int64(int(replay.ptr))}


def _restore_replay(replay: Replay, arrays: dict[str, np.ndarray]) -> Replay:
    size = int(arrays["replay.size"])
    filled = {k: getattr(replay, k).at[:size].set(arrays[f"replay.{k}"]) for k in ("obs", "action", "reward", "next_obs")}
    return replay.replace(**filled, size=jnp.int32(size), ptr=jnp.int32(int(arrays["replay.ptr"])))
