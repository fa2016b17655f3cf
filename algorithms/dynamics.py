"""Learned dynamics: a probabilistic MLP ensemble (PETS / MBPO / MOPO), in one file: config,
model, loss, jitted training with holdout early stopping, diagnostics, save and reuse.

    python train.py dynamics --env walker-walk --dataset medium

Each of `ensemble_size` members maps the normalized (obs, action) to a diagonal Gaussian over
the normalized (next_obs - obs, reward). The log-variance is soft-clamped between learnable
bounds (`max_logvar` / `min_logvar`, pulled together by a small penalty, as in PETS and MBPO)
so the NLL can neither blow up nor collapse on dimensions the data pins down. Episodes, not
rows, are held out (rows of one episode are strongly correlated, a row split would flatter the
holdout error); training stops once no member's holdout MSE improved by 1% for `patience`
chunks, each member keeps its best parameters, and the `num_elites` best members on the
holdout form the elite set every consumer samples from. Members are one vmapped ensemble
(weights with a leading member axis); one jitted `lax.scan` runs `updates_per_chunk` updates.

A model is trained once per dataset and reused: `model_for(...)` loads `--model-from RUN_DIR`
or the dataset's default dynamics run (`runs/dynamics/<env>/<dataset>/seed0`), training it
there first if it does not exist yet. Diagnostics (logged and printed): one-step holdout MSE
and open-loop error at horizons 1, 5, 10, 25 on held-out episodes (the model fed its own
predictions with the real actions), in units of the dataset's observation std.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import sys
from functools import partial
from pathlib import Path
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from algorithms.common import (
    ConfigError,
    Run,
    RunConfig,
    config_differences,
    field,
    flatten_tree,
    load_checkpoint,
    restore_tree,
    run_dir,
)

HORIZONS: tuple[int, ...] = (1, 5, 10, 25)
# u on the model's own data is measured on a fixed sample of its transitions, at these percentiles.
DATA_SAMPLE: int = 10_000
DATA_UNCERTAINTY_PERCENTILES: tuple[int, ...] = (5, 50, 95)


@dataclasses.dataclass(frozen=True)
class Config(RunConfig):
    dataset: str = field("medium", "a suite dataset (random, medium, medium-replay, expert, medium-expert), "
                                   "a Minari id or a .npz/.hdf5 file")
    ensemble_size: int = field(7, "ensemble members trained in parallel (vmapped)")
    num_elites: int = field(5, "members with the lowest holdout MSE that predictions sample from")
    hidden_dim: int = field(200, "width of each hidden layer")
    num_layers: int = field(4, "hidden layers (swish activations)")
    learning_rate: float = field(1e-3, "Adam learning rate")
    weight_decay: float = field(2.5e-5, "decoupled weight decay on the weight matrices (not biases, not logvar bounds)")
    logvar_bound_weight: float = field(0.01, "weight of the penalty max_logvar - min_logvar that tightens the bounds")
    batch_size: int = field(256, "transitions per member per update (each member draws its own batch)")
    holdout_ratio: float = field(0.1, "share of episodes held out for early stopping, elites and diagnostics")
    updates_per_chunk: int = field(1_000, "updates per jitted lax.scan chunk; the holdout is scored after each")
    max_updates: int = field(20_000, "upper bound on updates; early stopping usually ends training sooner")
    patience: int = field(5, "chunks without a 1% holdout improvement of any member before training stops")
    open_loop_starts: int = field(256, "held-out start states of the open-loop multi-step error")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.num_elites <= self.ensemble_size:
            raise ConfigError(f"--num-elites must be in [1, --ensemble-size={self.ensemble_size}]")
        if not 0.0 < self.holdout_ratio < 1.0:
            raise ConfigError("--holdout-ratio must be in (0, 1)")


# ----------------------------------------------------------------------------- model


@flax.struct.dataclass
class Model:
    """A trained ensemble with its normalization; a pytree, so it passes through jit/vmap.
    Inputs are (obs, action) normalized by `in_mean`/`in_std`; outputs the normalized
    (next_obs - obs, reward), de-normalized by `out_mean`/`out_std`."""

    params: dict  # layers: [{"w": [E, in, out], "b": [E, out]}], max_logvar / min_logvar: [E, out]
    in_mean: jax.Array
    in_std: jax.Array
    out_mean: jax.Array
    out_std: jax.Array
    elites: jax.Array  # [num_elites] int32, member indices

    @property
    def obs_dim(self) -> int:
        return self.out_mean.shape[-1] - 1


def init_params(config: Config, obs_dim: int, action_dim: int, key: jax.Array) -> dict:
    sizes = [obs_dim + action_dim] + [config.hidden_dim] * config.num_layers + [2 * (obs_dim + 1)]
    layers = []
    for fan_in, fan_out, k in zip(sizes[:-1], sizes[1:], jax.random.split(key, len(sizes) - 1)):
        # Truncated-normal init scaled by fan-in, as in the MBPO/PETS ensembles.
        w = jax.random.truncated_normal(k, -2.0, 2.0, (config.ensemble_size, fan_in, fan_out)) / math.sqrt(fan_in)
        layers.append({"w": w, "b": jnp.zeros((config.ensemble_size, fan_out))})
    out = obs_dim + 1
    return {"layers": layers, "max_logvar": jnp.full((config.ensemble_size, out), 0.5),
            "min_logvar": jnp.full((config.ensemble_size, out), -10.0)}


def init_model(config: Config, obs_dim: int, action_dim: int, key: jax.Array) -> Model:
    return Model(params=init_params(config, obs_dim, action_dim, key),
                 in_mean=jnp.zeros(obs_dim + action_dim), in_std=jnp.ones(obs_dim + action_dim),
                 out_mean=jnp.zeros(obs_dim + 1), out_std=jnp.ones(obs_dim + 1),
                 elites=jnp.arange(config.num_elites, dtype=jnp.int32))


def forward(params: dict, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Normalized inputs [B, in] (shared) or [E, B, in] (per member) -> normalized mean and
    soft-clamped log-variance, each [E, B, out]."""
    h = x
    for i, layer in enumerate(params["layers"]):
        h = jnp.einsum("bi,eio->ebo" if h.ndim == 2 else "ebi,eio->ebo", h, layer["w"]) + layer["b"][:, None]
        if i < len(params["layers"]) - 1:
            h = jax.nn.swish(h)
    mean, logvar = jnp.split(h, 2, axis=-1)
    max_logvar, min_logvar = params["max_logvar"][:, None], params["min_logvar"][:, None]
    # Smooth bounds (softplus) keep gradients flowing at the edges, unlike a hard clip.
    logvar = max_logvar - jax.nn.softplus(max_logvar - logvar)
    logvar = min_logvar + jax.nn.softplus(logvar - min_logvar)
    return mean, logvar


