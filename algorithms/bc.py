"""Behaviour cloning, in one file: config, network, losses, update and train loop.

    python train.py bc --env walker-walk --dataset expert
    python train.py bc --env walker-run --dataset medium --head gaussian

Two heads: `deterministic` regresses tanh(mean) onto the dataset action (MSE); `gaussian`
maximises the tanh-Gaussian log-likelihood of the dataset action (clipped inside (-1, 1)
before its atanh). Observations are normalized with the loader's statistics. The dataset
lives on the device; one jitted `lax.scan` runs `updates_per_chunk` updates at a time.
"""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax
from flax.training.train_state import TrainState

import datasets
import envs
from algorithms.common import RunConfig, check_chunking, field, load_checkpoint, restore_tree, train_offline_seeds

ACTION_CLIP = 1.0 - 1e-6  # dataset actions are clipped to this before any atanh


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    dataset: str = field("expert", "a suite dataset (random, medium, medium-replay, expert, medium-expert), "
                                   "a Minari id or a .npz/.hdf5 file")
    head: str = field("deterministic", "policy head: MSE on the mean action, or tanh-Gaussian likelihood",
                      choices=("deterministic", "gaussian"))
    updates: int = field(20_000, "gradient updates (the leaderboard's budget: converged by 10k on walker-walk, "
                                 "reports/curves/)", resume_safe=True)
    updates_per_chunk: int = field(1_000, "updates per jitted lax.scan chunk (Python runs between chunks)")
    batch_size: int = field(256, "transitions per update")
    hidden_dim: int = field(256, "width of each hidden layer")
    num_layers: int = field(2, "hidden layers")
    learning_rate: float = field(3e-4, "Adam learning rate")
    log_std_min: float = field(-5.0, "gaussian head: lower bound of the log-std")
    log_std_max: float = field(2.0, "gaussian head: upper bound of the log-std")
    eval_every: int = field(10_000, "updates between periodic evaluations", resume_safe=True)
    checkpoint_every: int = field(10_000, "updates between checkpoints", resume_safe=True)


class Policy(nn.Module):
    """MLP on normalized observations -> (pre-tanh mean, log-std)."""

    action_dim: int
    hidden_dim: int
    num_layers: int
    log_std_min: float
    log_std_max: float

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[jax.Array, jax.Array]:
        x = obs
        for _ in range(self.num_layers):
            x = nn.relu(nn.Dense(self.hidden_dim)(x))
        mean, raw_log_std = jnp.split(nn.Dense(2 * self.action_dim)(x), 2, axis=-1)
        log_std = self.log_std_min + 0.5 * (self.log_std_max - self.log_std_min) * (jnp.tanh(raw_log_std) + 1)
        return mean, log_std


@flax.struct.dataclass
class BCState:
    policy: TrainState
    obs_mean: jax.Array
    obs_std: jax.Array
    key: jax.Array
    updates: jax.Array


def make_policy(config: Config, action_dim: int) -> Policy:
    return Policy(action_dim, config.hidden_dim, config.num_layers, config.log_std_min, config.log_std_max)


def init_state(config: Config, obs_mean: jax.Array, obs_std: jax.Array, action_dim: int, key: jax.Array) -> BCState:
    policy = make_policy(config, action_dim)
    key, init_key = jax.random.split(key)
    params = policy.init(init_key, jnp.zeros((1, obs_mean.shape[0])))
    train_state = TrainState.create(apply_fn=policy.apply, params=params, tx=optax.adam(config.learning_rate))
    return BCState(train_state.replace(step=jnp.zeros((), jnp.int32)), jnp.asarray(obs_mean), jnp.asarray(obs_std),
                   key, jnp.zeros((), jnp.int32))


