"""Do any of XLA's CPU flags speed up the suite's updates? Writes `reports/xla_flags.md`.

    python -m reports.xla_flags             # ~15 minutes on 2 CPU cores

Each flag set runs in a fresh process (XLA reads XLA_FLAGS once, at start) and measures the
SAC, BC and CQL-SAC (peers' sizes) updates as `reports.speed` does. The baseline (no flags)
runs first and last, so drift over the sweep shows. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
from pathlib import Path

import fire

OUT = Path(__file__).with_name("xla_flags.md")
CANDIDATES = (
    "",
    "--xla_cpu_use_xnnpack=true",
    "--xla_cpu_use_onednn=true",
    "--xla_cpu_enable_concurrency_optimized_scheduler=true",
    "--xla_cpu_multi_thread_eigen=false",
    "--xla_cpu_use_thunk_runtime=false",
    "--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY",
    "--xla_cpu_prefer_vector_width=512",
    "",
)


def measure() -> dict:
    """Updates/s of SAC, BC and CQL-SAC under this process's XLA_FLAGS."""
    from reports import speed

    sac_config, cql_config, bc_config = speed.update_configs()
    sac = speed.sac_update_speed(sac_config, num_updates=500, chunks=3)
    bc_row = speed.offline_update_speed("bc", bc_config, 3)
    cql = speed.offline_update_speed("cqlsac", cql_config, 2)
    return {"sac": sac["updates_per_s"], "bc": bc_row["updates_per_s"], "cql": cql["updates_per_s"],
            "cql_compile_s": cql["compile_s"]}


def main(out: str = str(OUT), measure_only: bool = False) -> list[dict]:
    if measure_only:  # the child process: one flag set, one JSON line
        print(json.dumps(measure()))
        return []
    from algorithms.common import machine_description

    rows = []
    for flags in CANDIDATES:
        proc = subprocess.run([sys.executable, "-m", "reports.xla_flags", "--measure-only"], capture_output=True,
                              text=True, check=False, env={**os.environ, "XLA_FLAGS": flags})
        if proc.returncode != 0:
            # A child killed without a word (e.g. by a signal) still gets a row saying so.
            last_line = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
            rows.append({"flags": flags, "error": last_line})
        else:
            rows.append({"flags": flags, **json.loads(proc.stdout.strip().splitlines()[-1])})
        print(rows[-1], flush=True)
    lines = [f"| `{r['flags'] or '(none)'}` | " + (f"failed: {r['error']} | | | |" if "error" in r else
             f"{r['sac']:.0f} | {r['bc']:.0f} | {r['cql']:.1f} | {r['cql_compile_s']:.1f} s |") for r in rows]
    table = "\n".join(lines)
    Path(out).write_text(f"""# XLA CPU flags

Measured {datetime.date.today()} by `python -m reports.xla_flags` on {machine_description()['cpu']}: updates/s
of each update at the speed table's sizes, one fresh process per flag set (the baseline first and last).

| XLA_FLAGS | SAC updates/s | BC updates/s | CQL-SAC (10 actions) updates/s | CQL-SAC compile |
|---|---|---|---|---|
{table}
""")
    return rows


if __name__ == "__main__":
    fire.Fire(main)
