"""reports: leaderboard (statistics, missing runs, HTML in a headless browser), reproduce
(skip finished, resume interrupted, optionally on a local Ray) and the wandb report spec."""

from __future__ import annotations

import base64
import importlib.util
import json
import math
import re
import shutil
import socket
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest

from algorithms.common import ConfigError
from reports import archive, episodes, leaderboard, reproduce


def fake_runs(root: Path, spec: dict[tuple[str, str, str], list[float | None]], updates: int = 2000) -> None:
    """A synthetic run tree: per (algo, env, dataset) one seed directory per score; None = an
    unfinished run (metrics and config but no final_eval.json)."""
    for (algo, env, dataset), scores in spec.items():
        for seed, score in enumerate(scores):
            d = root / algo / env / dataset / f"seed{seed}"
            d.mkdir(parents=True)
            (d / "config.json").write_text(json.dumps({"algo": algo, "env": env, "dataset": dataset, "seed": seed,
                                                       "updates": updates, "batch_size": 256}))
            base = 10.0 if score is None else score
            lines = [{"step": s, "eval/return": 10 * base, "eval/normalized_score": base * s / updates}
                     for s in (updates // 4, updates // 2)]
            if score is not None:
                lines.append({"step": updates, "eval/return": 10 * score, "eval/normalized_score": score, "final": True})
                (d / "final_eval.json").write_text(json.dumps({
                    "normalized_score": score, "mean": 10 * score, "std": 1.0, "returns": [10 * score],
                    "episodes": 50, "updates": updates, "seed": seed}))
            (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))


SPEC = {("bc", "walker-walk", "expert"): [90.0, 95.0, 97.0],
        ("cqlsac", "walker-walk", "expert"): [80.0, None],
        ("cqlsac", "walker-run", "medium"): [None],
        ("bc", "walker-run", "medium"): [40.0, 42.0, 44.0],
        ("cqlsac", "walker-walk", "online"): [5.0]}


@pytest.fixture(scope="module")
def board(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    fake_runs(root, SPEC)
    # A dynamics model's run (a model-error record, no score) beside the policies: not a column.
    model = root / "dynamics" / "walker-walk" / "expert" / "seed0"
    model.mkdir(parents=True)
    (model / "config.json").write_text(json.dumps({"algo": "dynamics", "env": "walker-walk", "seed": 0}))
    (model / "final_eval.json").write_text(json.dumps({"holdout_mse": 0.1, "updates": 100}))
    # One run records where it was computed (older records do not).
    first = root / "bc" / "walker-walk" / "expert" / "seed0" / "final_eval.json"
    machine = {"cpu": "Test CPU (2 cores)", "accelerator": "cpu (cpu)", "jax": "0.0"}
    first.write_text(json.dumps({**json.loads(first.read_text()), "machine": machine}))
    out = tmp_path_factory.mktemp("board")
    return leaderboard.build(str(root), out, command="python -m reports.leaderboard --runs X"), out


def row(markdown: str, env: str, dataset: str) -> list[str]:
    line = next(l for l in markdown.splitlines() if l.startswith(f"| {env} | {dataset} |"))
    return [c.strip() for c in line.strip("|").split("|")]


def test_missing_runs_show_as_missing_never_zero(board):
    b, out = board
    md = (out / "leaderboard.md").read_text()
    assert b.algos == ["bc", "cqlsac"] and "online" not in b.datasets
    assert row(md, "walker-walk", "expert")[2].startswith("94.0 ± 2.9 [")
    assert row(md, "walker-walk", "expert")[3] == "80.0 ± 0.0 [-] (n=1, +1 unfinished)"
    assert row(md, "walker-run", "medium")[3] == "missing (1 unfinished)"
    assert row(md, "walker-walk", "random")[2:4] == ["missing", "missing"]
    assert not re.search(r"\| -?0\.0 ±", md)
    assert "python -m reports.leaderboard --runs X" in md  # the command that produced it
    assert "updates 2000" in md and "batch_size 256" in md  # budgets from config.json
    assert "course project BC" in md  # references beside ours
    assert "computed on: cpu (cpu), Test CPU (2 cores), jax 0.0 (1 run); not recorded (5 runs)" in md


def test_readme_block_is_replaced_by_the_current_tables(board, tmp_path):
    b, out = board
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{leaderboard.README_START}\n| stale | table |\n{leaderboard.README_END}\noutro\n")
    leaderboard.update_readme(readme, b)
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith(f"{leaderboard.README_END}\noutro\n")
    assert "stale" not in text
    md = (out / "leaderboard.md").read_text()
    assert row(text, "walker-walk", "expert") == row(md, "walker-walk", "expert")
    assert "| bc | " in text and leaderboard.AGGREGATE_INTRO in text
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="exactly one"):
        leaderboard.update_readme(readme, b)


def test_bootstrap_ci_contains_the_mean():
    rng = np.random.default_rng(1)
    for n in (2, 3, 5, 10):
        values = rng.normal(50, 10, n)
        lo, hi = leaderboard.bootstrap_ci(values)
        assert lo <= values.mean() <= hi and lo >= values.min() and hi <= values.max()
    assert leaderboard.bootstrap_ci([3.0]) is None


def test_iqm_matches_hand_computation():
    scores = np.array([[1.0, 20.0, 3.0, 40.0], [5.0, 6.0, 70.0, 8.0], [9.0, 10.0, 11.0, 120.0]])  # 3 runs x 4 tasks
    iqm, lo, hi = leaderboard.iqm_interval(scores, reps=500)
    middle = np.sort(scores.ravel())[3:9]  # drop the lowest and highest quarter of the 12 values
    assert iqm == pytest.approx(middle.mean())
    assert lo <= iqm <= hi


def test_aggregate_uses_equal_runs_per_task(board):
    b, _ = board
    bc = next(r for r in b.aggregates if r["algo"] == "bc" and r["scope"] == "all")
    assert bc["tasks"] == 2 and bc["runs_per_task"] == 3
    assert bc["iqm"] == pytest.approx(np.mean(sorted([90, 95, 97, 40, 42, 44])[1:5]))
    common = [r for r in b.aggregates if r["scope"] == "common"]
    assert {r["algo"] for r in common} == {"bc", "cqlsac"} and all(r["tasks"] == 1 for r in common)


def test_html_contains_every_plot(board):
    _, out = board
    pngs = sorted((out / "curves").glob("*.png"))
    assert {p.name for p in pngs} == {"walker-walk_expert.png", "walker-run_medium.png"}
    page = (out / "leaderboard.html").read_text()
    embedded = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(p.read_bytes() for p in pngs)
    assert 'src="http' not in page and "<link" not in page  # self-contained
    assert '<table id="scores">' in page and "missing (1 unfinished)" in page


def test_several_roots(tmp_path):
    fake_runs(tmp_path / "a", {("bc", "walker-walk", "expert"): [90.0]})
    fake_runs(tmp_path / "b", {("bc", "walker-run", "expert"): [50.0, 60.0]})
    b = leaderboard.build(f"{tmp_path / 'a'},{tmp_path / 'b'}", tmp_path / "out", plots=False)
    assert b.cells[("bc", "walker-walk", "expert")]["n"] == 1 and b.cells[("bc", "walker-run", "expert")]["n"] == 2


def test_archive_keeps_finished_runs_small_files(tmp_path):
    fake_runs(tmp_path / "runs", {("bc", "walker-walk", "expert"): [90.0, None]})
    (tmp_path / "runs/bc/walker-walk/expert/seed0/checkpoint.npz").write_bytes(b"large")
    archive.archive_runs(str(tmp_path / "runs"), str(tmp_path / "kept"))
    kept = tmp_path / "kept/bc/walker-walk/expert"
    assert sorted(p.name for p in (kept / "seed0").iterdir()) == sorted(archive.KEPT_FILES)
    assert not (kept / "seed1").exists()  # unfinished: nothing to show yet
    (kept / "seed0/final_eval.json").write_text("{}")
    # A differing archived run is left alone (and named), but does not block the others.
    fake_runs(tmp_path / "runs", {("mopo", "walker-walk", "expert"): [50.0]})
    copied, refused = archive.archive_runs(str(tmp_path / "runs"), str(tmp_path / "kept"))
    assert refused == [kept / "seed0"] and (kept / "seed0/final_eval.json").read_text() == "{}"
    assert copied == [tmp_path / "kept/mopo/walker-walk/expert/seed0"]
    with pytest.raises(SystemExit, match="different run"):
        archive.main(str(tmp_path / "runs"), str(tmp_path / "kept"))
    assert leaderboard.build(str(tmp_path / "runs"), tmp_path / "out", plots=False).cells[
        ("bc", "walker-walk", "expert")]["n"] == 1


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install chromium)")
def test_html_renders_in_headless_chromium(board, tmp_path):
    b, out = board
    url = (out / "leaderboard.html").resolve().as_uri()
    common = [CHROMIUM, *FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000"]
    shot = tmp_path / "shot.png"
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1400,2400", url], check=True, timeout=120,
                   capture_output=True)
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1400)
    assert pixels[..., :3].std() > 0.05 and len(np.unique(pixels[..., :3].reshape(-1, 3), axis=0)) > 50  # not blank
    dom = subprocess.run([*common, "--dump-dom", url], check=True, timeout=120, capture_output=True, text=True).stdout
    assert 'data-loaded="1"' in dom  # the page's load handler ran
    for table in ("scores", "aggregate", "references", "per-seed"):
        assert f'<table id="{table}">' in dom
    widths = re.findall(r'<img [^>]*data-natural-width="(\d+)"', dom)
    assert len(widths) == len(b.curves) == 2 and all(int(w) > 0 for w in widths)  # every image decoded


