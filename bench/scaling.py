"""Benchmark 3, scaling: the pipeline of benchmark 1 with 1, 2 and 4 worker processes
(prefork) and the same with a threads pool, showing where throughput stops growing and why:
each row carries the average cores busy per process group (worker, Redis, PostgreSQL, zero
model server) and on the whole machine over the run; the machine's figure against its cores
says whether it is CPU-bound, and the largest group names the component that saturates first.
"""

from __future__ import annotations

import os

from bench.common import Env, Result
from bench.pipeline import measure_pipeline


def run(env: Env, quick: bool) -> Result:
    """Full: 1/2/4 x prefork/threads, 50 sessions x 10 turns each; quick: 1/2 prefork and 2
    threads, 6 sessions x 3 turns."""
    if quick:
        sessions, turns, configs = 6, 3, [(1, "prefork"), (2, "prefork"), (2, "threads")]
    else:
        sessions, turns = 50, 10
        configs = [(c, p) for p in ("prefork", "threads") for c in (1, 2, 4)]
    rows = []
    for c, pool in configs:
        row = measure_pipeline(env, sessions, turns, concurrency=c, pool=pool)
        cores = {k[4:]: v for k, v in row.items() if k.startswith("cpu_") and k != "cpu_machine"}
        row["cores_ours"] = round(sum(cores.values()), 2)
        row["busiest"] = max(cores, key=cores.get) if cores else ""
        row["cpu_bound"] = row["cpu_machine"] >= 0.85 * (os.cpu_count() or 1)
        rows.append(row)
    base = rows[0]
    best = max(rows, key=lambda r: r["updates_per_min"])
    for r in rows:
        r["speedup"] = round(r["updates_per_min"] / base["updates_per_min"], 2)
    return Result(
        "scaling", rows, baseline={k: base[k] for k in ("workers", "pool", "updates_per_min")},
        ratio=best["speedup"],
        params={"sessions": sessions, "turns_per_session": turns, "cpus": os.cpu_count()},
        notes="speedup = updates/min over the 1-process prefork row; cores_ours = cores busy in "
              "the benchmark's processes, cpu_machine = in all processes; cpu_machine near the "
              "machine's cores = CPU-bound (adding processes only shares the same cores); "
              "cores_ours well below it with the machine idle = latency-bound (round trips).")
