"""Benchmark 2, freshness: from a turn accepted (``memory.turns.record_turn`` returned, as the
dialogue server answers) to a composite document of its session being searchable in a
dialogue server's vector index (an in-process ``VectorIndex`` kept current by ``VectorSync``
from the ``vectors:updates`` stream, exactly as ``workers.web`` keeps its own), p50/p95.

Model time is excluded by the zero-latency model server: what remains is the broker, the
three tasks (analysis, note rewrite, embed), the database writes and the stream. Turns are
paced (4/s, well below the pipeline's throughput, so latency is not queueing) and each goes to a new session, so a session's first document belongs to its
only turn; the first 3 turns warm the worker up and are not counted. Baseline: the same turns' no-op round trip, i.e. a no-op task's send-to-done
latency on the same broker (``bench.noop_app``), in the same run.
"""

from __future__ import annotations

import threading
import time

from bench.common import PIPELINE_QUEUES, Env, Result, Target, clear_ledger, dist, send_turns


def _watch(env: Env, sids: list[str], seen: dict, stop: threading.Event) -> threading.Thread:
    from memory.vector_index import VectorIndex, VectorSync, session_scope

    index = VectorIndex(384)
    sync = VectorSync(index, env.r(), block_ms=20)
    sync.start_id()
    scopes = {session_scope(s): s for s in sids}

    def loop() -> None:
        while not stop.is_set():
            if sync.poll():
                now = time.monotonic()
                for scope, sid in scopes.items():
                    if sid not in seen and index.size(scope):
                        seen[sid] = now

    th = threading.Thread(target=loop, daemon=True)
    th.start()
    return th


def noop_latency(env: Env, n: int, rate: float) -> dict:
    """Send-to-done latency (ms) of ``n`` no-op tasks (``bench.noop_app``), one at a time: a
    task counts as done when its queue is empty and nothing is reserved (acks late)."""
    from bench.noop_app import QUEUE, app

    env.reset_queues()
    w = env.worker("fresh-noop", QUEUE, 2, "prefork", app="bench.noop_app")
    lat = []
    try:
        for i in range(n):
            t0 = time.monotonic()
            app.send_task("bench.noop", kwargs={"i": i})
            while not env.drained((QUEUE,)):
                time.sleep(0.001)
            lat.append((time.monotonic() - t0) * 1000)
            time.sleep(max(0.0, 1 / rate - (time.monotonic() - t0)))
    finally:
        w.stop()
    return dist(lat, 2)


def run(env: Env, quick: bool) -> Result:
    """200 turns (quick 12) at 4 turns/s, one worker of 2 prefork processes."""
    n, rate = (12, 4.0) if quick else (200, 4.0)
    warm = 3  # first turns warm the worker's connections; not counted
    env.reset_queues()
    clear_ledger()
    sids = [env.new_session() for _ in range(n + warm)]
    seen: dict[str, float] = {}
    stop = threading.Event()
    w = env.worker("freshness", PIPELINE_QUEUES, 2, "prefork")
    try:
        th = _watch(env, sids, seen, stop)
        accepted = []
        for sid in sids:
            accepted += send_turns(env, [sid], 1)
            time.sleep(1 / rate)
        deadline = time.monotonic() + 120
        while len(seen) < n + warm and time.monotonic() < deadline:
            time.sleep(0.05)
        stop.set()
        th.join(2)
    finally:
        w.stop()
    lat = [(seen[sid] - t) * 1000 for sid, t in list(zip(sids, accepted))[warm:] if sid in seen]
    d = dist(lat, 1)
    base = noop_latency(env, min(n, 50), rate)
    row = {"turns": n, "searchable": len(lat), **{f"{k}_ms": v for k, v in d.items() if k != "n"}}
    return Result(
        "freshness", [row], baseline={"noop_task_latency_ms": base},
        ratio=round(d["p50"] / base["p50"], 2) if base["p50"] else None,
        targets=[Target("p95 ms turn -> searchable", d["p95"], "<=", 500, "ms")],
        params={"turns_per_s": rate, "worker": "1 worker, -c 2 --pool prefork"},
        notes="ratio = freshness p50 / one no-op task's send-to-done p50; the pipeline chains "
              "three tasks (analysis, rewrite, embed) plus the vectors:updates stream. "
              f"{warm} warm-up turns are not counted.")
