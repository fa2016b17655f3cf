"""Run plumbing shared by every algorithm: config fields and CLI parsing, the run directory
(resolved config, metrics as JSON lines, checkpoint, final evaluation), resume, wandb and
the terminal progress bar. Nothing algorithm-specific lives here.

Run directory layout (`runs/<algo>/<env>/<dataset>/seed<N>/`):

    config.json        the resolved Config (a rerun with a different config is refused) and the
                       content hash of the dataset build (a rerun on another build is refused)
    metrics.jsonl      one JSON object per log/eval event: {"step": env or update step, ...}
    checkpoint.npz     the latest checkpoint, written atomically (tmp file + rename)
    final_eval.json    the final evaluation (per-episode returns, mean, std, normalized)
    wandb/             the wandb run (offline unless --wandb online)
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
import time
import types
import typing
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np

WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """A bad command line or config: unknown flag, wrong type, invalid choice or value."""


_NO_VALUE = object()


def field(default: Any, help: str, *, choices: tuple | None = None, resume_safe: bool = False,
          absent: Any = _NO_VALUE) -> Any:
    """A documented Config field. `resume_safe` fields may change when a run is resumed
    (e.g. extending the budget); any other change to a run's config is refused. `absent` is
    the value a run whose config.json predates the field trained with, where that is not
    what the default now resolves to."""
    metadata = {"help": help, "choices": choices, "resume_safe": resume_safe}
    if absent is not _NO_VALUE:
        metadata["absent"] = absent
    return dataclasses.field(default=default, metadata=metadata)


def stored_value(f: dataclasses.Field, stored: dict) -> Any:
    """A field's value in a run's stored config.json; for a field added after the run
    started, the value that run had (its `absent` value, else the default)."""
    return stored[f.name] if f.name in stored else f.metadata.get("absent", f.default)


def config_from_stored(config_cls: type, stored: dict, **overrides: Any) -> Any:
    """The Config a run's config.json describes (its bookkeeping entries dropped), with
    `overrides` applied: what evaluating, re-running or exporting that run needs."""
    values = {f.name: stored_value(f, stored) for f in dataclasses.fields(config_cls)}
    return config_cls(**{**values, **overrides})


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Fields every algorithm shares; each algorithm's Config extends this."""

    env: str = field("walker-walk", "environment id: walker-walk, walker-run or any dm_control domain-task")
    seed: int = field(0, "random seed of the run (network init, sampling, training env seeds); 0 <= seed < 200")
    run_root: str = field("runs", "root folder of run directories", resume_safe=True)
    wandb: str = field("offline", "wandb mode; offline runs upload later with `wandb sync`", choices=WANDB_MODES,
                       resume_safe=True)
    wandb_project: str = field("walker-offline-rl", "wandb project", resume_safe=True)
    eval_episodes: int = field(10, "episodes per periodic evaluation", resume_safe=True)
    final_eval_episodes: int = field(50, "episodes of the final evaluation", resume_safe=True)
    seeds: str = field("", "offline: several seeds trained together in one vmapped program, e.g. 0,1,2 "
                           "(each keeps its own run directory); overrides --seed")

    def __post_init__(self) -> None:
        from envs import parse_env_id

        try:
            parse_env_id(self.env)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if not 0 <= self.seed < 200:
            raise ConfigError("--seed must be in [0, 200) so training env seeds stay below the eval seed range")
        parse_seeds(self)

    def resolve_default(self, name: str, table: dict, key: Any) -> None:
        """Fill field `name`, if None, from its per-dataset table (table[key], else table["default"]).
        Resolved in __post_init__, so config.json records the value the run used."""
        if getattr(self, name) is None:
            object.__setattr__(self, name, table.get(key, table["default"]))


# ----------------------------------------------------------------------------- CLI parsing


