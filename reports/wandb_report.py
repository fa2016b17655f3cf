"""A wandb Report comparing the algorithms, built from what the local runs say exists.

    python -m reports.wandb_report --entity E --project P            # creates the report (network)
    python -m reports.wandb_report --entity E --dry-run --spec-out spec.json   # only the spec, offline

Runs log to wandb with group = "<env>/<dataset>" and job_type = algorithm (algorithms/common.py),
so the report needs no run ids: for every env/dataset found under `--runs` it adds one panel
grid whose runsets (one per algorithm) are filtered by that group and job type, with
eval/normalized_score against steps (mean over seeds, min-max band) and the final normalized
score per algorithm; the leaderboard tables (reports.leaderboard, from the same local runs) go
in as markdown. Offline runs must be uploaded first (`wandb sync runs/*/*/*/seed*/wandb/offline-run-*`).

Needs the optional extra `pip install -e '.[wandb-report]'` (wandb-workspaces; in `[dev]` too).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from reports import leaderboard

HERE = Path(__file__).parent
METRIC = "eval/normalized_score"


def group_filter(env: str, dataset: str, algo: str) -> str:
    """The runset filter: wandb group = env/dataset, job type = algorithm."""
    return f"Metric('Group') == '{env}/{dataset}' and Metric('JobType') == '{algo}'"


def build_report(entity: str, project: str | None = None, runs: Any = "runs", title: str | None = None,
                 offline: bool = False):
    """The wandb_workspaces Report for the local runs; builds only the object (no network).

    `offline`: the runsets name no entity/project of their own (the report's apply), because
    wandb-workspaces resolves a runset's project id on the server when it serializes one."""
    import wandb_workspaces.reports.v2 as wr

    roots = [Path(r) for r in leaderboard.split_list(runs)] or [Path("runs")]
    seed_runs, _ = leaderboard.collect_runs(roots)
    if project is None:
        projects = {r.config.get("wandb_project") for r in seed_runs} - {None}
        project = projects.pop() if len(projects) == 1 else "walker-offline-rl"
    algos, envs, datasets, cells, raw = leaderboard.compute(seed_runs)
    board = leaderboard.Board(algos, envs, datasets, cells, leaderboard.aggregate(algos, raw),
                              leaderboard.budget_lines(seed_runs, algos), [], {}, [],
                              f"python -m reports.wandb_report --entity {entity} --project {project}", roots)
    present: dict[tuple[str, str], list[str]] = defaultdict(list)
    for r in seed_runs:
        if r.algo not in present[(r.env, r.dataset)]:
            present[(r.env, r.dataset)].append(r.algo)
    blocks: list = [
        wr.MarkdownBlock(text="\n\n".join(leaderboard.preamble(board))),
        wr.H2(text="Final normalized score"),
        wr.MarkdownBlock(text=leaderboard.md_table(*leaderboard.main_table(board))),
        wr.H2(text="Aggregate: interquartile mean over tasks (rliable)"),
        wr.MarkdownBlock(text=leaderboard.md_table(*leaderboard.aggregate_table(board))),
    ]
    for env in envs:
        for dataset in datasets:
            cell_algos = [a for a in algos if a in present.get((env, dataset), [])]
            if not cell_algos:
                continue
            where = {} if offline else {"entity": entity, "project": project}
            runsets = [wr.Runset(name=algo, filters=group_filter(env, dataset, algo), **where) for algo in cell_algos]
            panels = [
                wr.LinePlot(title=f"{env} / {dataset}: {METRIC}", x="Step", y=[METRIC], title_x="gradient updates",
                            title_y="normalized score (0 random, 100 expert)", groupby="JobType",
                            groupby_aggfunc="mean", groupby_rangefunc="minmax",
                            layout=wr.Layout(x=0, y=0, w=16, h=8)),
                wr.BarPlot(title=f"{env} / {dataset}: final normalized score",
                           metrics=[wr.SummaryMetric("final/normalized_score")], groupby="JobType",
                           groupby_aggfunc="mean", groupby_rangefunc="minmax",
                           layout=wr.Layout(x=16, y=0, w=8, h=8)),
            ]
            blocks += [wr.H2(text=f"{env} / {dataset}"), wr.PanelGrid(runsets=runsets, panels=panels)]
    return wr.Report(entity=entity, project=project,
                     title=title or "walker offline RL: algorithms compared",
                     description="Normalized scores per env/dataset (group) and algorithm (job type), "
                                 "built by python -m reports.wandb_report from the local runs.",
                     blocks=blocks, width="fluid")


def report_spec(report) -> dict:
    """The JSON specification that `Report.save()` uploads. Computed locally for a report built
    with `offline=True`; with runset projects, wandb-workspaces looks their ids up on the server."""
    model = report._to_model()
    return {"entity": model.project.entity_name, "project": model.project.name, "title": model.display_name,
            "description": model.description,
            "spec": json.loads(model.spec.model_dump_json(by_alias=True, exclude_none=True))}


def main(entity: str, project: str | None = None, runs: Any = "runs", title: str | None = None,
         dry_run: bool = False, spec_out: str | None = None) -> None:
    """Create a wandb Report comparing the algorithms of the local runs.

    Args:
      entity: wandb entity (user or team) owning the project
      project: wandb project the runs were logged to (default: the one in the runs' config.json)
      runs: local run roots, comma-separated
      title: report title
      dry_run: only build the report specification, no network
      spec_out: write the specification as JSON to this file
    """
    report = build_report(entity, project, runs, title, offline=dry_run)
    if spec_out:
        Path(spec_out).write_text(json.dumps(report_spec(report), indent=1) + "\n")
        print(f"wrote the report specification to {spec_out}")
    n_grids = sum(type(b).__name__ == "PanelGrid" for b in report.blocks)
    if dry_run:
        print(f"dry run: report '{report.title}' for {report.entity}/{report.project} with {n_grids} panel grid(s); "
              f"nothing uploaded")
        return
    report.save()
    print(f"saved report with {n_grids} panel grid(s): {report.url}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
