"""Reproduce the leaderboard: run every missing run of a grid, then build the leaderboard.

    python -m reports.reproduce                                   # every algorithm x walker-walk/run x 5 datasets, seeds 0,1,2
    python -m reports.reproduce --algos bc --envs walker-walk --datasets expert,medium --updates 20000
    python -m reports.reproduce --dry-run                         # the plan only: what is finished, resumed, new
    python -m reports.reproduce --jobs 8                          # 8 cells at once (e.g. sharing one GPU)
    python -m reports.reproduce --ray local                       # cells as Ray tasks on a local Ray
    python -m reports.reproduce --ray ray://head:10001 --run-root /shared/runs
    python -m reports.reproduce --verify runs/bc/walker-walk/expert/seed0   # rerun one run, compare scores

Each (algo, env, dataset) cell trains its seeds together (`--seeds`, one vmapped program) with
the same machinery as `python train.py ALGO --seeds ...`: the algorithm's Config and train().
Finished runs (final_eval.json at the requested budget) are skipped; interrupted runs resume
from their checkpoint.npz (seeds at different checkpoint steps train in separate groups); a
finished run with a smaller `updates` budget than requested is resumed up to the new budget.
A run that recorded training on another build of its dataset (e.g. before a stronger expert
generator was committed) is an error for its cell, never counted as finished; checking it
builds the dataset if needed, as training would.
Any other `--field value` flag goes to every algorithm whose Config has that field (e.g.
`--hidden-dim 16`, `--wandb disabled`); a flag no algorithm knows is rejected before any work.

With `--ray ADDRESS` every cell is one Ray task (`--cpus-per-task` CPUs each) on an existing
cluster whose nodes share this checkout's path and the run root; `--ray local` starts a local
Ray. Ray is an optional extra: `pip install -e '.[ray]'`.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import shlex
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).parent
REPO = HERE.parent
STANDARD_ENVS = ("walker-walk", "walker-run")
STANDARD_DATASETS = ("random", "medium", "medium-replay", "expert", "medium-expert")
OWN_FIELDS = {"env", "dataset", "seed", "seeds", "updates", "run_root"}  # set by reproduce's own flags
# Environment variables a Ray worker needs to run the suite like this process does.
PASSED_ENV = ("MUJOCO_GL", "PYOPENGL_PLATFORM", "MINARI_DATASETS_PATH", "WANDB_MODE", "WANDB_SILENT", "WANDB_DIR",
              "XLA_FLAGS", "JAX_PLATFORMS")


def split(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def parse_overrides(extra: list[str]) -> dict[str, list[str]]:
    """`--hidden-dim 16 --wandb=disabled --flag` -> {"hidden_dim": ["--hidden-dim", "16"], ...}."""
    out: dict[str, list[str]] = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--"):
            raise SystemExit(f"error: unexpected argument {token!r}; config flags look like --hidden-dim 16")
        name, _, value = token[2:].partition("=")
        if value or "=" in token:
            out[name.replace("-", "_")] = [f"--{name}", value]
            i += 1
        elif i + 1 < len(extra) and not extra[i + 1].startswith("--"):
            out[name.replace("-", "_")] = [f"--{name}", extra[i + 1]]
            i += 2
        else:
            out[name.replace("-", "_")] = [f"--{name}"]
            i += 1
    return out


@dataclasses.dataclass
class CellPlan:
    """One (algo, env, dataset) cell: the train.py flags and which seeds need what."""

    algo: str
    env: str
    dataset: str
    label: str  # the run-directory name of the dataset
    argv: list[str]  # flags of `python train.py ALGO` without --seeds
    finished: list[int]
    groups: dict[int, list[int]]  # checkpoint step -> seeds to train from there (0 = new)
    error: str | None = None

    @property
    def todo(self) -> list[int]:
        return sorted(s for seeds in self.groups.values() for s in seeds)

    def describe(self) -> str:
        if self.error:
            return f"{self.algo} {self.env} {self.label}: ERROR {self.error}"
        parts = [f"seeds {','.join(map(str, self.finished))} finished"] if self.finished else []
        for step, seeds in sorted(self.groups.items()):
            what = "new" if step == 0 else f"resume from update {step:,}"
            parts.append(f"seeds {','.join(map(str, seeds))} {what}")
        return f"{self.algo} {self.env} {self.label}: " + "; ".join(parts)


def checkpoint_step(path: Path) -> int:
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        return int(data["__step__"])


def plan_cell(algo: str, env: str, dataset: str, seeds: list[int], updates: int | None, run_root: str,
              overrides: dict[str, list[str]]) -> CellPlan:
    import datasets
    from algorithms.common import ConfigError, config_differences, other_build, parse_config, run_dir

    module = importlib.import_module(f"algorithms.{algo}")
    names = {f.name for f in dataclasses.fields(module.Config)}
    argv = ["--env", env, "--dataset", dataset, "--run-root", run_root]
    if updates is not None and "updates" in names:
        argv += ["--updates", str(updates)]
    argv += [token for name, flag in overrides.items() if name in names for token in flag]
    label = datasets.label(dataset)
    plan = CellPlan(algo, env, dataset, label, argv, [], {})
    try:
        config = parse_config(module.Config, argv + ["--seeds", ",".join(map(str, seeds))])
    except ConfigError as exc:
        plan.error = str(exc)
        return plan
    current: str | None = None  # the dataset build's content hash, looked up once if needed
    for seed in seeds:
        seed_config = dataclasses.replace(config, seed=seed, seeds="")
        directory = run_dir(algo, seed_config, label)
        final_path, checkpoint_path = directory / "final_eval.json", directory / "checkpoint.npz"
        config_path = directory / "config.json"
        if config_path.exists() and (final_path.exists() or checkpoint_path.exists()):
            stored = json.loads(config_path.read_text())
            diff = config_differences(stored, seed_config)
            if diff:
                plan.error = f"{directory} holds a run with a different config ({', '.join(diff)})"
                return plan
            if stored.get("dataset_sha256"):  # a finished run on another build must not count as done
                if current is None:
                    current = datasets.current_fingerprint(env, dataset) or ""
                problem = other_build(stored, current)
                if problem:
                    plan.error = f"{directory} {problem}; move or delete it to rerun the cell"
                    return plan
        if final_path.exists():
            done = json.loads(final_path.read_text()).get("updates", 0)
            if done >= getattr(seed_config, "updates", 0):
                plan.finished.append(seed)
                continue
            plan.groups.setdefault(done, []).append(seed)  # a larger budget: continue from its checkpoint
        elif checkpoint_path.exists():
            plan.groups.setdefault(checkpoint_step(checkpoint_path), []).append(seed)
        else:
            plan.groups.setdefault(0, []).append(seed)
    return plan


def run_cell(plan: CellPlan) -> dict:
    """Train the cell's missing seeds in this process (one vmapped program per checkpoint step)."""
    from algorithms.common import ConfigError, parse_config

    module = importlib.import_module(f"algorithms.{plan.algo}")
    finals = []
    start = time.time()
    for step, seeds in sorted(plan.groups.items()):
        try:
            finals += module.train(parse_config(module.Config, plan.argv + ["--seeds", ",".join(map(str, seeds))]))
        except ConfigError as exc:
            if "--seed" not in str(exc):
                raise
            # An algorithm that does not train seeds together (it says so before any work): one by one.
            for seed in seeds:
                finals += module.train(parse_config(module.Config, plan.argv + ["--seed", str(seed)]))
    return {"cell": f"{plan.algo} {plan.env} {plan.label}", "trained": plan.todo, "seconds": time.time() - start,
            # A planner trains nothing: its finals carry no "updates".
            "finals": [{k: f[k] for k in ("seed", "normalized_score", "mean", "updates") if k in f} for f in finals]}


