"""The leaderboard: final normalized scores of local runs, with bootstrap intervals, rliable's
aggregate IQM, learning curves and the reference numbers beside them.

    python -m reports.leaderboard                          # runs/ -> reports/
    python -m reports.leaderboard --runs runs,/shared/runs --out /tmp/board

Reads `<root>/<algo>/<env>/<dataset>/seed<N>/` run directories (several roots, comma-separated;
no wandb server) and writes into `--out`:

    leaderboard.md      algorithms x env x dataset: final normalized score, mean +- std over
                        seeds, 95% bootstrap interval of the mean over seeds, number of seeds;
                        rliable's IQM per algorithm over all its tasks (stratified bootstrap CI);
                        the reference numbers (reports/references.json); the command and the
                        budgets found in the runs' config.json
    leaderboard.html    the same tables with every plot embedded (base64): opens anywhere
    curves/<env>_<dataset>.png   eval/normalized_score vs update per algorithm (mean, min-max)

The score of a run is its final evaluation (final_eval.json), never the best one seen during
training. Online runs (`*online` datasets) are not offline results and are skipped. A cell with
no finished run shows as "missing", never as zero; unfinished runs are counted beside it.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import html
import json
import math
import re
import shlex
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).parent
REPO = HERE.parent
REFERENCES = HERE / "references.json"
ENV_REFERENCES = REPO / "envs" / "references.json"
CARD = HERE / "datasets.md"  # the committed dataset card: which build of each dataset the board is about

STANDARD_ENVS = ("walker-walk", "walker-run")
STANDARD_DATASETS = ("random", "medium", "medium-replay", "expert", "medium-expert")
KNOWN_ALGOS = ("bc", "cqlsac", "mopo", "mppi")
# Run directories of models, not policies: they have a model-error record, no score (reports.model_error).
MODEL_RUNS = {"dynamics"}
# Config fields that are bookkeeping, not budget or hyperparameters.
BOOKKEEPING = {"seed_group", "dataset_sha256", "algo", "seed", "seeds", "env", "dataset", "run_root", "wandb", "wandb_project"}
BUDGET_FIELDS = ("updates", "batch_size", "eval_every", "eval_episodes", "final_eval_episodes",
                 # the planner's budget (mppi) and the model fit's
                 "horizon", "num_samples", "num_iterations", "num_elites", "model_max_updates")
BOOTSTRAP_REPS = 10_000
IQM_REPS = 2_000


# ----------------------------------------------------------------------------- reading runs


@dataclasses.dataclass(eq=False)  # hashed by identity
class SeedRun:
    algo: str
    env: str
    dataset: str
    seed: int
    dir: Path
    final: dict | None  # final_eval.json, None while unfinished
    config: dict
    # Maps the normalized scores the run logged onto the suite's current references (identity
    # unless a reference changed after the run; see rescore).
    rescale: tuple[float, float] = (1.0, 0.0)


def split_list(value: Any) -> list[str]:
    """`a,b` (a string, or the tuple fire makes of it) -> ["a", "b"]; None -> []."""
    if value is None or value == "":
        return []
    if isinstance(value, (list, tuple)):
        return [str(v).strip() for v in value if str(v).strip()]
    return [v.strip() for v in str(value).split(",") if v.strip()]


def collect_runs(roots: list[Path]) -> tuple[list[SeedRun], list[str]]:
    """Every offline seed run under the roots (the first root wins for a duplicate run)."""
    found: dict[tuple, SeedRun] = {}
    notes = []
    for root in roots:
        if not root.exists():
            notes.append(f"run root {root} does not exist")
            continue
        for seed_dir in sorted(root.glob("*/*/*/seed*")):
            algo, env, dataset = seed_dir.parts[-4:-1]
            if dataset.endswith("online") or not seed_dir.name[4:].isdigit() or algo in MODEL_RUNS:
                continue
            key = (algo, env, dataset, int(seed_dir.name[4:]))
            if key in found:
                notes.append(f"{seed_dir} duplicates {found[key].dir}; the latter is used")
                continue
            final_path, config_path = seed_dir / "final_eval.json", seed_dir / "config.json"
            final = json.loads(final_path.read_text()) if final_path.exists() else None
            config = json.loads(config_path.read_text()) if config_path.exists() else {}
            found[key] = SeedRun(algo, env, dataset, key[3], seed_dir, final, config)
    return list(found.values()), notes


def rescore(runs: list[SeedRun], refs: dict[str, tuple[float, float]]) -> list[str]:
    """Normalize every finished run against the suite's current references (envs/references.json).

    A run records the references it was scored with (final_eval.json). When an env's expert
    reference changes (a stronger generator), runs on that env's unchanged datasets stay valid
    but their normalized scores do not: they are recomputed from the returns, and their logged
    curves mapped the same way. Returns one note per env whose runs were rescored.
    """
    moved: dict[tuple[str, float, float], int] = defaultdict(int)
    for run in runs:
        if run.final is None or run.env not in refs or "ref_max_score" not in run.final:
            continue
        old_lo, old_hi = float(run.final["ref_min_score"]), float(run.final["ref_max_score"])
        lo, hi = refs[run.env]
        if math.isclose(old_lo, lo, rel_tol=1e-6) and math.isclose(old_hi, hi, rel_tol=1e-6):
            continue
        # score = 100 (R - lo) / (hi - lo) with R = old_lo + score_old (old_hi - old_lo) / 100.
        scale = (old_hi - old_lo) / (hi - lo)
        run.rescale = (scale, 100 * (old_lo - lo) / (hi - lo))
        run.final = {**run.final, "normalized_score": 100 * (float(run.final["mean"]) - lo) / (hi - lo),
                     "ref_min_score": lo, "ref_max_score": hi}
        moved[(run.env, old_lo, old_hi)] += 1
    return [f"{n} runs on {env} were scored against references random {old_lo:.1f} / expert {old_hi:.1f}; "
            f"their scores and curves are renormalized to the current {refs[env][0]:.1f} / {refs[env][1]:.1f} "
            f"(envs/references.json)" for (env, old_lo, old_hi), n in sorted(moved.items())]


def card_hashes(card: Path = CARD) -> dict[tuple[str, str], str]:
    """(env, dataset) -> the 12-character content hash of the committed dataset build, read from
    the dataset card (`python -m datasets.card`); empty if there is no card."""
    if not card.exists():
        return {}
    rows = re.findall(r"^\| `dmc/([\w-]+)/([\w-]+)-v0` \|.*\| `([0-9a-f]{12})` \|$", card.read_text(), re.MULTILINE)
    return {(env, dataset): sha for env, dataset, sha in rows}


def drop_other_builds(runs: list[SeedRun], hashes: dict[tuple[str, str], str]) -> tuple[list[SeedRun], list[str]]:
    """Leave out runs that recorded training on another build of their dataset than the card's
    (e.g. before a stronger expert generator): their scores describe other data. Runs from
    before the hash was recorded cannot be told apart and stay."""
    kept, dropped = [], defaultdict(list)
    for run in runs:
        trained_on, current = run.config.get("dataset_sha256"), hashes.get((run.env, run.dataset))
        if trained_on and current and not trained_on.startswith(current):
            dropped[(run.env, run.dataset, trained_on[:12], current)].append(run)
        else:
            kept.append(run)
    return kept, [f"{len(rs)} run(s) on {env}/{dataset} trained on build {old} are left out: the dataset card's "
                  f"build is {new} ({', '.join(str(r.dir) for r in rs)})"
                  for (env, dataset, old, new), rs in sorted(dropped.items())]


def read_curve(run_dir: Path, rescale: tuple[float, float] = (1.0, 0.0)) -> list[tuple[int, float, bool]]:
    """(step, eval/normalized_score, is_final) of every evaluation in metrics.jsonl, mapped by
    `rescale` (scale, offset) onto the current references."""
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        if "eval/normalized_score" in record:
            value = float(record["eval/normalized_score"])  # non-finite values are stored as "nan"
            if math.isfinite(value):
                out.append((int(record["step"]), rescale[0] * value + rescale[1], bool(record.get("final"))))
    return out


# ----------------------------------------------------------------------------- statistics


def bootstrap_ci(values, reps: int = BOOTSTRAP_REPS, level: float = 0.95, seed: int = 0) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean over seeds; None with fewer than 2 values."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return None
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(reps, values.size))].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def iqm_interval(scores: np.ndarray, reps: int = IQM_REPS, seed: int = 0) -> tuple[float, float, float]:
    """rliable's interquartile mean of a (runs, tasks) score matrix with its 95% stratified
    bootstrap interval (runs resampled within each task)."""
    from rliable import library as rly
    from rliable import metrics

    np.random.seed(seed)  # rliable draws from numpy's global generator
    point, interval = rly.get_interval_estimates(
        {"x": np.asarray(scores, dtype=float)}, lambda x: np.array([metrics.aggregate_iqm(x)]), reps=reps)
    return float(point["x"][0]), float(interval["x"][0, 0]), float(interval["x"][1, 0])


@dataclasses.dataclass
class Cell:
    scores: list[float]
    seeds: list[int]
    returns: list[float]
    unfinished: list[int]

    @property
    def n(self) -> int:
        return len(self.scores)

    def summary(self) -> dict:
        if not self.scores:
            return {"n": 0, "unfinished": len(self.unfinished)}
        ci = bootstrap_ci(self.scores)
        return {"n": self.n, "mean": float(np.mean(self.scores)), "std": float(np.std(self.scores)), "ci": ci,
                "return": float(np.mean(self.returns)), "unfinished": len(self.unfinished)}


def format_cell(summary: dict) -> str:
    extra = f", +{summary['unfinished']} unfinished" if summary.get("unfinished") else ""
    if not summary["n"]:
        return "missing" + (f" ({summary['unfinished']} unfinished)" if summary["unfinished"] else "")
    ci = summary["ci"]
    ci_text = f"[{ci[0]:.1f}, {ci[1]:.1f}]" if ci else "[-]"
    return f"{summary['mean']:.1f} ± {summary['std']:.1f} {ci_text} (n={summary['n']}{extra})"


# ----------------------------------------------------------------------------- references


def load_references() -> dict:
    return json.loads(REFERENCES.read_text())


def suite_references() -> dict[str, tuple[float, float]]:
    """{env: (random return, expert return)} measured by the suite (envs/references.json)."""
    out = {}
    if ENV_REFERENCES.exists():
        for env, refs in json.loads(ENV_REFERENCES.read_text()).items():
            if "random" in refs and "expert" in refs:
                out[env] = (float(refs["random"]["mean"]), float(refs["expert"]["mean"]))
    return out


def normalize(value: float | None, env: str, refs: dict[str, tuple[float, float]]) -> str:
    if value is None or env not in refs:
        return "-"
    lo, hi = refs[env]
    return f"{100 * (value - lo) / (hi - lo):.1f}"


def reference_rows(envs: list[str]) -> list[list[str]]:
    """[env, reference, return, normalized with the suite's references, source] rows."""
    data, refs = load_references(), suite_references()
    measured = json.loads(ENV_REFERENCES.read_text()) if ENV_REFERENCES.exists() else {}
    rows = []
    for env in envs:
        for kind in ("random", "expert"):
            if kind in measured.get(env, {}):  # the suite's own measurement first, read where it is kept
                entry = measured[env][kind]
                rows.append([env, f"{kind} policy (this suite)", f"{entry['mean']:.1f} ± {entry['std']:.1f}",
                             normalize(entry["mean"], env, refs),
                             f"measured by the suite over {entry.get('episodes', '?')} episodes (envs/references.json)"])
            for entry in data.get(kind, {}).get(env, []):
                ret = f"{entry['mean']:g}" + (f" ± {entry['std']:g}" if entry.get("std") is not None else "")
                rows.append([env, f"{kind} policy", ret, normalize(entry["mean"], env, refs), entry["source"]])
        online = data.get("online", {})
        for agent in online.get("agents", []):
            for steps, value in zip(online["env_steps"], agent.get(env, [])):
                if value is not None:
                    rows.append([env, f"online {agent['name']} at {steps // 1000}k env steps", f"{value:g}",
                                 normalize(value, env, refs), agent["source"]])
        for agent in data.get("offline_prior", {}).get("agents", []):
            value = agent.get(env)
            ret = f"{value:g}" if value is not None else agent.get("note", "-")
            rows.append([env, f"{agent['name']} ({agent['dataset']} data)", ret, normalize(value, env, refs),
                         agent["source"]])
    return rows


def prior_reference(algo: str, env: str, dataset: str) -> str | None:
    """The earlier project's score of `algo` on `dataset` (its own data), normalized, if any."""
    refs = suite_references()
    for agent in load_references().get("offline_prior", {}).get("agents", []):
        if agent["algo"] == algo and agent["dataset"] == dataset and env in agent:
            value = agent[env]
            if value is None:
                return agent.get("short", agent.get("note", "-"))
            return f"{normalize(value, env, refs)} (return {value:g})"
    return None


# ----------------------------------------------------------------------------- the board


def ordered(found: set[str], preferred: tuple[str, ...]) -> list[str]:
    return [x for x in preferred if x in found] + sorted(found - set(preferred))


@dataclasses.dataclass
class Board:
    algos: list[str]
    envs: list[str]
    datasets: list[str]
    cells: dict[tuple[str, str, str], dict]
    aggregates: list[dict]
    budgets: list[str]
    per_seed: list[list[str]]
    curves: dict[tuple[str, str], Path]
    notes: list[str]
    command: str
    roots: list[Path]


def compute(runs: list[SeedRun], algos: list[str] | None = None, envs: list[str] | None = None,
            datasets: list[str] | None = None) -> tuple[list[str], list[str], list[str], dict, dict]:
    """The grid and its cells: ({(algo, env, dataset): summary}, {(algo, env, dataset): Cell})."""
    algos = algos or ordered({r.algo for r in runs}, KNOWN_ALGOS)
    envs = envs or ordered({r.env for r in runs} | set(STANDARD_ENVS), STANDARD_ENVS)
    datasets = datasets or ordered({r.dataset for r in runs} | set(STANDARD_DATASETS), STANDARD_DATASETS)
    cells: dict[tuple[str, str, str], Cell] = {(a, e, d): Cell([], [], [], []) for a in algos for e in envs
                                               for d in datasets}
    for run in sorted(runs, key=lambda r: r.seed):
        cell = cells.get((run.algo, run.env, run.dataset))
        if cell is None:
            continue
        if run.final is None:
            cell.unfinished.append(run.seed)
        else:
            cell.scores.append(float(run.final["normalized_score"]))
            cell.returns.append(float(run.final["mean"]))
            cell.seeds.append(run.seed)
    return algos, envs, datasets, {k: c.summary() for k, c in cells.items()}, cells


def aggregate(algos: list[str], cells: dict[tuple[str, str, str], Cell]) -> list[dict]:
    """rliable IQM per algorithm over every task (env, dataset) it finished; each task
    contributes its first k seeds, k = the fewest finished seeds over those tasks. When the
    algorithms cover different tasks, a second row per algorithm uses only the common tasks."""
    tasks = {a: sorted((e, d) for (a2, e, d), c in cells.items() if a2 == a and c.n) for a in algos}
    common = sorted(set.intersection(*(set(t) for t in tasks.values()))) if tasks else []
    rows = []
    for scope in ("all", "common"):
        if scope == "common" and (len(algos) < 2 or all(tasks[a] == common for a in algos)):
            break
        for a in algos:
            chosen = tasks[a] if scope == "all" else common
            if not chosen:
                rows.append({"algo": a, "scope": scope, "tasks": 0})
                continue
            k = min(cells[(a, e, d)].n for e, d in chosen)
            matrix = np.array([[cells[(a, e, d)].scores[i] for e, d in chosen] for i in range(k)])
            iqm, lo, hi = iqm_interval(matrix)
            rows.append({"algo": a, "scope": scope, "tasks": len(chosen), "runs_per_task": k, "iqm": iqm,
                         "ci": (lo, hi), "mean": float(matrix.mean())})
    return rows


def budget_lines(runs: list[SeedRun], algos: list[str]) -> list[str]:
    """Per algorithm: the budgets (and any differing config fields) found in config.json."""
    lines = []
    for algo in algos:
        mine = [r for r in runs if r.algo == algo]
        if not mine:
            continue
        finished = [r for r in mine if r.final]
        values: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for r in mine:
            for k, v in r.config.items():
                if k not in BOOKKEEPING:
                    values[k][json.dumps(v)] += 1
        for counts in values.values():  # a field added after some runs were made differs too
            if (missing := len(mine) - sum(counts.values())) > 0:
                counts["not recorded"] = missing
        parts = []
        for k in BUDGET_FIELDS:
            if k in values:
                parts.append(f"{k} " + " / ".join(f"{v} ({n} runs)" if len(values[k]) > 1 else v
                                                  for v, n in sorted(values[k].items())))
        done = sorted({r.final.get("updates") for r in finished if r.final.get("updates") is not None})
        episodes = sorted({r.final.get("episodes") for r in finished if r.final.get("episodes") is not None})
        varying = [f"{k}: " + " / ".join(f"{v} ({n})" for v, n in sorted(c.items()))
                   for k, c in sorted(values.items()) if len(c) > 1 and k not in BUDGET_FIELDS]
        machines = defaultdict(int)
        for r in finished:
            m = r.final.get("machine")
            machines[f"{m['accelerator']}, {m['cpu']}, jax {m['jax']}" if m else "not recorded"] += 1
        lines.append(f"`{algo}`: {len(mine)} runs ({len(finished)} finished); " + ", ".join(parts)
                     + (f"; updates done at the final eval: {', '.join(f'{u:,}' for u in done)}" if done else "")
                     + (f"; final eval episodes: {', '.join(map(str, episodes))}" if episodes else "")
                     + (f"; config fields that differ between runs: {'; '.join(varying)}" if varying else "")
                     + "; computed on: " + "; ".join(f"{m} ({n} run{'s' * (n != 1)})" for m, n in sorted(machines.items())))
    return lines


def plot_curves(runs: list[SeedRun], algos: list[str], envs: list[str], datasets: list[str],
                out: Path) -> dict[tuple[str, str], Path]:
    """One PNG per env/dataset with runs: mean over seeds per algorithm, min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = {}
    (out / "curves").mkdir(parents=True, exist_ok=True)
    for env in envs:
        for dataset in datasets:
            here = [r for r in runs if r.env == env and r.dataset == dataset and r.algo in algos]
            curves = {r: read_curve(r.dir, r.rescale) for r in here}
            if not any(curves.values()):
                continue
            fig, ax = plt.subplots(figsize=(6.4, 4))
            for algo in algos:
                by_step: dict[int, list[float]] = defaultdict(list)
                finals: list[tuple[int, float]] = []
                for r, curve in curves.items():
                    if r.algo != algo:
                        continue
                    for step, score, final in curve:
                        by_step[step].append(score)
                        if final:
                            finals.append((step, score))
                if not by_step:
                    continue
                steps = sorted(by_step)
                mean = np.array([np.mean(by_step[s]) for s in steps])
                n_seeds = len({r.seed for r in curves if r.algo == algo and curves[r]})
                (line,) = ax.plot(steps, mean, marker=".", label=f"{algo} ({n_seeds} seed{'s' * (n_seeds > 1)})")
                if n_seeds > 1:
                    ax.fill_between(steps, [min(by_step[s]) for s in steps], [max(by_step[s]) for s in steps],
                                    color=line.get_color(), alpha=0.2)
                if finals:
                    ax.plot(*zip(*finals), "*", color=line.get_color(), markersize=9)
            ax.axhline(0, color="grey", lw=0.8, ls=":")
            ax.axhline(100, color="grey", lw=0.8, ls="--")
            ax.set(title=f"{env} / {dataset}", xlabel="gradient updates",
                   ylabel="normalized score (0 random, 100 expert)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8, title="mean, min-max band; * final eval", title_fontsize=7)
            fig.tight_layout()
            path = out / "curves" / f"{env}_{dataset}.png"
            fig.savefig(path, dpi=90)
            plt.close(fig)
            paths[(env, dataset)] = path
    return paths


def git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=False).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def build(runs: Any = "runs", out: Any = HERE, *, algos: Any = None, envs: Any = None, datasets: Any = None,
          command: str | None = None, plots: bool = True, card: Path = CARD) -> Board:
    """Read the run roots, write leaderboard.md / .html and curves/ under `out`, return the board."""
    roots = [Path(r) for r in split_list(runs)] or [Path("runs")]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    seed_runs, notes = collect_runs(roots)
    seed_runs, dropped = drop_other_builds(seed_runs, card_hashes(card))
    notes += dropped + rescore(seed_runs, suite_references())
    algos, envs, datasets, cells, raw = compute(seed_runs, split_list(algos) or None, split_list(envs) or None,
                                                split_list(datasets) or None)
    per_seed = [[r.algo, r.env, r.dataset, str(r.seed), f"{r.final['normalized_score']:.1f}",
                 f"{r.final['mean']:.1f}", str(r.final.get("episodes", "-")), f"{r.final.get('updates', '-')}"]
                for r in sorted(seed_runs, key=lambda r: (r.algo, r.env, r.dataset, r.seed))
                if r.final and r.algo in algos and r.env in envs and r.dataset in datasets]
    board = Board(algos, envs, datasets, cells, aggregate(algos, raw), budget_lines(seed_runs, algos), per_seed,
                  plot_curves(seed_runs, algos, envs, datasets, out) if plots else {}, notes,
                  command or "python -m reports.leaderboard " + shlex.join(sys.argv[1:]), roots)
    (out / "leaderboard.md").write_text(render_markdown(board, out))
    (out / "leaderboard.html").write_text(render_html(board))
    return board


# ----------------------------------------------------------------------------- rendering


def main_table(board: Board) -> tuple[list[str], list[list[str]]]:
    header = ["env", "dataset", *board.algos, "earlier project (its own data)"]
    rows = []
    for env in board.envs:
        for dataset in board.datasets:
            prior = [(a, p) for a in board.algos if (p := prior_reference(a, env, dataset))]
            rows.append([env, dataset, *(format_cell(board.cells[(a, env, dataset)]) for a in board.algos),
                         "; ".join(f"{a}: {p}" for a, p in prior)])
    return header, rows


def aggregate_table(board: Board) -> tuple[list[str], list[list[str]]]:
    header = ["algorithm", "tasks", "runs per task", "IQM", "95% CI (stratified bootstrap)", "mean"]
    rows = []
    for row in board.aggregates:
        name = row["algo"] + ("" if row["scope"] == "all" else " (tasks common to all algorithms)")
        if not row["tasks"]:
            rows.append([name, "0", "-", "missing", "-", "-"])
        else:
            rows.append([name, str(row["tasks"]), str(row["runs_per_task"]), f"{row['iqm']:.1f}",
                         f"[{row['ci'][0]:.1f}, {row['ci'][1]:.1f}]", f"{row['mean']:.1f}"])
    return header, rows


REFERENCE_HEADER = ["env", "reference", "return", "normalized (suite references)", "source"]
PER_SEED_HEADER = ["algo", "env", "dataset", "seed", "normalized", "return", "episodes", "updates"]


def md_table(header: list[str], rows: list[list[str]]) -> str:
    def esc(cell: Any) -> str:
        return str(cell).replace("|", "\\|")

    return "\n".join(["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(map(esc, r)) + " |" for r in rows]) + "\n"


def preamble(board: Board) -> list[str]:
    today = datetime.date.today().isoformat()
    roots = ", ".join(f"`{r}`" for r in board.roots)
    generated = (f"Generated by `{board.command}` on {today} (code at commit {git_commit()}) from the run "
                 f"directories under {roots}.")
    protocol = ("Score: the final evaluation of each run (final_eval.json; deterministic mean action, fresh eval "
                "seeds), normalized as 100 * (R - random) / (expert - random) with the dataset's references. "
                "Cells: mean ± std over seeds (population std), [95% percentile bootstrap interval of the mean "
                f"over seeds, {BOOTSTRAP_REPS:,} resamples], n = finished seeds. \"missing\" = no finished run "
                "(never a zero). Online runs are not listed.")
    return [generated, protocol]


def render_markdown(board: Board, out: Path) -> str:
    budgets = "\n".join(f"- {line}" for line in board.budgets) + "\n" if board.budgets else "No runs found.\n"
    iqm_text = (f"IQM of the normalized scores over every (env, dataset) task an algorithm finished, each task "
                f"contributing the same number of runs (its lowest seeds); 95% stratified bootstrap interval "
                f"({IQM_REPS:,} resamples, rliable). Algorithms covering different tasks are not directly "
                f"comparable on the first rows.\n")
    reference_text = ("From `reports/references.json`; normalized with the suite's measured random/expert returns "
                      "(`envs/references.json`). Online learners interact with the env; they are context, not "
                      "offline results.\n")
    curve_text = ("eval/normalized_score (periodic evals of eval_episodes episodes; star: final eval) vs "
                  "gradient updates; mean over seeds, min-max band.\n")
    parts = ["# Leaderboard: offline RL on DeepMind Control walker\n", *(p + "\n" for p in preamble(board))]
    parts += ["## Budgets (from the runs' config.json)\n", budgets]
    parts += ["## Final normalized score\n", md_table(*main_table(board))]
    parts += ["## Aggregate: interquartile mean over tasks (rliable)\n", iqm_text, md_table(*aggregate_table(board))]
    parts += ["## Reference numbers\n", reference_text, md_table(REFERENCE_HEADER, reference_rows(board.envs))]
    if board.curves:
        parts += ["## Learning curves\n", curve_text]
        parts += [f"![{env}/{dataset}]({path.relative_to(out).as_posix()})\n" for (env, dataset), path
                  in board.curves.items()]
    parts += ["## Per seed\n", md_table(PER_SEED_HEADER, board.per_seed) if board.per_seed else "No finished runs.\n"]
    if board.notes:
        parts += ["## Notes\n", "\n".join(f"- {n}" for n in board.notes) + "\n"]
    return "\n".join(parts)


def html_table(header: list[str], rows: list[list[str]], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td class=\"{'missing' if str(c).startswith('missing') else ''}\">"
                                    f"{html.escape(str(c))}</td>" for c in row) + "</tr>\n" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>\n{body}</tbody></table>'


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1400px;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #bbb;padding:4px 8px}
th{background:#eee}td.missing{color:#999;font-style:italic}.curves{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0}figcaption{font-size:13px;text-align:center}"""

# Marks every image with its decoded width once the page has loaded (read back by the
# headless-browser test through --dump-dom).
IMG_CHECK = """<script>window.addEventListener('load',function(){document.querySelectorAll('img').forEach(
function(i){i.setAttribute('data-natural-width',i.naturalWidth);i.setAttribute('data-complete',i.complete);});
document.body.setAttribute('data-loaded','1');});</script>"""


def render_html(board: Board) -> str:
    figures = []
    for (env, dataset), path in board.curves.items():
        data = base64.b64encode(path.read_bytes()).decode()
        figures.append(f'<figure><img class="curve" alt="{html.escape(env)}/{html.escape(dataset)}" '
                       f'src="data:image/png;base64,{data}"><figcaption>{html.escape(env)} / '
                       f'{html.escape(dataset)}</figcaption></figure>')
    body = [
        "<h1>Leaderboard: offline RL on DeepMind Control walker</h1>",
        *(f"<p>{html.escape(p)}</p>" for p in preamble(board)),
        "<h2>Budgets (from the runs' config.json)</h2><ul>",
        *(f"<li>{html.escape(line)}</li>" for line in board.budgets), "</ul>",
        "<h2>Final normalized score</h2>", html_table(*main_table(board), "scores"),
        "<h2>Aggregate: interquartile mean over tasks (rliable)</h2>",
        html_table(*aggregate_table(board), "aggregate"),
        "<h2>Reference numbers</h2>", html_table(REFERENCE_HEADER, reference_rows(board.envs), "references"),
        "<h2>Learning curves</h2>", f'<div class="curves">{"".join(figures)}</div>',
        "<h2>Per seed</h2>", html_table(PER_SEED_HEADER, board.per_seed, "per-seed"),
    ]
    if board.notes:
        body += ["<h2>Notes</h2><ul>", *(f"<li>{html.escape(n)}</li>" for n in board.notes), "</ul>"]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>walker offline RL leaderboard</title>"
            f"<style>{STYLE}</style></head>\n<body>\n" + "\n".join(body) + f"\n{IMG_CHECK}\n</body></html>\n")