# ----------------------------------------------------------------------------- reproduce

TINY = ["--algos", "bc", "--envs", "walker-walk", "--hidden-dim", "16", "--batch-size", "32", "--eval-episodes", "1",
        "--final-eval-episodes", "1", "--wandb", "disabled", "--updates-per-chunk", "10", "--eval-every", "10",
        "--checkpoint-every", "10"]


def test_reproduce_skips_finished_and_resumes(tmp_path, toy_file, capsys):
    root, out = tmp_path / "runs", tmp_path / "board"
    args = [*TINY, "--datasets", toy_file, "--run-root", str(root), "--out", str(out)]
    assert reproduce.main([*args, "--seeds", "0", "--updates", "20"]) == 0  # seed 0 finished
    assert reproduce.main([*args, "--seeds", "1", "--updates", "10", "--no-leaderboard"]) == 0
    seed0, seed1 = root / "bc/walker-walk/toy/seed0", root / "bc/walker-walk/toy/seed1"
    (seed1 / "final_eval.json").unlink()  # seed 1 "interrupted" after its checkpoint at update 10
    finished_before = (seed0 / "final_eval.json").read_text()
    capsys.readouterr()
    assert reproduce.main([*args, "--seeds", "0,1", "--updates", "20"]) == 0
    printed = capsys.readouterr().out
    assert "bc walker-walk toy: seeds 0 finished; seeds 1 resume from update 10" in printed
    assert (seed0 / "final_eval.json").read_text() == finished_before  # not rerun
    assert json.loads((seed1 / "final_eval.json").read_text())["updates"] == 20
    records = [json.loads(line) for line in (seed1 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if not r.get("final")] == [10, 20]  # continued, nothing repeated
    assert records[-1]["final"] and records[-1]["step"] == 20
    md = (out / "leaderboard.md").read_text()
    assert "(n=2)" in row(md, "walker-walk", "toy")[2] and "python -m reports.reproduce" in md
    capsys.readouterr()
    assert reproduce.main([*args, "--seeds", "0,1", "--updates", "20", "--dry-run"]) == 0
    assert "0 cell(s) to run" in capsys.readouterr().out


def test_verify_reruns_one_run_and_compares(tmp_path, toy_file, capsys):
    root = tmp_path / "runs"
    assert reproduce.main([*TINY, "--datasets", toy_file, "--seeds", "0", "--updates", "10", "--run-root", str(root),
                           "--no-leaderboard"]) == 0
    run = root / "bc/walker-walk/toy/seed0"
    # Not asserted bit-identical: XLA's CPU thread partitioning may differ between runs under load.
    assert reproduce.main(["--verify", str(run), "--tolerance", "1"]) == 0
    assert ": reproducible" in capsys.readouterr().out
    final = json.loads((run / "final_eval.json").read_text())
    (run / "final_eval.json").write_text(json.dumps({**final, "normalized_score": final["normalized_score"] + 5}))
    assert reproduce.main(["--verify", str(run), "--tolerance", "1"]) == 1
    assert "NOT reproducible" in capsys.readouterr().out


def test_reproduce_rejects_unknown_flags_and_changed_configs(tmp_path, toy_file, capsys):
    assert reproduce.main(["--algos", "bc", "--no-such-field", "3", "--dry-run"]) == 2
    fake = tmp_path / "runs/bc/walker-walk/toy/seed0"
    fake.mkdir(parents=True)
    (fake / "config.json").write_text(json.dumps({"hidden_dim": 999}))
    (fake / "final_eval.json").write_text(json.dumps({"updates": 10**9}))
    assert reproduce.main([*TINY, "--datasets", toy_file, "--seeds", "0", "--run-root", str(tmp_path / "runs"),
                           "--dry-run"]) == 1
    assert "holds a run with a different config" in (printed := capsys.readouterr().out)
    assert "hidden_dim: 999 -> 16" in printed


def test_reproduce_does_not_count_a_run_on_another_dataset_build_as_done(tmp_path, toy_file, capsys, monkeypatch):
    import datasets

    args = [*TINY, "--datasets", toy_file, "--seeds", "0", "--updates", "10", "--run-root", str(tmp_path / "runs"),
            "--no-leaderboard"]
    assert reproduce.main(args) == 0
    config_path = tmp_path / "runs/bc/walker-walk/toy/seed0/config.json"
    config_path.write_text(json.dumps({**json.loads(config_path.read_text()), "dataset_sha256": "a" * 64}))
    monkeypatch.setattr(datasets, "current_fingerprint", lambda env, dataset: "a" * 64)
    capsys.readouterr()
    assert reproduce.main([*args, "--dry-run"]) == 0
    assert "seeds 0 finished" in capsys.readouterr().out
    monkeypatch.setattr(datasets, "current_fingerprint", lambda env, dataset: "b" * 64)  # e.g. a new expert
    assert reproduce.main([*args, "--dry-run"]) == 1
    assert "another build of its dataset (content aaaaaaaaaaaa, now bbbbbbbbbbbb)" in capsys.readouterr().out


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray not installed (pip install -e '.[ray]')")
def test_reproduce_on_local_ray(tmp_path, toy_file, capsys):
    """Two tiny cells as Ray tasks on a local Ray (about 30 s here, half of it starting Ray)."""
    root = tmp_path / "runs"
    args = [*TINY, "--envs", "walker-walk,walker-run", "--datasets", toy_file, "--seeds", "0", "--updates", "10",
            "--run-root", str(root), "--out", str(tmp_path / "board"), "--ray", "local"]
    assert reproduce.main(args) == 0
    assert "submitted 2 cell(s) to Ray" in capsys.readouterr().out
    for env in ("walker-walk", "walker-run"):
        assert json.loads((root / f"bc/{env}/toy/seed0/final_eval.json").read_text())["updates"] == 10


# ----------------------------------------------------------------------------- wandb report


@pytest.mark.skipif(importlib.util.find_spec("wandb_workspaces") is None,
                    reason="wandb-workspaces not installed (pip install -e '.[wandb-report]')")
def test_wandb_report_spec_offline(board, tmp_path, monkeypatch):
    from reports import wandb_report

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr("wandb.Api", no_network)
    b, _ = board
    root = b.roots[0]
    spec_path = tmp_path / "spec.json"
    wandb_report.main(entity="me", project="proj", runs=str(root), dry_run=True, spec_out=str(spec_path))
    spec = json.loads(spec_path.read_text())
    assert (spec["entity"], spec["project"]) == ("me", "proj")
    blocks = spec["spec"]["blocks"]
    grids = [blk for blk in blocks if blk["type"] == "panel-grid"]
    assert len(grids) == 2  # walker-walk/expert and walker-run/medium; online runs are not compared
    filters = {(f[0]["value"], f[1]["value"]) for g in grids for rs in g["metadata"]["runSets"]
               for f in [rs["filters"]["filters"]]}
    assert filters == {("walker-walk/expert", "bc"), ("walker-walk/expert", "cqlsac"),
                       ("walker-run/medium", "bc"), ("walker-run/medium", "cqlsac")}
    text = json.dumps(blocks, ensure_ascii=False)
    assert "eval/normalized_score" in text and "94.0 ± 2.9" in text  # the panels and the leaderboard table


def test_run_cell_falls_back_to_one_seed_at_a_time(monkeypatch):
    """An algorithm that evaluates one --seed at a time (mppi) is run seed by seed, also when a
    cell has a single seed left (that case used to stop the cell), and its finals need no
    update count (a finished mppi cell used to fail in the summary)."""
    from algorithms.common import ConfigError, RunConfig

    trained = []

    def train(config):
        if config.seeds:
            raise ConfigError("fake evaluates one --seed at a time")
        trained.append(config.seed)
        return [{"seed": config.seed, "normalized_score": 1.0, "mean": 1.0}]  # a planner: no "updates"

    fake = types.SimpleNamespace(Config=RunConfig, train=train)
    monkeypatch.setattr(reproduce.importlib, "import_module", lambda name: fake)
    for seeds in ([2], [0, 1]):
        trained.clear()
        plan = reproduce.CellPlan("fake", "walker-walk", "toy", "toy", ["--wandb", "disabled"], [], {0: seeds})
        assert [f["seed"] for f in reproduce.run_cell(plan)["finals"]] == seeds == trained


def test_reproduce_runs_cells_in_parallel_processes(tmp_path, toy_file, capsys):
    """`--jobs 2`: two cells at once, each in its own (spawned) process, same records as serially."""
    other = tmp_path / "other.npz"
    shutil.copy(toy_file, other)
    root = tmp_path / "runs"
    args = [*TINY, "--datasets", f"{toy_file},{other}", "--seeds", "0", "--updates", "10", "--run-root", str(root),
            "--no-leaderboard"]
    assert reproduce.main([*args, "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "running 2 cell(s), 2 at a time" in printed and printed.count("== done bc walker-walk") == 2
    for label in ("toy", "other"):
        final = json.loads((root / f"bc/walker-walk/{label}/seed0/final_eval.json").read_text())
        assert final["updates"] == 10 and math.isfinite(final["normalized_score"])
    assert reproduce.main([*args, "--jobs", "0"]) == 2


def test_runs_scored_against_an_older_expert_are_renormalized(tmp_path):
    fake_runs(tmp_path, {("bc", "walker-run", "medium"): [50.0, 50.0]})
    refs = {"walker-run": (20.0, 720.0)}
    for seed, (lo, hi) in enumerate([(20.0, 720.0), (20.0, 620.0)]):  # seed 1 predates a stronger expert
        path = tmp_path / "bc" / "walker-run" / "medium" / f"seed{seed}" / "final_eval.json"
        final = json.loads(path.read_text())
        final.update(ref_min_score=lo, ref_max_score=hi, mean=lo + 0.5 * (hi - lo))
        path.write_text(json.dumps(final))
    runs, _ = leaderboard.collect_runs([tmp_path])
    notes = leaderboard.rescore(runs, refs)
    by_seed = {r.seed: r for r in runs}
    assert by_seed[0].final["normalized_score"] == 50.0 and by_seed[0].rescale == (1.0, 0.0)
    assert math.isclose(by_seed[1].final["normalized_score"], 100 * (320 - 20) / 700)  # return 320 on 20..720
    # Its logged curve maps the same way: the final logged 50 becomes the rescored final score.
    final_point = leaderboard.read_curve(by_seed[1].dir, by_seed[1].rescale)[-1]
    assert math.isclose(final_point[1], by_seed[1].final["normalized_score"])
    assert len(notes) == 1 and "1 runs on walker-run" in notes[0] and "620.0" in notes[0]


def test_runs_on_another_dataset_build_than_the_card_are_left_out(tmp_path):
    root = tmp_path / "runs"
    fake_runs(root, {("bc", "walker-run", "expert"): [80.0, 90.0, 95.0]})
    for seed, sha in [(0, "a" * 64), (1, "b" * 64)]:  # seed 2 predates recorded hashes
        path = root / "bc" / "walker-run" / "expert" / f"seed{seed}" / "config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), "dataset_sha256": sha}))
    card = tmp_path / "datasets.md"
    card.write_text("| dataset | ... |\n|---|---|\n| `dmc/walker-run/expert-v0` | 100 | ... | 17 s | `bbbbbbbbbbbb` |\n")
    assert leaderboard.card_hashes(card) == {("walker-run", "expert"): "b" * 12}
    board = leaderboard.build(str(root), tmp_path / "board", plots=False, card=card)
    assert row((tmp_path / "board" / "leaderboard.md").read_text(), "walker-run", "expert")[2].startswith("92.5 ±")
    assert any("1 run(s) on walker-run/expert trained on build aaaaaaaaaaaa are left out" in n for n in board.notes)


def test_budget_line_names_a_field_that_older_runs_do_not_record(tmp_path):
    fake_runs(tmp_path / "runs", {("cqlsac", "walker-walk", "expert"): [80.0, 82.0]})
    config = tmp_path / "runs" / "cqlsac" / "walker-walk" / "expert" / "seed1" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "offline_bc_steps": 10000}))
    b = leaderboard.build(str(tmp_path / "runs"), tmp_path / "board", command="test")
    assert "offline_bc_steps: 10000 (1) / not recorded (1)" in b.budgets[0]