def loss_fn(config: Config, params: Any, apply_fn, obs: jax.Array, action: jax.Array) -> tuple[jax.Array, dict]:
    mean, log_std = apply_fn(params, obs)
    mse = ((jnp.tanh(mean) - action) ** 2).sum(-1).mean()
    if config.head == "deterministic":
        return mse, {"mse": mse}
    action = jnp.clip(action, -ACTION_CLIP, ACTION_CLIP)
    pre_tanh = jnp.arctanh(action)
    gaussian_logp = (-0.5 * ((pre_tanh - mean) / jnp.exp(log_std)) ** 2 - log_std - 0.5 * math.log(2 * math.pi))
    log_det = jnp.log1p(-(action**2)).sum(-1)  # constant in the params; reported, not trained on
    log_likelihood = gaussian_logp.sum(-1) - log_det
    return -gaussian_logp.sum(-1).mean(), {"mse": mse, "log_likelihood": log_likelihood.mean()}


def update(config: Config, state: BCState, batch: dict[str, jax.Array]) -> tuple[BCState, dict[str, jax.Array]]:
    obs = (batch["obs"] - state.obs_mean) / state.obs_std
    (loss, metrics), grads = jax.value_and_grad(
        lambda p: loss_fn(config, p, state.policy.apply_fn, obs, batch["action"]), has_aux=True
    )(state.policy.params)
    return state.replace(policy=state.policy.apply_gradients(grads=grads), updates=state.updates + 1), \
        {"loss": loss, **metrics}


def make_train_chunk(config: Config):
    """`updates_per_chunk` updates on batches sampled from the on-device dataset (pure; the
    driver jits it, vmapped over seeds when there are several)."""

    def train_chunk(state: BCState, data: dict[str, jax.Array]):
        def one_update(state: BCState, _):
            key, sample_key = jax.random.split(state.key)
            idx = jax.random.randint(sample_key, (config.batch_size,), 0, data["obs"].shape[0])
            return update(config, state.replace(key=key), {k: v[idx] for k, v in data.items()})

        return jax.lax.scan(one_update, state, length=config.updates_per_chunk)

    return train_chunk


def act(params: tuple, obs: jax.Array, key: jax.Array, policy: Policy) -> jax.Array:
    """The evaluation policy: tanh of the mean on normalized observations."""
    net_params, obs_mean, obs_std = params
    return jnp.tanh(policy.apply(net_params, (obs - obs_mean) / obs_std)[0])


def load_policy(run_dir: Path, config: Config):
    """(act_fn, params, action_repeat) of a run's latest checkpoint, for `evaluate.py`."""
    env = envs.make(config.env)
    obs_dim, action_dim = env.observation_space.shape[0], env.action_space.shape[0]
    template = init_state(config, jnp.zeros(obs_dim), jnp.ones(obs_dim), action_dim, jax.random.PRNGKey(0))
    _, arrays = load_checkpoint(Path(run_dir) / "checkpoint.npz")
    state = restore_tree(template, arrays, "state")
    policy = make_policy(config, action_dim)
    return partial(act, policy=policy), (state.policy.params, state.obs_mean, state.obs_std), 1


def train(config: Config) -> list[dict]:
    """Train per `config`; returns the final evaluation of each seed."""
    check_chunking(config.updates_per_chunk, updates=config.updates, eval_every=config.eval_every,
                   checkpoint_every=config.checkpoint_every)
    data = datasets.load(config.env, config.dataset)
    references = datasets.references(data)
    action_dim = data.action.shape[-1]
    act_fn = partial(act, policy=make_policy(config, action_dim))

    def evaluate(state: BCState, episodes: int, seed: int) -> envs.EvalResult:
        return envs.evaluate(config.env, act_fn, (state.policy.params, state.obs_mean, state.obs_std), episodes,
                             seed=seed, references=references)

    return train_offline_seeds(
        "bc", config, datasets.label(config.dataset), {"obs": data.obs, "action": data.action},
        init_state=lambda seed: init_state(config, data.obs_mean, data.obs_std, action_dim, jax.random.PRNGKey(seed)),
        train_chunk=make_train_chunk(config), evaluate=evaluate, extra_arrays={},
        updates=config.updates, updates_per_chunk=config.updates_per_chunk, eval_every=config.eval_every,
        checkpoint_every=config.checkpoint_every, dataset_sha256=datasets.fingerprint(data),
    )