def failure(plan: CellPlan, exc: BaseException) -> str:
    """How a failed cell is listed at the end of the grid, whichever runner ran it."""
    return f"{plan.algo} {plan.env} {plan.label}: {type(exc).__name__}: {exc}"


def run_local(plans: list[CellPlan]) -> list[str]:
    errors = []
    for plan in plans:
        print(f"== {plan.describe()}", flush=True)
        try:
            result = run_cell(plan)
        except Exception as exc:  # noqa: BLE001  (one broken cell must not stop the grid)
            traceback.print_exc()
            errors.append(failure(plan, exc))
            continue
        report(result)
    return errors


def run_parallel(plans: list[CellPlan], jobs: int) -> list[str]:
    """Up to `jobs` cells at once, each in its own process: on one GPU, several small programs
    keep it busier than one, and their evaluations (CPU env stepping) overlap."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # Every process on one accelerator allocates what it uses, not 75% of its memory each.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    # By module name, so workers import it instead of unpickling a __main__ function; spawn, not
    # fork: JAX is multithreaded.
    task = importlib.import_module("reports.reproduce").run_cell
    errors = []
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(task, plan): plan for plan in plans}
        print(f"running {len(plans)} cell(s), {jobs} at a time", flush=True)
        for future in as_completed(pending):
            plan = pending[future]
            try:
                report(future.result())
            except Exception as exc:  # noqa: BLE001  (a failed cell is reported; the others go on)
                errors.append(failure(plan, exc))
                print(f"== FAILED {plan.algo} {plan.env} {plan.label}: {exc}", flush=True)
    return errors


def report(result: dict) -> None:
    scores = ", ".join(f"seed {f['seed']}: {f['normalized_score']:.1f}" for f in result["finals"])
    print(f"== done {result['cell']} in {result['seconds']:.0f} s ({scores})", flush=True)


def run_ray(plans: list[CellPlan], address: str, cpus_per_task: float) -> list[str]:
    """Every cell as one Ray task; results are reported as they finish."""
    try:
        import ray
    except ImportError:
        raise SystemExit("error: --ray needs Ray: pip install -e '.[ray]'") from None
    env_vars = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    # Workers import the suite from this checkout (cluster nodes must share its path).
    env_vars["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    runtime_env = {"env_vars": env_vars}
    started = address == "local"
    if started:
        ray.init(runtime_env=runtime_env, include_dashboard=False, logging_level="warning")
    else:
        ray.init(address=address, runtime_env=runtime_env, logging_level="warning")
    try:
        # By module name, so workers import it instead of unpickling a __main__ function.
        task = ray.remote(num_cpus=cpus_per_task, max_retries=0)(importlib.import_module("reports.reproduce").run_cell)
        pending = {task.remote(plan): plan for plan in plans}
        print(f"submitted {len(pending)} cell(s) to Ray ({ray.cluster_resources().get('CPU', 0):g} CPUs)", flush=True)
        errors = []
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            plan = pending.pop(done[0])
            try:
                report(ray.get(done[0]))
            except Exception as exc:  # noqa: BLE001  (a failed task is reported; the others go on)
                errors.append(failure(plan, exc))
                print(f"== FAILED {plan.algo} {plan.env} {plan.label}: {exc}", flush=True)
        return errors
    finally:
        if started:
            ray.shutdown()


def verify(run_directory: str | Path, tolerance: float = 1.0, scratch: str | Path | None = None) -> dict:
    """Rerun one finished run from its config.json (same seed, fresh scratch run root) and
    compare the final normalized scores: reproducible when they differ by at most `tolerance`.
    A run trained vmapped with other seeds (config.json's `seed_group`) is rerun in that same
    group, the one program whose float rounding it had."""
    import tempfile

    from algorithms.common import config_from_stored

    run_directory = Path(run_directory)
    stored = json.loads((run_directory / "config.json").read_text())
    before = json.loads((run_directory / "final_eval.json").read_text())
    module = importlib.import_module(f"algorithms.{stored['algo']}")
    group = stored.get("seed_group", "")
    with tempfile.TemporaryDirectory(dir=scratch) as tmp:
        config = config_from_stored(module.Config, stored, run_root=tmp, seeds=group, wandb="disabled")
        start = time.time()
        finals = module.train(config)
    after = next(f for f in finals if f.get("seed", stored["seed"]) == stored["seed"])
    diff = after["normalized_score"] - before["normalized_score"]
    return {"run": str(run_directory), "stored": before["normalized_score"], "rerun": after["normalized_score"],
            "difference": diff, "tolerance": tolerance, "reproducible": abs(diff) <= tolerance,
            "identical_returns": after["returns"] == before["returns"], "seed_group": group,
            "seconds": time.time() - start}


def default_algos(names) -> list[str]:
    """The algorithms that train an agent offline on an update budget (not e.g. a dynamics
    model alone, or a planner that needs a trained model passed in)."""
    out = []
    for name in names:
        fields = {f.name for f in dataclasses.fields(importlib.import_module(f"algorithms.{name}").Config)}
        if {"dataset", "updates"} <= fields:
            out.append(name)
    return out


def build_parser() -> argparse.ArgumentParser:
    from algorithms import ALGORITHMS

    parser = argparse.ArgumentParser(
        prog="python -m reports.reproduce", description=__doc__.split("\n\n")[0],
        epilog="Other --field value flags go to every algorithm whose Config has the field.")
    parser.add_argument("--algos", default=",".join(default_algos(ALGORITHMS)),
                        help="comma-separated (default: the offline agents with an `updates` budget: %(default)s)")
    parser.add_argument("--envs", default=",".join(STANDARD_ENVS), help="comma-separated (default: %(default)s)")
    parser.add_argument("--datasets", default=",".join(STANDARD_DATASETS),
                        help="comma-separated suite qualities or dataset files (default: %(default)s)")
    parser.add_argument("--seeds", default="0,1,2", help="seeds trained together per cell (default: %(default)s)")
    parser.add_argument("--updates", type=int, default=None,
                        help="gradient updates (default: each algorithm's Config, the leaderboard's budgets; "
                             "cqlsac's by env and dataset)")
    parser.add_argument("--run-root", default="runs", help="root of the run directories (default: %(default)s)")
    parser.add_argument("--out", default=str(HERE), help="leaderboard folder (default: %(default)s)")
    parser.add_argument("--ray", default=None, metavar="ADDRESS|local",
                        help="run cells as Ray tasks on this cluster ('local' starts one)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="cells run at once on this machine, one process each (default: %(default)s)")
    parser.add_argument("--cpus-per-task", type=float, default=1.0, help="Ray: CPUs per cell (default: %(default)s)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    parser.add_argument("--verify", default=None, metavar="RUN_DIR",
                        help="rerun this finished run (same config and seed, scratch root), compare its score")
    parser.add_argument("--tolerance", type=float, default=1.0,
                        help="--verify: largest accepted difference in normalized score (default: %(default)s)")
    parser.add_argument("--no-leaderboard", action="store_true", help="do not build the leaderboard afterwards")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from algorithms import ALGORITHMS

    args, extra = build_parser().parse_known_args(argv)
    if args.verify:
        result = verify(args.verify, args.tolerance)
        print(f"{result['run']}: stored {result['stored']:.2f}, rerun {result['rerun']:.2f}, difference "
              f"{result['difference']:+.2f} (tolerance {result['tolerance']}; per-episode returns "
              f"{'identical' if result['identical_returns'] else 'differ'}; rerun took {result['seconds']:.0f} s): "
              + ("reproducible" if result["reproducible"] else "NOT reproducible"))
        return 0 if result["reproducible"] else 1
    overrides = parse_overrides(extra)
    algos, envs, dataset_names = split(args.algos), split(args.envs), split(args.datasets)
    try:
        seeds = [int(s) for s in split(args.seeds)]
    except ValueError:
        print(f"error: --seeds expects comma-separated integers, got {args.seeds!r}", file=sys.stderr)
        return 2
    if args.jobs < 1:
        print(f"error: --jobs must be at least 1, got {args.jobs}", file=sys.stderr)
        return 2
    unknown = [a for a in algos if a not in ALGORITHMS]
    if unknown:
        print(f"error: unknown algorithm(s) {', '.join(unknown)}; choose from {', '.join(ALGORITHMS)}",
              file=sys.stderr)
        return 2
    configs = {a: {f.name for f in dataclasses.fields(importlib.import_module(f"algorithms.{a}").Config)}
               for a in algos}
    bad = [n for n in overrides if n in OWN_FIELDS or not any(n in names for names in configs.values())]
    if bad:
        print(f"error: flag(s) {', '.join('--' + b.replace('_', '-') for b in bad)} are not config fields of "
              f"{', '.join(algos)} (or have their own reproduce flag; see --help)", file=sys.stderr)
        return 2
    # Absolute: Ray workers do not share this process's working directory.
    run_root = str(Path(args.run_root).resolve())
    plans = [plan_cell(a, e, d, seeds, args.updates, run_root, overrides)
             for a in algos for e in envs for d in dataset_names]
    for plan in plans:
        print(plan.describe(), flush=True)
    errors = [p.describe() for p in plans if p.error]
    todo = [p for p in plans if not p.error and p.groups]
    print(f"{len(todo)} cell(s) to run, {sum(len(p.todo) for p in todo)} seed run(s); "
          f"{sum(len(p.finished) for p in plans)} finished run(s) skipped", flush=True)
    if args.dry_run:
        return 1 if errors else 0
    if todo:
        if args.ray:
            errors += run_ray(todo, args.ray, args.cpus_per_task)
        elif args.jobs > 1:
            errors += run_parallel(todo, args.jobs)
        else:
            errors += run_local(todo)
    if not args.no_leaderboard:
        from reports import leaderboard

        command = "python -m reports.reproduce " + shlex.join(argv)
        board = leaderboard.build(run_root, args.out, algos=algos, envs=envs,
                                  datasets=sorted({p.label for p in plans}, key=[p.label for p in plans].index),
                                  command=command)
        print(leaderboard.md_table(*leaderboard.main_table(board)))
        print(f"wrote {Path(args.out) / 'leaderboard.md'} and leaderboard.html")
    for error in errors:
        print(f"error: {error}", file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