def test_layer_matmul_throughput_is_measured():
    from reports import speed

    gflops = speed.layer_matmul_gflops(batch=8, width=16, chain=4, repeats=2)
    assert np.isfinite(gflops) and gflops > 0


def test_update_rows_time_one_compiled_chunk():
    """The speed table's update rows: finite rates and FLOP counts, and every timed chunk
    reuses the first one's compiled program (the SAC row carries its replay buffer through)."""
    import dataclasses

    from reports import speed

    sac_config, _, bc_config = speed.update_configs(quick=True)
    sac = speed.sac_update_speed(dataclasses.replace(sac_config, batch_size=32), num_updates=5, chunks=2)
    bc_row = speed.offline_update_speed("bc", dataclasses.replace(bc_config, updates_per_chunk=5), chunks=2)
    for row in (sac, bc_row):
        assert row["recompiles"] == 0
        assert np.isfinite(row["updates_per_s"]) and row["updates_per_s"] > 0
        assert row["flops_per_update"] > 0 and row["bytes_per_update"] > 0


def test_vmapped_seeds_cost_the_same_per_seed_as_one():
    """vmap batches the same ops, so XLA's per-seed FLOPs and bytes match one seed's."""
    import dataclasses

    from reports import speed

    _, _, bc_config = speed.update_configs(quick=True)
    config = dataclasses.replace(bc_config, updates_per_chunk=2)
    one, three = (speed.offline_update_speed("bc", config, chunks=1, seeds=n) for n in (1, 3))
    assert three["flops_per_update"] == pytest.approx(one["flops_per_update"], rel=0.02)
    assert three["bytes_per_update"] == pytest.approx(one["bytes_per_update"], rel=0.1)
    assert 0 < speed.copy_gbytes_per_s(mebibytes=4, repeats=2) < 1e5


