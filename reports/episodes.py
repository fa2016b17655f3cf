"""What a score is made of: a run's final-evaluation episodes, split at two normalized levels.

    python -m reports.episodes reports/runs/bc/walker-run/expert reports/runs/cqlsac/walker-run/expert
    python -m reports.episodes runs/cqlsac/walker-run/expert --trace   # re-run, tracing the torso
    python -m reports.episodes runs/cqlsac/walker-run/expert --data-fit   # policy vs data by episode step
    python -m reports.episodes runs/cqlsac/walker-run/expert --value-fit  # critics vs the data's returns

A mean of 50 hides whether every episode is half as good as the expert's or half the episodes
are the expert's and the rest failed (a walker that falls and never gets up scores near 0).
Each argument is a run directory or a folder of them (`seed*/`); one markdown row per run.
Episodes are normalized with the suite's current references (envs/references.json), as the
leaderboard does, so runs scored against an older expert read the same as there.

`--trace` (walker tasks, runs with a checkpoint) re-runs each run's final evaluation (same
episodes, same seeds) through the shared harness, reading the torso's height and uprightness
every step, and says how the failed episodes fail: never standing, or standing and then
falling for good, and how often the policy gets up again after a fall. On the machine and jax
version that recorded the run, the re-run's returns are the recorded ones; elsewhere float
rounding and chaotic contacts can flip some episodes, so the traced rows carry their own mean.

`--data-fit` compares each run's evaluation policy with its training data's actions, by how far
into its episode a transition is: the squared distance per action dimension, for the first 25
steps (the drop from the air every DMC walker episode starts with), 25-50, 50-100, 100-200 and
the rest. `--value-fit` (cqlsac and mopo runs) sets the critics' value of the data's own
transitions, min over the two critics of Q(s, a), beside what the data actually earned from
there (the discounted return-to-go, `gamma` of the run) and the one-step TD residual
Q(s, a) - (r + gamma Q(s', mean action)), by the same windows up to step 800 (later, the time
limit cuts the return-to-go short).

`--against RUN_DIR[,RUN_DIR...]` adds the paired difference to the reference run of the same env,
dataset and eval seed (run or cell directories; each row meets the one of its seed): the harness
starts episode i of both from the same env seed, so the mean per-episode difference in normalized
score, its standard error and the count of episodes ahead, behind and equal say whether, say, a
planner is below the policy it borrows from by more than the episodes' own spread. Over several
runs, with or without `--against`, a last row gives the mean ± sample std (ddof 1) over them; the
leaderboard's cells use the population std, so the same three seeds print a smaller spread there.
"""

from __future__ import annotations

import json
from pathlib import Path

import fire
import jax
import numpy as np

import datasets
import envs
from algorithms import mppi
from algorithms.common import CheckpointError, ConfigError
from envs.evaluation import normalized_score
from evaluate import load_run
from reports.leaderboard import suite_references

# "Up": torso at least 1.0 high (dm_control's walker stands at 1.2; its standing term pays
# half at 0.9) and within about 45 degrees of vertical (upright = cos of the tilt).
UP_HEIGHT, UP_UPRIGHT = 1.0, 0.7
STOOD_STEPS = 25  # an up stretch this long (0.6 s) is standing, not the first fall passing through
FALLEN_STEPS = 50  # a down stretch this long is a fall, not a stumble


def normalized_episodes(final_eval: dict, references: tuple[float, float] | None = None) -> np.ndarray:
    """A final evaluation's per-episode normalized scores against `references` (random, expert
    return; default: those the evaluation recorded)."""
    return normalized_score(np.asarray(final_eval["returns"], dtype=float),
                            *(references or (final_eval["ref_min_score"], final_eval["ref_max_score"])))


def episode_split(final_eval: dict, failed_below: float = 15.0, expert_from: float = 85.0,
                  references: tuple[float, float] | None = None) -> dict:
    """Counts of a final evaluation's episodes whose normalized score is below `failed_below`
    and at least `expert_from`, with the median, from its returns and `references` (random,
    expert return; default: those the evaluation recorded)."""
    normalized = normalized_episodes(final_eval, references)
    return {"episodes": len(normalized), "failed": int((normalized < failed_below).sum()),
            "expert": int((normalized >= expert_from).sum()), "median": float(np.median(normalized)),
            "mean": float(normalized.mean())}


