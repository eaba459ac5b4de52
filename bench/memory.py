"""Benchmark 9, memory: resident size of the dialogue server and of each worker kind of the
Procfile (``worker``: analysis, note_update, entity_creation, simulate_world, -c 2;
``embedder``: embed, -c 1; ``archiver``: archive, -c 1, prefetch 200) at rest and under load
(the hot-path driver's sessions playing turns while the pipeline works them off), with the
zero-latency model and embedding servers (an ``EMBEDDER=minilm`` process adds the MiniLM model,
see benchmark 8).

RSS is summed over each process and its pool children (prefork children share pages with the
parent, so the sum over-counts shared memory); USS (memory unique to the processes) is given
beside it. Baseline: a bare Python interpreter's RSS, same run.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time

import psutil

from bench.common import Env, Result

KINDS = {
    "worker": ("analysis,note_update,entity_creation,simulate_world", 2, ()),
    "embedder": ("embed", 1, ()),
    "archiver": ("archive", 1, ("--prefetch-multiplier", "200")),
}


def _tree(pid: int) -> list[psutil.Process]:
    try:
        p = psutil.Process(pid)
        return [p, *p.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def sizes(pid: int) -> tuple[float, float]:
    """``(rss_mb, uss_mb)`` of a process and its children."""
    rss = uss = 0
    for p in _tree(pid):
        try:
            info = p.memory_full_info()
            rss += info.rss
            uss += info.uss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return rss / 2**20, uss / 2**20


def bare_python_rss() -> float:
    """RSS (MB) of a Python interpreter that imports nothing."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)"])
    time.sleep(1.0)
    rss = psutil.Process(proc.pid).memory_info().rss / 2**20
    proc.kill()
    proc.wait()
    return rss


def run(env: Env, quick: bool) -> Result:
    """At rest, then under load: 100 sessions x 10 turns (quick: 10 x 3)."""
    from bench.hot_path import _drive

    sessions, turns = (10, 3) if quick else (100, 10)
    w = env.world()
    procs = {"web": env.web("memory-web")}
    try:
        for name, (queues, c, extra) in KINDS.items():
            procs[name] = env.worker(f"memory-{name}", queues, c, "prefork", extra_args=extra)
        time.sleep(2)
        rest = {n: sizes(p.proc.pid) for n, p in procs.items()}
        peak = {n: (0.0, 0.0) for n in procs}
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                for n, p in procs.items():
                    rss, uss = sizes(p.proc.pid)
                    peak[n] = (max(peak[n][0], rss), max(peak[n][1], uss))
                time.sleep(0.25)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        asyncio.run(_drive(procs["web"].url, env.headers(), w["key"], w["npcs"], sessions, turns))
        env.wait_drained(300, queues=("analysis", "note_update", "embed", "archive"))
        stop.set()
        th.join(5)
    finally:
        for p in procs.values():
            p.stop()
    rows = [{"process": n, "rest_rss_mb": round(rest[n][0], 1), "rest_uss_mb": round(rest[n][1], 1),
             "load_rss_mb": round(peak[n][0], 1), "load_uss_mb": round(peak[n][1], 1),
             "processes": 1 + (KINDS[n][1] if n in KINDS else 0)} for n in procs]
    base = round(bare_python_rss(), 1)
    return Result(
        "memory", rows, baseline={"bare_python_rss_mb": base},
        ratio=round(rows[0]["load_rss_mb"] / base, 1) if base else None,
        params={"sessions": sessions, "turns_per_session": turns, "embedder": "openai (zero)"},
        notes="ratio = dialogue server RSS under load / a bare interpreter's RSS; 'processes' "
              "counts the main process and its pool children.")