def test_planner_flop_count_agrees_with_xla_where_each_scan_runs_once():
    """XLA counts a scan body once, so the planner's FLOPs are counted by hand; with one
    iteration of a 1-step horizon the two counts must agree up to the elementwise work."""
    import jax
    import jax.numpy as jnp

    from algorithms import dynamics, mppi
    from reports import speed

    result = speed.mppi_speed(1, num_samples=16, num_elites=4, num_iterations=1, horizon=1, model_hidden_dim=32)
    config = result["config"]
    model = dynamics.init_model(mppi.model_config(config), 24, 6, jax.random.PRNGKey(0))
    xla_flops, _ = speed.xla_cost(mppi.make_act_fn(config), (model, None), jnp.zeros((10, 24)),
                                jax.random.PRNGKey(0), jnp.zeros((10, 1, 6)))
    assert 1.0 <= xla_flops / (10 * result["flops_per_action"]) < 1.25


def test_episode_split_counts_failed_and_expert_episodes(tmp_path):
    final = {"returns": [0.0, 10.0, 500.0, 950.0, 1000.0], "ref_min_score": 0.0, "ref_max_score": 1000.0}
    split = episodes.episode_split(final)  # normalized 0, 1, 50, 95, 100
    assert (split["episodes"], split["failed"], split["expert"], split["median"]) == (5, 2, 2, 50.0)
    rescored = episodes.episode_split(final, references=(0.0, 500.0))  # same returns, expert 500
    assert (rescored["failed"], rescored["expert"], rescored["median"]) == (2, 3, 100.0)
    run = tmp_path / "bc" / "walker-walk" / "expert" / "seed0"
    run.mkdir(parents=True)
    (run / "final_eval.json").write_text(json.dumps(final))
    rows = episodes.table([str(run.parent)]).splitlines()
    assert rows[2:] == [f"| {run} | 5 | 2 | 2 | 50.0 | 49.2 |"]  # one run: no summary row
    (run.parent / "seed1").mkdir()
    (run.parent / "seed1" / "final_eval.json").write_text(json.dumps({**final, "returns": [700.0] * 5}))
    rows = episodes.table([str(run.parent)]).splitlines()  # a cell of two seeds: their mean ± std too
    assert rows[-1] == f"| mean ± sample std over the 2 runs | | | | | 59.6 ± {np.std([49.2, 70.0], ddof=1):.1f} |"
    assert rows[-1].count("|") == rows[0].count("|")
    with pytest.raises(SystemExit, match="no final_eval.json"):
        episodes.table([str(run.parent), str(tmp_path / "nothing")])  # a bad path among good ones