def run_dirs(paths: list[str]) -> list[Path]:
    found = []
    for path in map(Path, paths):
        runs = [path] if (path / "final_eval.json").exists() else sorted(p.parent for p in path.glob("seed*/final_eval.json"))
        if not runs:  # a typo must not vanish from the table
            raise SystemExit(f"no final_eval.json in or under {path}")
        found.extend(runs)
    return found


def load_final_eval(run: Path) -> dict:
    """A run's final_eval.json, with the dataset from its config.json (for pairing runs); older
    records keep the eval seed only in config.json."""
    final = json.loads((run / "final_eval.json").read_text())
    config = json.loads((run / "config.json").read_text()) if (run / "config.json").exists() else {}
    final.setdefault("seed", config.get("seed"))
    final.setdefault("dataset", config.get("dataset"))
    return final


PAIRING_FIELDS = ("env_id", "dataset", "seed")


def pairing_key(final: dict) -> tuple[str, str | None, int]:
    """(env id, dataset, eval seed): a row is paired only with a reference run of the same three."""
    return tuple(final.get(name) for name in PAIRING_FIELDS)


def reference_runs(against: str | list[str] | tuple[str, ...]) -> dict[tuple[str, str | None, int], dict]:
    """The final evaluations under `against` (run or cell directories; a comma-separated string
    from the command line), keyed by `pairing_key` so each row meets the run it is paired with."""
    paths = against.split(",") if isinstance(against, str) else [str(path) for path in against]
    found: dict[tuple[str, str | None, int], dict] = {}
    for run in run_dirs([path.strip() for path in paths if path.strip()]):
        final = load_final_eval(run)
        key = pairing_key(final)
        if key in found:  # two policies of one seed: which one a row is paired with must not be a guess
            raise SystemExit(f"--against holds two runs of {key[0]} {key[1] or ''} seed {key[2]}; give one")
        found[key] = final
    return found


def table(paths: list[str], failed_below: float = 15.0, expert_from: float = 85.0,
          against: str | list[str] | tuple[str, ...] | None = None) -> str:
    """One row per run: episode counts, median and mean normalized score; with `against`, the
    paired difference to the reference run of the same env and seed. Over several runs a last
    row gives the mean ± sample std over them of the mean (and of the paired mean), each run
    weighing the same."""
    header = f"| run | episodes | normalized < {failed_below:g} | normalized >= {expert_from:g} | median | mean |"
    if against:
        reference_evals = reference_runs(against)
        header += " minus --against, paired by episode (± s.e.) | ahead / behind / equal |"
    rows = [header, "|---" * header.count(" |") + "|"]
    references = suite_references()
    means, paired_means = [], []
    for run in run_dirs(paths):
        final = load_final_eval(run)
        env_references = references.get(final.get("env_id"))
        split = episode_split(final, failed_below, expert_from, env_references)
        means.append(split["mean"])
        row = (f"| {run} | {split['episodes']} | {split['failed']} | {split['expert']} | "
               f"{split['median']:.1f} | {split['mean']:.1f} |")
        if against:
            key = pairing_key(final)
            if key not in reference_evals:
                raise SystemExit(f"--against holds no run of {key[0]} {key[1] or ''} seed {key[2]} to pair {run} with")
            difference = paired_episodes(final, reference_evals[key], env_references)
            mean, error = difference.mean(), difference.std(ddof=1) / np.sqrt(len(difference))
            paired_means.append(mean)
            row += (f" {mean:+.2f} ± {error:.2f} | "
                    f"{(difference > 0).sum()} / {(difference < 0).sum()} / {(difference == 0).sum()} |")
        rows.append(row)
    if len(means) > 1:
        summary = f"| mean ± sample std over the {len(means)} runs | | | | | {np.mean(means):.1f} ± {np.std(means, ddof=1):.1f} |"
        if against:
            summary += f" {np.mean(paired_means):+.2f} ± {np.std(paired_means, ddof=1):.2f} | |"
        rows.append(summary)
    return "\n".join(rows)


def paired_episodes(final_eval: dict, against: dict, references: tuple[float, float] | None = None
                    ) -> np.ndarray:
    """Per-episode normalized difference `final_eval` minus `against` (episode i of both starts
    from the same env seed); refuses runs of another env, dataset, eval seed or episode count."""
    for name in PAIRING_FIELDS:
        if final_eval.get(name) != against.get(name):
            raise ConfigError(f"--against: {name} differs ({final_eval.get(name)} vs {against.get(name)}), so "
                              "the episodes are not the same")
    if len(final_eval["returns"]) != len(against["returns"]) or len(against["returns"]) < 2:
        raise ConfigError("--against: needs the same number (>= 2) of episodes in both runs")
    return normalized_episodes(final_eval, references) - normalized_episodes(against, references)