def elite_params(model: Model) -> dict:
    return jax.tree.map(lambda p: p[model.elites], model.params)


def predict(model: Model, obs: jax.Array, action: jax.Array, elites_only: bool = True
            ) -> tuple[jax.Array, jax.Array]:
    """Per-member Gaussian over (next_obs, reward) in raw units: mean and std, each
    [members, B, obs_dim + 1] (next observation in [..., :obs_dim], reward in [..., -1])."""
    x = (jnp.concatenate([obs, action], -1) - model.in_mean) / model.in_std
    mean, logvar = forward(elite_params(model) if elites_only else model.params, x)
    mean = mean * model.out_std + model.out_mean
    std = jnp.exp(0.5 * logvar) * model.out_std
    return mean.at[..., :-1].add(obs), std


def step(model: Model, obs: jax.Array, action: jax.Array, key: jax.Array, deterministic: bool = False
         ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One model step for a batch: (next_obs [B, D], reward [B], uncertainty [B]).

    Stochastic (MBPO/MOPO rollouts): each row samples a random elite and draws from its
    Gaussian. Deterministic (planning, open-loop diagnostics): the elites' mean prediction.
    The uncertainty is MOPO's (the largest norm of an elite's predicted std) taken on the
    normalized outputs (std / out_std, i.e. in units of each target's spread in the data), so
    every output counts alike. On raw outputs the joint velocities (std 6-9 on walker) made up
    ~90% of it and u was 4-8 against rewards <= 1; normalized, it is a scale-free score of how
    unsure the ensemble is relative to what the data shows (`_uncertainty`).
    """
    mean, std = predict(model, obs, action)
    uncertainty = _uncertainty(model, std)
    if deterministic:
        out = mean.mean(0)
    else:
        member_key, noise_key = jax.random.split(key)
        member = jax.random.randint(member_key, (obs.shape[0],), 0, mean.shape[0])
        rows = jnp.arange(obs.shape[0])
        out = mean[member, rows] + std[member, rows] * jax.random.normal(noise_key, mean.shape[1:])
    return out[:, :-1], out[:, -1], uncertainty


def _uncertainty(model: Model, std: jax.Array) -> jax.Array:
    """max over elites of || std / out_std ||_2 over the (obs delta, reward) outputs: [B]."""
    return jnp.linalg.norm(std / model.out_std, axis=-1).max(0)


# ----------------------------------------------------------------------------- training


@flax.struct.dataclass
class TrainState:
    params: dict
    opt_state: Any
    key: jax.Array


def optimizer(config: Config) -> optax.GradientTransformation:
    decay_mask = lambda params: {"layers": [{"w": True, "b": False} for _ in params["layers"]],
                                 "max_logvar": False, "min_logvar": False}
    return optax.adamw(config.learning_rate, weight_decay=config.weight_decay, mask=decay_mask)


def nll_loss(config: Config, params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """Gaussian NLL of every member on its own batch (x [E, B, in], y [E, B, out]), summed over
    members, plus the penalty that tightens the learnable log-variance bounds."""
    mean, logvar = forward(params, x)
    nll = (((mean - y) ** 2) * jnp.exp(-logvar) + logvar).mean((1, 2)).sum()
    return nll + config.logvar_bound_weight * (params["max_logvar"].sum() - params["min_logvar"].sum())


def holdout_mse(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
    """Per-member MSE of the mean on normalized held-out targets: [E]."""
    mean, _ = forward(params, x)
    return ((mean - y) ** 2).mean((1, 2))


# Config fields a fit's compiled chunk does not depend on: fits that differ only in these
# (another dataset, seed, budget, online refits) reuse one compiled chunk.
_CHUNK_IRRELEVANT = {
    "env": "walker-walk", "seed": 0, "run_root": "runs", "wandb": "disabled", "wandb_project": "",
    "eval_episodes": 10, "final_eval_episodes": 50, "seeds": "", "dataset": "", "holdout_ratio": 0.1,
    "max_updates": 20_000, "patience": 5, "open_loop_starts": 256,
}


def make_train_chunk(config: Config):
    """`updates_per_chunk` updates (a lax.scan), then the holdout MSE of every member."""
    return _make_train_chunk(dataclasses.replace(config, **_CHUNK_IRRELEVANT))


@functools.lru_cache(maxsize=8)
def _make_train_chunk(config: Config):
    tx = optimizer(config)

    def chunk(state: TrainState, x: jax.Array, y: jax.Array, holdout_x: jax.Array, holdout_y: jax.Array):
        def one_update(state: TrainState, _):
            key, sample_key = jax.random.split(state.key)
            # Every member draws its own batch: the bootstrap that keeps members diverse.
            idx = jax.random.randint(sample_key, (config.ensemble_size, config.batch_size), 0, x.shape[0])
            loss, grads = jax.value_and_grad(partial(nll_loss, config))(state.params, x[idx], y[idx])
            updates, opt_state = tx.update(grads, state.opt_state, state.params)
            return TrainState(optax.apply_updates(state.params, updates), opt_state, key), loss

        state, losses = jax.lax.scan(one_update, state, length=config.updates_per_chunk)
        return state, losses, holdout_mse(state.params, holdout_x, holdout_y)

    return jax.jit(chunk, donate_argnums=0)


@jax.jit
def _keep_best(best: dict, current: dict, improved: jax.Array) -> dict:
    return jax.tree.map(lambda b, c: jnp.where(improved.reshape(-1, *[1] * (c.ndim - 1)), c, b), best, current)


def split_episodes(episode_end: np.ndarray, holdout_ratio: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, holdout): whole episodes are held out, chosen at random."""
    ends = np.flatnonzero(episode_end)
    episode_id = np.zeros(len(episode_end), np.int64)
    episode_id[ends[:-1] + 1] = 1
    episode_id = np.cumsum(episode_id)
    num_episodes = len(ends)
    if num_episodes < 2:
        raise ConfigError("the dynamics holdout needs at least 2 episodes in the dataset")
    held = np.random.default_rng(seed).permutation(num_episodes)[:max(1, round(holdout_ratio * num_episodes))]
    is_holdout = np.isin(episode_id, held)
    return np.flatnonzero(~is_holdout), np.flatnonzero(is_holdout)


@dataclasses.dataclass(frozen=True)
class Transitions:
    """Raw (unnormalized) transitions on the host, with episode boundaries."""

    obs: np.ndarray
    action: np.ndarray
    reward: np.ndarray
    next_obs: np.ndarray
    episode_end: np.ndarray

    @classmethod
    def from_dataset(cls, data) -> Transitions:
        return cls(*(np.asarray(getattr(data, k), np.float32) for k in ("obs", "action", "reward", "next_obs")),
                   np.asarray(data.episode_end, bool))


def fit(config: Config, data: Transitions, log=None, init: Model | None = None) -> tuple[Model, dict]:
    """Train an ensemble on `data` with holdout early stopping; returns the model (best params
    per member, elites chosen on the holdout) and diagnostics. `init` warm-starts the
    parameters (online refits); `log(updates, metrics)` receives per-chunk metrics."""
    train_idx, holdout_idx = split_episodes(data.episode_end, config.holdout_ratio, config.seed)
    inputs = np.concatenate([data.obs, data.action], -1)
    targets = np.concatenate([data.next_obs - data.obs, data.reward[:, None]], -1)
    # Statistics from the training rows only: the holdout stays unseen.
    in_mean, in_std = inputs[train_idx].mean(0), np.maximum(inputs[train_idx].std(0), 1e-4)
    out_mean, out_std = targets[train_idx].mean(0), np.maximum(targets[train_idx].std(0), 1e-4)
    x, y = (inputs - in_mean) / in_std, (targets - out_mean) / out_std
    x_train, y_train = jnp.asarray(x[train_idx]), jnp.asarray(y[train_idx])
    x_hold, y_hold = jnp.asarray(x[holdout_idx]), jnp.asarray(y[holdout_idx])

    key = jax.random.PRNGKey(config.seed)
    params = init.params if init is not None else init_params(config, data.obs.shape[-1], data.action.shape[-1], key)
    params = jax.tree.map(jnp.array, params)  # own buffers: the train state is donated
    state = TrainState(params, optimizer(config).init(params), jax.random.fold_in(key, 1))
    chunk = make_train_chunk(config)
    best_params = jax.tree.map(jnp.copy, params)
    best_mse = np.full(config.ensemble_size, np.inf)
    stale, updates = 0, 0
    while updates < config.max_updates and stale < config.patience:
        state, losses, mse = chunk(state, x_train, y_train, x_hold, y_hold)
        updates += config.updates_per_chunk
        mse = np.asarray(mse)
        improved = (best_mse - mse) / np.where(np.isfinite(best_mse), best_mse, 1.0) > 0.01
        improved |= ~np.isfinite(best_mse)
        best_params = _keep_best(best_params, state.params, jnp.asarray(improved))
        best_mse = np.where(improved, mse, best_mse)
        stale = 0 if improved.any() else stale + 1
        losses = np.asarray(losses)
        if not np.all(np.isfinite(losses)):
            raise FloatingPointError(f"dynamics NLL became {losses[~np.isfinite(losses)][0]} by update {updates}")
        if log is not None:
            log(updates, {"model/train_nll": float(losses.mean()), "model/holdout_mse": float(mse.mean()),
                          "model/holdout_mse_best": float(best_mse.min())})
    elites = np.argsort(best_mse)[: config.num_elites].astype(np.int32)
    model = Model(best_params, *map(jnp.asarray, (in_mean, in_std, out_mean, out_std)), jnp.asarray(elites))
    diagnostics = {"updates": updates, "holdout_mse": float(best_mse[elites].mean()),
                   "holdout_mse_members": best_mse.tolist(), "elites": elites.tolist(),
                   **open_loop_error(model, data, holdout_idx, config.open_loop_starts),
                   **uncertainty_on_data(model, data)}
    return model, diagnostics


def data_sample_rows(num_rows: int, sample: int = DATA_SAMPLE) -> np.ndarray:
    """A fixed sample of a dataset's rows, the same on every call: where "u on the data" is taken."""
    return np.random.default_rng(0).choice(num_rows, min(sample, num_rows), replace=False)


def uncertainty_on_data(model: Model, data: Transitions) -> dict[str, float]:
    """The model's u on its own data (train and holdout rows): its mean and percentiles. What
    counts as "unsure" is relative to these: on scattered data u is high on the data too."""
    rows = data_sample_rows(len(data.obs))
    u = np.asarray(_uncertainty_at(model, jnp.asarray(data.obs[rows]), jnp.asarray(data.action[rows])))
    return {"data_uncertainty_mean": float(u.mean()),
            **{f"data_uncertainty_p{p}": float(np.percentile(u, p)) for p in DATA_UNCERTAINTY_PERCENTILES}}


@jax.jit
def _uncertainty_at(model: Model, obs: jax.Array, action: jax.Array) -> jax.Array:
    return _uncertainty(model, predict(model, obs, action)[1])


def open_loop_error(model: Model, data: Transitions, holdout_idx: np.ndarray, num_starts: int,
                    horizons: tuple[int, ...] = HORIZONS) -> dict[str, float]:
    """Open-loop error on held-out episodes: from a real state, the model is fed its own
    predictions and the real actions; the MSE to the real observation h steps later, in units
    of the dataset's observation std (and the reward's absolute error), per horizon h."""
    h_max = max(horizons)
    ends = np.flatnonzero(data.episode_end)
    episode_of = np.searchsorted(ends, np.arange(len(data.episode_end)))
    held = np.zeros(len(data.episode_end), bool)
    held[holdout_idx] = True
    # Starts whose next h_max steps stay inside the same held-out episode.
    candidates = [t for t in holdout_idx if t + h_max - 1 < len(held) and held[t + h_max - 1]
                  and episode_of[t + h_max - 1] == episode_of[t]]
    if not candidates:
        return {}
    starts = np.asarray(candidates)[np.linspace(0, len(candidates) - 1, min(num_starts, len(candidates))).astype(int)]
    steps = starts[:, None] + np.arange(h_max)  # [S, H] rows
    actions = jnp.asarray(data.action[steps].transpose(1, 0, 2))
    predicted = _open_loop(model, jnp.asarray(data.obs[starts]), actions)  # [H, S, D], [H, S]
    obs_std = np.maximum(data.obs.std(0), 1e-3)
    real_obs, real_reward = data.next_obs[steps].transpose(1, 0, 2), data.reward[steps].T
    result = {}
    for h in horizons:
        result[f"open_loop_mse_h{h}"] = float((((np.asarray(predicted[0][h - 1]) - real_obs[h - 1]) / obs_std) ** 2).mean())
        result[f"open_loop_reward_mae_h{h}"] = float(np.abs(np.asarray(predicted[1][h - 1]) - real_reward[h - 1]).mean())
    return result


@jax.jit
def _open_loop(model: Model, obs: jax.Array, actions: jax.Array) -> tuple[jax.Array, jax.Array]:
    def body(obs, action):
        next_obs, reward, _ = step(model, obs, action, jax.random.PRNGKey(0), deterministic=True)
        return next_obs, (next_obs, reward)

    return jax.lax.scan(body, obs, actions)[1]


# ----------------------------------------------------------------------------- save / load / reuse


def model_arrays(model: Model) -> dict[str, np.ndarray]:
    return flatten_tree(model, "model")


def load_model(directory: str | Path) -> Model:
    """The ensemble saved in a dynamics run directory."""
    directory = Path(directory)
    if not (directory / "checkpoint.npz").exists() or not (directory / "config.json").exists():
        raise ConfigError(f"{directory} holds no trained dynamics model (config.json + checkpoint.npz); "
                          f"train one with: python train.py dynamics --env ENV --dataset DATASET")
    stored = json.loads((directory / "config.json").read_text())
    if stored.get("algo") != "dynamics":
        raise ConfigError(f"{directory} is a {stored.get('algo')!r} run, not a dynamics model")
    config = _stored_config(stored)
    _, arrays = load_checkpoint(directory / "checkpoint.npz")
    obs_dim, action_dim = int(arrays["obs_dim"]), int(arrays["action_dim"])
    return restore_tree(init_model(config, obs_dim, action_dim, jax.random.PRNGKey(0)), arrays, "model")


def _stored_config(stored: dict) -> Config:
    known = {f.name for f in dataclasses.fields(Config)}
    return Config(**{k: v for k, v in stored.items() if k in known})


def consumer_config(env: str, dataset: str, run_root: str, wandb: str, max_updates: int,
                    **sizes: int) -> Config:
    """The model config of a run that needs a model (mopo, mppi): seed 0 and the defaults of
    every field not given make it the same run as `python train.py dynamics`, so it is shared."""
    return Config(env=env, dataset=dataset, run_root=run_root, wandb=wandb, max_updates=max_updates,
                  updates_per_chunk=min(1_000, max_updates), **sizes)


def model_for(model_from: str, config: Config, data=None) -> Model:
    """The model a consumer (mopo, mppi) plans or rolls out with: the run at `model_from` if
    given, else the dataset's default dynamics run, trained there first if missing."""
    if model_from:
        model = load_model(model_from)
        stored = json.loads((Path(model_from) / "config.json").read_text())
        if stored.get("env") != config.env:
            raise ConfigError(f"--model-from {model_from} models {stored.get('env')!r}, not {config.env!r}")
        return model
    directory = run_dir("dynamics", config, _label(config.dataset))
    if (directory / "checkpoint.npz").exists():
        changed = config_differences(json.loads((directory / "config.json").read_text()), config)
        if changed:  # e.g. a model fit on a smaller budget: never reuse it silently
            raise ConfigError(f"the dynamics model in {directory} was trained with another config "
                              f"({', '.join(changed)}); pass --model-from {directory} to use it anyway, "
                              f"or another --run-root")
        _check_same_data(directory, data)
        print(f"reusing the dynamics model in {directory}", file=sys.stderr)
        return load_model(directory)
    print(f"no dynamics model for {config.env}/{config.dataset} yet: training one in {directory} "
          f"(reused by every later run; pass --model-from to pick another)", file=sys.stderr)
    return train_model(config, data)[0]


def _check_same_data(directory: Path, data) -> None:
    """Refuse to reuse a model fit to another build of the dataset (e.g. before a stronger
    expert generator was committed): its predictions would silently describe other data."""
    import datasets

    final = directory / "final_eval.json"
    fit_to = json.loads(final.read_text()).get("dataset_content_sha256") if final.exists() else None
    current = datasets.fingerprint(data)
    if fit_to and current and fit_to != current:
        raise ConfigError(f"the dynamics model in {directory} was fit to another build of this dataset (content "
                          f"{fit_to[:12]}, now {current[:12]}); delete {directory} to refit it, or pass "
                          f"--model-from {directory} to use it anyway")


def _label(dataset: str) -> str:
    import datasets

    return datasets.label(dataset)


def train_model(config: Config, data=None) -> tuple[Model, dict]:
    """Train (or, if its run directory already holds one, load) the model of `config`."""
    import datasets

    if data is None:
        data = datasets.load(config.env, config.dataset)
    _check_same_data(run_dir("dynamics", config, datasets.label(config.dataset)), data)
    run = Run("dynamics", config, datasets.label(config.dataset), config.max_updates, "update",
              dataset_sha256=datasets.fingerprint(data))
    if run.restore() is not None:
        print(f"reusing the dynamics model in {run.dir}", file=sys.stderr)
        final = run.dir / "final_eval.json"
        return load_model(run.dir), json.loads(final.read_text()) if final.exists() else {}
    transitions = data if isinstance(data, Transitions) else Transitions.from_dataset(data)
    run.start(0)
    try:
        model, diagnostics = fit(config, transitions, log=run.log)
    except BaseException:
        run.close()
        raise
    run.log(diagnostics["updates"], {f"model/{k}": v for k, v in diagnostics.items() if k != "updates"} | {"final": True})
    run.save(diagnostics["updates"], {**model_arrays(model), "obs_dim": np.int64(transitions.obs.shape[-1]),
                                      "action_dim": np.int64(transitions.action.shape[-1])})
    run.finish({**diagnostics, "dataset_content_sha256": datasets.fingerprint(data)})
    print(format_diagnostics(diagnostics), file=sys.stderr)
    return model, diagnostics


def format_diagnostics(diagnostics: dict) -> str:
    lines = [(f"dynamics: {diagnostics['updates']:,} updates, elites {diagnostics['elites']}, "
              f"one-step holdout MSE (normalized targets) {diagnostics['holdout_mse']:.4f}")]
    for h in HORIZONS:
        if f"open_loop_mse_h{h}" in diagnostics:
            lines.append(f"  open-loop h={h:2d}: obs MSE {diagnostics[f'open_loop_mse_h{h}']:.4f} (obs-std units), "
                         f"reward MAE {diagnostics[f'open_loop_reward_mae_h{h}']:.4f}")
    if "data_uncertainty_mean" in diagnostics:
        lines.append(f"  u on its data: mean {diagnostics['data_uncertainty_mean']:.3f}, "
                     + ", ".join(f"{p}th pct {diagnostics[f'data_uncertainty_p{p}']:.3f}"
                                 for p in DATA_UNCERTAINTY_PERCENTILES))
    return "\n".join(lines)


def train(config: Config) -> list[dict]:
    """Train and save the model; returns no policy evaluations (the diagnostics are printed)."""
    train_model(config)
    return []


def load_policy(directory: Path, config: Config):
    raise ConfigError("a dynamics run holds a model, not a policy: plan with it via "
                      f"python train.py mppi --model-from {directory}")


def penalized_reward(reward: jax.Array, uncertainty: jax.Array, weight: float) -> jax.Array:
    """MOPO's pessimistic reward r - lambda * u: model-based consumers (mopo, mppi) share it."""
    return reward - weight * uncertainty