def test_paired_episodes_match_episodes_and_refuse_different_ones(tmp_path):
    base = {"env_id": "toy", "seed": 0, "ref_min_score": 0.0, "ref_max_score": 100.0}  # not rescored by the suite
    policy = {**base, "returns": [10.0, 50.0, 90.0, 30.0]}
    planner = {**base, "returns": [20.0, 50.0, 70.0, 40.0]}  # differences +10, 0, -20, +10
    np.testing.assert_allclose(episodes.paired_episodes(planner, policy), [10.0, 0.0, -20.0, 10.0])
    error = np.std([10, 0, -20, 10], ddof=1) / 2  # standard error of the four differences
    with pytest.raises(ConfigError, match="seed differs"):
        episodes.paired_episodes({**planner, "seed": 1}, policy)
    with pytest.raises(ConfigError, match="dataset differs"):
        episodes.paired_episodes({**planner, "dataset": "expert"}, policy)
    with pytest.raises(ConfigError, match="same number"):
        episodes.paired_episodes({**planner, "returns": [20.0, 50.0]}, policy)
    runs = {}
    for name, final in (("planner", planner), ("policy", policy)):
        runs[name] = tmp_path / name / "seed0"
        runs[name].mkdir(parents=True)
        (runs[name] / "final_eval.json").write_text(json.dumps({k: v for k, v in final.items() if k != "seed"}))
        (runs[name] / "config.json").write_text(json.dumps({"seed": 0}))  # older records: seed only here
    rows = episodes.table([str(runs["planner"])], against=str(runs["policy"])).splitlines()
    assert rows[0].endswith("paired by episode (± s.e.) | ahead / behind / equal |")
    assert rows[1].count("|") == rows[0].count("|") == rows[2].count("|")
    assert rows[2].endswith(f"| +0.00 ± {error:.2f} | 2 / 1 / 1 |")  # +10, 0, -20, +10
    # Several runs pair by seed with runs from several folders, and a last row sums them up.
    for seed, returns in ((1, [30.0, 60.0, 80.0, 40.0]), (2, [0.0, 20.0, 90.0, 10.0])):
        for name, offset in (("planner", 10.0), ("policy", 0.0)):
            run = tmp_path / f"{name}-more" / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "final_eval.json").write_text(json.dumps(
                {**base, "seed": seed, "returns": [r + offset for r in returns]}))
    rows = episodes.table([str(runs["planner"]), str(tmp_path / "planner-more")],
                          against=f"{runs['policy']},{tmp_path / 'policy-more'}").splitlines()
    assert [row.split("|")[-3].strip() for row in rows[2:5]] == [f"+0.00 ± {error:.2f}", "+10.00 ± 0.00", "+10.00 ± 0.00"]
    assert [row.split("|")[-2].strip() for row in rows[2:5]] == ["2 / 1 / 1", "4 / 0 / 0", "4 / 0 / 0"]
    means = [episodes.normalized_episodes(planner).mean(), 62.5, 40.0]
    assert rows[5] == (f"| mean ± sample std over the 3 runs | | | | | {np.mean(means):.1f} ± {np.std(means, ddof=1):.1f} | "
                       f"+6.67 ± {np.std([0, 10, 10], ddof=1):.2f} | |")
    assert rows[5].count("|") == rows[0].count("|")
    with pytest.raises(SystemExit, match="no run of toy  seed 1"):
        episodes.table([str(tmp_path / "planner-more")], against=str(runs["policy"]))
    (tmp_path / "planner-more" / "seed1" / "config.json").write_text(json.dumps({"seed": 1, "dataset": "expert"}))
    with pytest.raises(SystemExit, match="no run of toy expert seed 1"):  # same env and seed, another dataset
        episodes.table([str(tmp_path / "planner-more")], against=str(tmp_path / "policy-more"))
    with pytest.raises(SystemExit, match="two runs of toy  seed 0"):
        episodes.table([str(runs["planner"])], against=(str(runs["policy"]), str(runs["policy"])))