def stretches(up: np.ndarray) -> list[tuple[bool, int]]:
    """Run-length encoding of a boolean trace: [(value, length), ...] in order."""
    if len(up) == 0:
        return []
    edges = np.flatnonzero(np.diff(up.astype(np.int8))) + 1
    starts = np.concatenate([[0], edges])
    lengths = np.diff(np.concatenate([starts, [len(up)]]))
    return [(bool(up[s]), int(n)) for s, n in zip(starts, lengths)]


def classify(up: np.ndarray) -> dict[str, bool]:
    """How one episode went, from its per-step "up" trace: did the walker ever stand (an up
    stretch of STOOD_STEPS), is it down for good at the end (the last FALLEN_STEPS steps and
    more, after having stood), and did it stand again after a fall (down FALLEN_STEPS)?"""
    runs = stretches(up)
    stood = [v and n >= STOOD_STEPS for v, n in runs]
    fell = [not v and n >= FALLEN_STEPS for v, n in runs]
    got_up_again = any(stood[j] and any(fell[i] and any(stood[:i]) for i in range(j)) for j in range(len(runs)))
    ends_down = bool(runs) and fell[-1]
    return {"never_stood": not any(stood), "down_for_good": any(stood) and ends_down, "got_up_again": got_up_again}


def trace_run(run_dir: Path, episodes: int | None = None, failed_below: float = 15.0) -> dict:
    """Re-run a run's final evaluation with the torso traced; counts of how episodes went."""
    config, act_fn, params, action_repeat = load_run(run_dir)
    if envs.parse_env_id(config.env)[0] != "walker":  # checked once, before any episode runs
        raise SystemExit(f"--trace reads a walker's torso; {config.env} has none")
    count = episodes or config.final_eval_episodes
    up: list[list[bool]] = [[] for _ in range(count)]

    def on_step(episode: int, env: envs.DMCEnv, reward: float) -> None:
        physics = env.physics
        up[episode].append(physics.torso_height() >= UP_HEIGHT and physics.torso_upright() >= UP_UPRIGHT)

    references = suite_references().get(config.env)
    result = envs.evaluate(config.env, act_fn, params, count, seed=config.seed, action_repeat=action_repeat,
                           references=references, on_step=on_step)
    normalized = normalized_score(np.asarray(result.returns), result.ref_min_score, result.ref_max_score)
    traces = [np.asarray(u) for u in up]
    kinds = [classify(u) for u in traces]
    failed = normalized < failed_below
    return {"episodes": count, "failed": int(failed.sum()),
            "never_stood": sum(k["never_stood"] for k in kinds),
            "down_for_good": sum(k["down_for_good"] for k in kinds),
            "got_up_again": sum(k["got_up_again"] for k in kinds),
            "down_share": float(np.mean([1 - u.mean() for u in traces])),
            "mean": float(normalized.mean()), "returns": list(result.returns)}


def trace_table(paths: list[str], episodes: int | None = None, failed_below: float = 15.0) -> str:
    header = (f"| run (re-run, traced) | episodes | normalized < {failed_below:g} | never stood | "
              "stood, then down for good | stood again after a fall | steps down | mean |")
    rows = [header, "|---|---|---|---|---|---|---|---|"]
    for run in run_dirs(paths):
        t = trace_run(run, episodes, failed_below)
        rows.append(f"| {run} | {t['episodes']} | {t['failed']} | {t['never_stood']} | {t['down_for_good']} | "
                    f"{t['got_up_again']} | {100 * t['down_share']:.0f}% | {t['mean']:.1f} |")
    return "\n".join(rows)


EPISODE_WINDOWS: tuple[tuple[int, int | None], ...] = ((0, 25), (25, 50), (50, 100), (100, 200), (200, None))


def window_means(values: np.ndarray, step: np.ndarray, windows: tuple[tuple[int, int | None], ...]
                 ) -> dict[str, float]:
    """Mean of `values` over the transitions whose episode step is in each [lo, hi) window
    (hi None: to the episode's end), keyed 'lo-hi' ('lo-end')."""
    return {f"{lo}-{hi or 'end'}": float(values[(step >= lo) & ((step < hi) if hi else True)].mean())
            for lo, hi in windows}


