"""Benchmark 4, coalescing: maintenance-model calls for a bursty session (many updates to a
few entries, sent at once, as a busy scene does) with note coalescing on vs off
(``NOTE_COALESCING``, ``settings.note_coalescing``), same run, same worker settings. Calls are
counted by the zero-latency model server per role (``zero-maintenance``).
"""

from __future__ import annotations

import time
import uuid

from bench.common import Env, Result, Target, clear_ledger, ledger_counts
from contract.names import TaskName


def measure(env: Env, coalescing: bool, updates: int, entries: int) -> dict:
    """Send ``updates`` ``update_note`` tasks over ``entries`` entries of one new session while a
    ``note_update,embed`` worker (-c 1 prefork) runs; returns a row with the model calls."""
    from bench.common import _app
    from contract.send import celery_sender
    from tasks.follow_up import follow_up

    enqueue = follow_up(celery_sender(_app()))
    env.reset_queues()
    clear_ledger()
    sid = env.new_session()
    keys = env.world()["npcs"][:entries]
    w = env.worker(f"coalescing-{'on' if coalescing else 'off'}", "note_update,embed", 1, "prefork",
                   NOTE_COALESCING="true" if coalescing else "false")
    try:
        env.zero_stats(reset=True)
        t0 = time.monotonic()
        for i in range(updates):
            key = keys[i % len(keys)]
            enqueue(TaskName.UPDATE_NOTE, dict(
                session_id=sid, lore_entry_key=key, update_summary=f"Burst event {i} about {key}",
                idempotency_key=f"bench:{uuid.uuid4().hex}", cause="api"))
        done = env.wait_drained(300, queues=("note_update", "embed"))
        if done is None:
            raise RuntimeError("note_update queue did not drain in 300 s")
        wall = done - t0
        calls = env.zero_stats().get("zero-maintenance", 0)
    finally:
        w.stop()
    c = ledger_counts([TaskName.UPDATE_NOTE.value]).get(TaskName.UPDATE_NOTE.value, {})
    return {"coalescing": "on" if coalescing else "off", "updates": updates, "entries": len(keys),
            "maintenance_calls": calls, "tasks_succeeded": c.get("succeeded", 0),
            "seconds": round(wall, 2)}


def run(env: Env, quick: bool) -> Result:
    """300 updates over 3 entries (quick: 30)."""
    updates, entries = (30, 3) if quick else (300, 3)
    on = measure(env, True, updates, entries)
    off = measure(env, False, updates, entries)
    ratio = on["maintenance_calls"] / off["maintenance_calls"] if off["maintenance_calls"] else None
    fewer = 1 - ratio if ratio is not None else None
    return Result(
        "coalescing", [on], baseline=off, ratio=round(ratio, 3) if ratio is not None else None,
        targets=[Target("share of calls saved", fewer, ">=", 0.30)],
        params={"updates": updates, "entries": entries, "worker": "-c 1 --pool prefork"},
        notes="ratio = model calls with coalescing / without; saved = 1 - ratio.")