def test_episode_classes_from_up_traces():
    def trace(*pieces):  # (up?, steps), ...
        return np.concatenate([np.full(n, up) for up, n in pieces])

    assert episodes.stretches(trace((True, 3), (False, 2))) == [(True, 3), (False, 2)]
    # The first fall passing through "up" for a few steps is not standing.
    assert episodes.classify(trace((True, 10), (False, 990))) == {
        "never_stood": True, "down_for_good": False, "got_up_again": False}
    assert episodes.classify(trace((False, 40), (True, 60), (False, 900))) == {
        "never_stood": False, "down_for_good": True, "got_up_again": False}
    # A stumble (down for less than 50 steps) is not a fall; a long one followed by standing is.
    assert episodes.classify(trace((False, 40), (True, 300), (False, 20), (True, 640)))["got_up_again"] is False
    recovered = episodes.classify(trace((False, 40), (True, 300), (False, 200), (True, 460)))
    assert recovered == {"never_stood": False, "down_for_good": False, "got_up_again": True}


def test_return_to_go_restarts_at_episode_ends():
    reward = np.array([1.0, 1.0, 1.0, 2.0, 2.0])
    end = np.array([False, False, True, False, True])
    np.testing.assert_allclose(episodes.return_to_go(reward, end, 0.5), [1.75, 1.5, 1.0, 3.0, 2.0])