def data_fit(run_dir: Path, chunk: int = 10_000) -> dict[str, float]:
    """Mean squared distance per action dimension between the run's evaluation policy and its
    dataset's actions, by step within the episode (EPISODE_WINDOWS)."""
    config, act_fn, params, _ = load_run(run_dir)
    if not hasattr(config, "dataset") or getattr(config, "online", False):
        raise SystemExit(f"--data-fit needs an offline run with a dataset; {run_dir} is not one")
    data = datasets.load(config.env, config.dataset)
    policy, key = jax.jit(act_fn), jax.random.PRNGKey(0)  # the deterministic action: the key is unused
    actions = np.concatenate([np.asarray(policy(params, data.obs[i:i + chunk], key))
                              for i in range(0, data.size, chunk)])
    distance = ((actions - np.asarray(data.action)) ** 2).mean(-1)
    return window_means(distance, data.episode_step, EPISODE_WINDOWS)


def data_fit_table(paths: list[str]) -> str:
    rows = []
    for run in run_dirs(paths):
        fit = data_fit(run)
        rows.append(f"| {run} | " + " | ".join(f"{v:.3f}" for v in fit.values()) + " |")
    return window_table("run", list(fit), rows)


def window_table(first_column: str, windows: list[str], rows: list[str]) -> str:
    header = f"| {first_column} | " + " | ".join(f"steps {w}" for w in windows) + " |"
    return "\n".join([header, "|---" * (len(windows) + 1) + "|", *rows])


VALUE_WINDOWS = ((0, 25), (25, 50), (50, 100), (100, 200), (200, 800))


def return_to_go(reward: np.ndarray, episode_end: np.ndarray, gamma: float) -> np.ndarray:
    """Discounted sum of each transition's reward and the later ones of its episode."""
    out, running = np.zeros(len(reward)), 0.0
    for i in range(len(reward) - 1, -1, -1):
        running = reward[i] + (0.0 if episode_end[i] else gamma * running)
        out[i] = running
    return out


def value_fit(run_dir: Path) -> dict[str, dict[str, float]]:
    """By episode window: the data's mean return-to-go, the critics' Q of the data's actions,
    and the mean TD residual against the evaluation policy's action at s'."""
    config = load_run(run_dir)[0]
    if getattr(config, "online", False) or not hasattr(config, "gamma"):
        raise SystemExit(f"--value-fit needs an offline cqlsac or mopo run; {run_dir} is not one")
    data = datasets.load(config.env, config.dataset)
    prior, params = mppi.load_prior(run_dir, data.obs.shape[-1], data.action.shape[-1])
    norm = lambda obs: (obs - params.obs_mean) / params.obs_std
    q_data = np.asarray(prior.critic.apply(params.critic, norm(data.obs), data.action).min(0))
    q_next = np.asarray(prior.value(params, data.next_obs))
    reward = np.asarray(data.reward, np.float64)
    residual = q_data - (reward + config.gamma * q_next)
    earned = return_to_go(reward, np.asarray(data.episode_end), config.gamma)
    by_window = {name: window_means(values, data.episode_step, VALUE_WINDOWS)
                 for name, values in (("return", earned), ("q", q_data), ("td_residual", residual))}
    return {window: {name: by_window[name][window] for name in by_window} for window in by_window["return"]}


def value_fit_table(paths: list[str]) -> str:
    rows = []
    for run in run_dirs(paths):
        fit = value_fit(run)
        cells = [f"{w['return']:.1f} / {w['q']:.1f} / {w['td_residual']:+.2f}" for w in fit.values()]
        rows.append(f"| {run} | " + " | ".join(cells) + " |")
    return window_table("run (return-to-go / Q / TD residual)", list(fit), rows)


def main(*paths: str, failed_below: float = 15.0, expert_from: float = 85.0, trace: bool = False,
         data_fit: bool = False, value_fit: bool = False, episodes: int | None = None,
         against: str | tuple[str, ...] | None = None
         ) -> None:
    try:
        if value_fit:
            print(value_fit_table(list(paths)))
        elif data_fit:
            print(data_fit_table(list(paths)))
        else:
            print(trace_table(list(paths), episodes, failed_below) if trace else table(list(paths), failed_below,
                                                                                        expert_from, against))
    except (ConfigError, CheckpointError) as exc:  # e.g. --trace on an archived record (no checkpoint)
        raise SystemExit(f"error: {exc}") from None


if __name__ == "__main__":
    fire.Fire(main)