def config_help(config_cls: type) -> str:
    """Every Config field with its type, default and meaning."""
    hints = typing.get_type_hints(config_cls)
    lines = []
    for f in dataclasses.fields(config_cls):
        flag = "--" + f.name.replace("_", "-")
        choices = f.metadata.get("choices")
        extra = f" (one of: {', '.join(map(str, choices))})" if choices else ""
        lines.append(f"  {flag} {_type_name(hints[f.name])} = {f.default!r}\n      {f.metadata.get('help', '')}{extra}")
    return "\n".join(lines)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def parse_config(config_cls: type, argv: list[str]):
    """Parse `--field value` flags with fire into a frozen Config, rejecting unknown flags and
    mistyped values *before* anything runs (fire alone would train first, complain later)."""
    import fire
    import fire.core

    parsed: dict[str, Any] = {}

    def collect(**kwargs: Any) -> None:
        parsed.update(kwargs)

    positional = [a for a in argv if not a.startswith("-")]
    if argv and not argv[0].startswith("-"):
        raise ConfigError(f"unexpected positional argument {argv[0]!r}; flags look like --env walker-run")
    try:
        fire.Fire(collect, command=list(argv), name="train.py")
    except fire.core.FireExit as exc:
        raise ConfigError(f"could not parse flags {' '.join(argv)!r} ({positional=})") from exc

    hints = typing.get_type_hints(config_cls)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    values = {}
    for name, value in parsed.items():
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=3)
            hint = f"; did you mean {', '.join('--' + c.replace('_', '-') for c in close)}?" if close else ""
            raise ConfigError(f"unknown flag --{name.replace('_', '-')}{hint} (see --help)")
        values[name] = _coerce(name, value, hints[name], fields[name].metadata.get("choices"))
    return config_cls(**values)