README_START = "<!-- leaderboard table: copied from reports/leaderboard.md -->"
README_END = "<!-- end of leaderboard table -->"
AGGREGATE_INTRO = ("Aggregate (rliable's interquartile mean over the tasks each algorithm finished, each task "
                   "contributing the same number of runs; stratified bootstrap interval):")


def update_readme(path: Path, board: Board) -> None:
    """Replace the README's block between the leaderboard markers with the current tables, so
    the README never quotes a table other than the one the runs give."""
    text = path.read_text()
    if text.count(README_START) != 1 or text.count(README_END) != 1:
        raise ValueError(f"{path} needs exactly one {README_START!r} ... {README_END!r} block")
    head, rest = text.split(README_START)
    _, tail = rest.split(README_END)
    block = (f"{README_START}\n{md_table(*main_table(board))}\n{AGGREGATE_INTRO}\n\n"
             f"{md_table(*aggregate_table(board))}{README_END}")
    path.write_text(head + block + tail)


def main(runs: Any = "runs", out: Any = str(HERE), algos: Any = None, envs: Any = None, datasets: Any = None,
         readme: str = "") -> None:
    """Build the leaderboard from local run directories.

    Args:
      runs: run roots, comma-separated (runs/<algo>/<env>/<dataset>/seed<N>/ under each)
      out: folder for leaderboard.md, leaderboard.html and curves/
      algos, envs, datasets: restrict (and order) the grid, comma-separated; default: what is found
        plus the standard envs and datasets
      readme: also refresh this README's table block (between the leaderboard markers)
    """
    board = build(runs, out, algos=algos, envs=envs, datasets=datasets)
    print(md_table(*main_table(board)))
    print(md_table(*aggregate_table(board)))
    if readme:
        update_readme(Path(readme), board)
        print(f"updated the leaderboard block of {readme}")
    print(f"wrote {Path(out) / 'leaderboard.md'}, {Path(out) / 'leaderboard.html'} and {len(board.curves)} curve(s)")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