def test_value_fit_of_a_cqlsac_run(tmp_path, toy_file):
    root = tmp_path / "runs"
    tiny = ["--algos", "cqlsac", *TINY[2:], "--cql-num-actions", "2"]
    assert reproduce.main([*tiny, "--datasets", toy_file, "--run-root", str(root), "--seeds", "0",
                           "--updates", "10", "--no-leaderboard"]) == 0
    run = root / "cqlsac/walker-walk/toy/seed0"
    fit = episodes.value_fit(run)
    assert list(fit) == ["0-25", "25-50", "50-100", "100-200", "200-800"]
    # The toy rewards are uniform in [0, 1): about 0.5 a step, so about 50 by step 800.
    assert all(40 < window["return"] < 51 for window in fit.values())
    assert all(np.isfinite(window["q"]) and np.isfinite(window["td_residual"]) for window in fit.values())
    assert str(run) in episodes.value_fit_table([str(run)])


def test_trace_reruns_the_final_evaluation(tmp_path, toy_file):
    root = tmp_path / "runs"
    assert reproduce.main([*TINY, "--datasets", toy_file, "--run-root", str(root), "--seeds", "0", "--updates", "10",
                           "--final-eval-episodes", "2", "--no-leaderboard"]) == 0
    run = root / "bc/walker-walk/toy/seed0"
    traced = episodes.trace_run(run)
    assert traced["returns"] == json.loads((run / "final_eval.json").read_text())["returns"]
    assert traced["episodes"] == 2 and traced["never_stood"] + traced["down_for_good"] <= 2
    assert 0.0 <= traced["down_share"] <= 1.0
    assert "| 2 |" in episodes.trace_table([str(run)])
    fit = episodes.data_fit(run)  # the toy data's actions are uniform noise: far from any policy
    assert list(fit) == ["0-25", "25-50", "50-100", "100-200", "200-end"]
    assert all(0.05 < v < 4.0 for v in fit.values())
    assert str(run) in episodes.data_fit_table([str(run)])