def _coerce(name: str, value: Any, tp: Any, choices: tuple | None) -> Any:
    flag = "--" + name.replace("_", "-")
    optional = isinstance(tp, types.UnionType) and type(None) in tp.__args__
    base = next(t for t in tp.__args__ if t is not type(None)) if optional else tp
    if optional and value is None:
        return None
    if base is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{flag} expects True or False, got {value!r}")
    elif base is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # `--total-env-steps 1e6`
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{flag} expects an integer, got {value!r}")
    elif base is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{flag} expects a number, got {value!r}")
        value = float(value)
    elif base is str:
        if isinstance(value, tuple):  # fire turns `--seeds 0,1,2` into a tuple
            value = ",".join(map(str, value))
        elif isinstance(value, (bool, dict, list)):
            raise ConfigError(f"{flag} expects a string, got {value!r}")
        value = str(value)
    if choices is not None and value not in choices:
        raise ConfigError(f"{flag} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


# ----------------------------------------------------------------------------- NaN guard


class NonFiniteError(FloatingPointError):
    """A loss or statistic became NaN or inf: the run stops before writing a checkpoint."""


def check_finite(metrics: dict[str, np.ndarray], first_update: int) -> dict[str, np.ndarray]:
    """Raise at the first non-finite value of per-update metrics ([K] arrays of one chunk whose
    first update is number `first_update + 1`), naming the quantity and the update."""
    for name, values in metrics.items():
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise NonFiniteError(f"{name} is {values[bad[0]]} at update {first_update + int(bad[0]) + 1:,}; "
                                 f"stopping without writing a checkpoint")
    return metrics


# ----------------------------------------------------------------------------- checkpoints


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable or does not match the run's state."""


def flatten_tree(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """A pytree of arrays as {path: numpy array}, the format checkpoints are stored in."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {prefix + jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def restore_tree(template: Any, arrays: dict[str, np.ndarray], prefix: str = "") -> Any:
    """Fill `template`'s structure with `arrays` (as written by `flatten_tree`), checking that
    every leaf is present with the template's shape and dtype."""
    paths_leaves, treedef = jax.tree_util.tree_flatten_with_path(template)
    leaves = []
    for path, leaf in paths_leaves:
        key = prefix + jax.tree_util.keystr(path)
        if key not in arrays:
            raise CheckpointError(f"checkpoint has no entry {key!r}: it was written by a different config or code")
        stored, expected = arrays[key], jax.numpy.asarray(leaf)
        if stored.shape != expected.shape or stored.dtype != expected.dtype:
            raise CheckpointError(
                f"checkpoint entry {key!r} is {stored.dtype}{list(stored.shape)}, "
                f"expected {expected.dtype}{list(expected.shape)}"
            )
        leaves.append(jax.numpy.asarray(stored))
    return jax.tree_util.tree_unflatten(treedef, leaves)


def save_checkpoint(path: Path, step: int, arrays: dict[str, np.ndarray]) -> None:
    """Write atomically: a killed write leaves the previous checkpoint intact."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.savez(f, __step__=np.int64(step), **arrays)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> tuple[int, dict[str, np.ndarray]]:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # zip/npy errors come in many types
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(exc).__name__}: {exc}); "
                              f"delete it to start the run afresh") from exc
    if "__step__" not in arrays:
        raise CheckpointError(f"checkpoint {path} has no step entry: not a checkpoint of this suite")
    return int(arrays.pop("__step__")), arrays


# ----------------------------------------------------------------------------- the run


def config_differences(stored: dict, config: RunConfig) -> list[str]:
    """'field: stored -> current' for every field (other than resume-safe ones) in which a
    run's stored config.json differs from `config`; a field added to Config after the run
    started counts as having had its `absent` value, else its default."""
    current = dataclasses.asdict(config)
    return [f"{f.name}: {stored_value(f, stored)!r} -> {current[f.name]!r}"
            for f in sorted(dataclasses.fields(config), key=lambda f: f.name)
            if not f.metadata.get("resume_safe") and stored_value(f, stored) != current[f.name]]


def other_build(stored_config: dict, dataset_sha256: str | None) -> str | None:
    """Why a run (its stored config.json) may not continue on the dataset build with content
    hash `dataset_sha256`, or None. Runs from before the hash was recorded are not judged."""
    trained_on = stored_config.get("dataset_sha256")
    if trained_on and dataset_sha256 and trained_on != dataset_sha256:
        return (f"was trained on another build of its dataset (content {trained_on[:12]}, now "
                f"{dataset_sha256[:12]}): its results describe the old data")
    return None


def run_dir(algo: str, config: RunConfig, dataset: str) -> Path:
    """Where a run lives: `<run_root>/<algo>/<env>/<dataset>/seed<N>`."""
    return Path(config.run_root) / algo / config.env / dataset / f"seed{config.seed}"


class Run:
    """One run directory: config, metrics, checkpoint, final eval, wandb and progress bar.

    Rerunning the same command finds the directory, checks the config matches and resumes
    from the checkpoint; metrics logged after that checkpoint are dropped so none repeat.
    """

    def __init__(self, algo: str, config: RunConfig, dataset: str, total_steps: int, step_unit: str,
                 seed_group: list[int] | None = None, dataset_sha256: str | None = None) -> None:
        self.algo, self.config, self.dataset = algo, config, dataset
        # The seeds vmapped together with this one: their program's float rounding differs from
        # a lone seed's, so an exact rerun trains the same group (recorded in config.json).
        self.seed_group = seed_group
        # The content hash of the dataset build trained on (datasets.fingerprint), recorded so
        # that a run is never resumed on another build (e.g. after a stronger expert generator).
        self.dataset_sha256 = dataset_sha256
        self.dir = run_dir(algo, config, dataset)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = self.dir / "checkpoint.npz"
        self.total_steps, self.step_unit = total_steps, step_unit
        self._check_config()
        self._wandb = None
        self._bar = None
        self.latest_eval: float | None = None

    # -- config
    def _check_config(self) -> None:
        config_path = self.dir / "config.json"
        current = dataclasses.asdict(self.config)
        recorded = self.dataset_sha256  # a run started before hashes were recorded gets none
        if config_path.exists() and self.checkpoint_path.exists():
            stored = json.loads(config_path.read_text())
            changed = config_differences(stored, self.config)
            if changed:
                diff = ", ".join(changed)
                raise ConfigError(
                    f"{self.dir} holds a run with a different config ({diff}); "
                    f"pick another --run-root or delete the directory to start over"
                )
            problem = other_build(stored, self.dataset_sha256)
            if problem:
                raise ConfigError(f"{self.dir} {problem}; pick another --run-root or delete the directory to "
                                  f"start over")
            recorded = stored.get("dataset_sha256")
        extra = {"seed_group": ",".join(map(str, self.seed_group))} if self.seed_group else {}
        if recorded:
            extra["dataset_sha256"] = recorded
        config_path.write_text(json.dumps({"algo": self.algo, **current, **extra}, indent=2) + "\n")

    # -- resume
    def restore(self) -> tuple[int, dict[str, np.ndarray]] | None:
        """(step, arrays) of the last checkpoint, or None for a fresh run."""
        if not self.checkpoint_path.exists():
            self._truncate_metrics(-1)
            return None
        step, arrays = load_checkpoint(self.checkpoint_path)
        self._truncate_metrics(step)
        print(f"resuming {self.dir} from step {step:,}", file=sys.stderr)
        return step, arrays

    def save(self, step: int, arrays: dict[str, np.ndarray]) -> None:
        save_checkpoint(self.checkpoint_path, step, arrays)

    def save_snapshot(self, step: int, arrays: dict[str, np.ndarray]) -> None:
        (self.dir / "snapshots").mkdir(exist_ok=True)
        save_checkpoint(self.dir / "snapshots" / f"step{step:09d}.npz", step, arrays)

    def _truncate_metrics(self, step: int) -> None:
        path = self.dir / "metrics.jsonl"
        if path.exists():
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
            path.write_text("".join(line + "\n" for line in kept))

    # -- logging
    def start(self, initial_step: int) -> None:
        from tqdm import tqdm

        # Redirected to a file, a bar redrawn every second would bury the log: every minute then.
        interval = 1.0 if sys.stderr.isatty() else 60.0
        self._bar = tqdm(total=self.total_steps, initial=initial_step, unit=self.step_unit, unit_scale=True,
                         dynamic_ncols=True, desc=f"{self.algo} {self.config.env}", mininterval=interval,
                         maxinterval=interval)
        self._step = initial_step
        if self.config.wandb != "disabled":
            self._wandb = _init_wandb(self)

    def log(self, step: int, metrics: dict[str, float]) -> None:
        """Append to metrics.jsonl, send to wandb and advance the progress bar."""
        record = {"step": int(step), "time": time.time(), **{k: _to_json(v) for k, v in metrics.items()}}
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in record.items() if k not in ("step", "time")}, step=int(step))
        if "eval/return" in metrics:
            self.latest_eval = float(metrics["eval/return"])
        self.advance(step)

    def advance(self, step: int) -> None:
        if self._bar is not None:
            self._bar.update(step - self._step)
            self._step = step
            if self.latest_eval is not None:
                self._bar.set_postfix_str(f"eval {self.latest_eval:.1f}", refresh=False)

    def finish(self, final_eval: dict[str, Any], video_path: Path | None = None) -> None:
        record = {**final_eval, "machine": machine_description()}
        (self.dir / "final_eval.json").write_text(json.dumps(record, indent=2) + "\n")
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.summary.update({f"final/{k}": v for k, v in final_eval.items() if not isinstance(v, list)})
            self._wandb.finish()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._wandb is not None:
            self._wandb.finish(exit_code=1)


def machine_description() -> dict[str, str]:
    """Where a result was computed: float rounding (and so scores, slightly) differ across them."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    device = jax.devices()[0]
    return {"cpu": f"{cpu} ({os.cpu_count()} cores)", "accelerator": f"{device.platform} ({device.device_kind})",
            "jax": jax.__version__}


def _to_json(value: Any) -> Any:
    value = np.asarray(value).item() if np.ndim(value) == 0 else np.asarray(value).tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _init_wandb(run: Run):
    import wandb

    id_path = run.dir / "wandb_id"
    if not id_path.exists():
        id_path.write_text(uuid.uuid4().hex[:12])
    return wandb.init(
        project=run.config.wandb_project,
        group=f"{run.config.env}/{run.dataset}",
        job_type=run.algo,
        name=f"{run.algo}-{run.config.env}-{run.dataset}-s{run.config.seed}",
        config={"algo": run.algo, "dataset": run.dataset, **dataclasses.asdict(run.config)},
        mode=run.config.wandb,
        dir=str(run.dir),
        id=id_path.read_text().strip(),
        resume="allow",
        reinit="create_new",  # vmapped seeds: one live wandb run per seed in this process
        settings=wandb.Settings(console="off", quiet=True),
    )


# ----------------------------------------------------------------------------- offline driver


def parse_seeds(config: RunConfig) -> list[int]:
    """`--seeds 0,1,2` -> [0, 1, 2]; without it, [config.seed]."""
    if not config.seeds:
        return [config.seed]
    try:
        seeds = [int(s) for s in str(config.seeds).split(",") if s.strip()]
    except ValueError:
        raise ConfigError(f"--seeds expects comma-separated integers like 0,1,2; got {config.seeds!r}") from None
    if len(set(seeds)) != len(seeds) or not all(0 <= s < 200 for s in seeds):
        raise ConfigError(f"--seeds must be distinct integers in [0, 200); got {config.seeds!r}")
    return seeds


def check_chunking(updates_per_chunk: int, chunk_flag: str = "updates-per-chunk", **budgets: int) -> None:
    """Python runs only between jitted chunks, so every budget must be a multiple of the chunk
    length; anything else would be silently rounded (an eval every 2,500 updates in chunks of
    1,000 would run only every 5,000). Algorithms call it before loading any data."""
    for name, value in budgets.items():
        if value % updates_per_chunk:
            raise ConfigError(f"--{name.replace('_', '-')} {value:,} must be a multiple of --{chunk_flag} "
                              f"{updates_per_chunk:,}")


def stack_trees(trees: list[Any]) -> Any:
    # By leaves, not tree_map: static fields (a TrainState's apply_fn) differ by identity.
    treedef = jax.tree.structure(trees[0])
    return jax.tree.unflatten(treedef, [jax.numpy.stack(leaves) for leaves in zip(*map(jax.tree.leaves, trees))])


def unstack_tree(tree: Any, index: int) -> Any:
    return jax.tree.map(lambda leaf: leaf[index], tree)


def train_offline_seeds(
    algo: str,
    config: RunConfig,
    dataset_label: str,
    data: dict[str, jax.Array],
    init_state: Any,
    train_chunk: Any,
    evaluate: Any,
    extra_arrays: dict[str, np.ndarray],
    *,
    updates: int,
    updates_per_chunk: int,
    eval_every: int,
    checkpoint_every: int,
    dataset_sha256: str | None = None,
) -> list[dict]:
    """The offline train loop shared by every offline algorithm, for one or several seeds.

    `init_state(seed)` builds a state; `train_chunk(state, data)` runs `updates_per_chunk`
    updates (a lax.scan) and returns (state, per-update metrics); `evaluate(state, episodes,
    seed)` scores a state with the harness. Several seeds (`--seeds 0,1,2`) are stacked and
    trained by `jax.vmap(train_chunk)` in one compiled program; each seed keeps its own run
    directory, metrics, checkpoint and wandb run. Python runs only between chunks.
    """
    check_chunking(updates_per_chunk, updates=updates, eval_every=eval_every, checkpoint_every=checkpoint_every)
    seeds = parse_seeds(config)
    configs = [dataclasses.replace(config, seed=s, seeds="") for s in seeds]
    runs = [Run(algo, c, dataset_label, updates, "update", seeds if len(seeds) > 1 else None, dataset_sha256)
            for c in configs]
    states = [init_state(s) for s in seeds]
    restored = [run.restore() for run in runs]
    steps = {0 if r is None else r[0] for r in restored}
    if len(steps) > 1:
        raise ConfigError(f"seeds {seeds} were checkpointed at different steps {sorted(steps)}; "
                          f"resume them one by one (--seed N)")
    states = [s if r is None else restore_tree(s, r[1], "state") for s, r in zip(states, restored)]
    step = steps.pop()
    vmapped = len(seeds) > 1
    chunk = jax.jit(jax.vmap(train_chunk, in_axes=(0, None)) if vmapped else train_chunk, donate_argnums=0)
    state = stack_trees(states) if vmapped else states[0]
    seed_state = (lambda i: unstack_tree(state, i)) if vmapped else (lambda i: state)
    for run in runs:
        run.start(step)
    try:
        while step < updates:
            state, metrics = chunk(state, data)
            metrics = jax.device_get(metrics)
            for i, run in enumerate(runs):
                seed_metrics = {k: v[i] for k, v in metrics.items()} if vmapped else metrics
                check_finite(seed_metrics, step)
                record = {f"train/{k}": float(v.mean()) for k, v in seed_metrics.items()}
                if "q_max" in seed_metrics:
                    record["train/q_max"] = float(seed_metrics["q_max"].max())
                if (step + updates_per_chunk) % eval_every == 0 and step + updates_per_chunk < updates:
                    result = evaluate(seed_state(i), config.eval_episodes, seeds[i])
                    record.update({"eval/return": result.mean, "eval/normalized_score": result.normalized_score})
                run.log(step + updates_per_chunk, record)
            step += updates_per_chunk
            if step % checkpoint_every == 0 or step >= updates:
                for i, run in enumerate(runs):
                    run.save(step, {**flatten_tree(seed_state(i), "state"), **extra_arrays})
        finals = []
        for i, run in enumerate(runs):
            result = evaluate(seed_state(i), config.final_eval_episodes, seeds[i])
            run.log(step, {"eval/return": result.mean, "eval/normalized_score": result.normalized_score,
                           "final": True})
            final = {**result.as_dict(), "updates": step, "seed": seeds[i]}
            run.finish(final)
            finals.append(final)
    except BaseException:
        for run in runs:
            run.close()
        raise
    return finals
