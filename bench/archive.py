"""Benchmark 5, archive: turns/s into the archive table through the batched path
(``memory.archive.insert_turns`` with ``ARCHIVE_BATCH_SIZE`` turns per transaction: what the
``archive_turn`` batch task runs), written with COPY into a staging table and with one
multi-row ``INSERT ... ON CONFLICT DO NOTHING``, against one insert per turn (one transaction
each), same run, same database;
and end to end through the Celery archiver (``archive_turn`` messages sent to the broker and
written by one ``celery-batches`` worker with the Procfile's prefetch).
"""

from __future__ import annotations

import time
import uuid

from bench.common import Env, Result, Target, clear_ledger, ledger_counts
from contract.names import TaskName
from contract.send import turn_task_id


def _turns(sid: str, npc: int, n: int, start: int) -> list[dict]:
    now = time.time()
    return [{"turn_id": uuid.uuid4().hex, "session_id": sid, "seq": start + i, "npc_entry_id": npc,
             "player_text": "What news of the road, friend?", "npc_text": "Aye, the road is quiet.",
             "latency_ms": 0.0, "created_at": now} for i in range(n)]


def _npc_id(env: Env) -> int:
    from sqlalchemy import select

    from memory.db import session_scope
    from models import LoreEntry

    w = env.world()
    with session_scope() as s:
        return s.scalar(select(LoreEntry.id).where(LoreEntry.world_id == w["id"],
                                                   LoreEntry.key == w["npcs"][0]))


def measure_direct(env: Env, n: int, batch: int, copy: bool = False) -> dict:
    """Write ``n`` turns in batches of ``batch`` (1 = one insert per turn), with COPY or with
    multi-row INSERTs; returns a row."""
    from memory.archive import insert_turns
    from memory.db import session_scope

    sid = env.new_session()
    rows = _turns(sid, _npc_id(env), n, 1)
    t0 = time.perf_counter()
    written = 0
    for i in range(0, n, batch):
        with session_scope() as s:
            written += len(insert_turns(s, rows[i:i + batch], copy=copy))
    wall = time.perf_counter() - t0
    how = "COPY" if copy else "INSERT"
    return {"path": f"insert_turns {how}, {batch}/transaction", "turns": n, "written": written,
            "seconds": round(wall, 3), "turns_per_s": round(written / wall, 1)}


def measure_celery(env: Env, n: int, batch: int) -> dict:
    """``n`` ``archive_turn`` messages through one archiver worker (prefetch 2 x batch);
    timed from the first message sent to the queue drained."""
    from bench.common import _app
    from memory.turns import turn_kwargs
    from contract.payloads import TurnPayload

    env.reset_queues()
    clear_ledger()
    w = env.worker("archiver", "archive", 1, "prefork",
                   extra_args=("--prefetch-multiplier", str(2 * batch)),
                   ARCHIVE_BATCH_SIZE=str(batch))
    try:
        sid = env.new_session()
        wid = env.world()["id"]
        payloads = [turn_kwargs(TurnPayload(world_id=wid, **t))
                    for t in _turns(sid, _npc_id(env), n, 1)]
        app = _app()
        t0 = time.monotonic()
        for p in payloads:
            app.send_task(TaskName.ARCHIVE_TURN.value, kwargs=p,
                          task_id=turn_task_id(TaskName.ARCHIVE_TURN, p["turn_id"]))
        done = env.wait_drained(300, queues=("archive",))
        if done is None:
            raise RuntimeError("archive queue did not drain in 300 s")
        wall = done - t0
    finally:
        w.stop()
    ok = ledger_counts([TaskName.ARCHIVE_TURN.value]).get(TaskName.ARCHIVE_TURN.value, {})
    return {"path": f"celery archiver, batches of {batch}", "turns": n,
            "written": ok.get("succeeded", 0), "seconds": round(wall, 3),
            "turns_per_s": round(ok.get("succeeded", 0) / wall, 1)}


def run(env: Env, quick: bool) -> Result:
    """Batched vs single inserts (20,000 vs 2,000 turns; quick 2,000 vs 300) and the Celery
    archiver (5,000 turns; quick 500)."""
    from settings import get_settings

    batch = get_settings().archive_batch_size
    n_batch, n_single, n_celery = (2000, 300, 500) if quick else (20_000, 2000, 5000)
    postgres = bool(env.db_name)
    batched = measure_direct(env, n_batch, batch, copy=postgres)
    multirow = measure_direct(env, n_batch, batch) if postgres else None
    single = measure_direct(env, n_single, 1)
    celery_row = measure_celery(env, n_celery, batch)
    ratio = batched["turns_per_s"] / single["turns_per_s"]
    rows = [batched] + ([multirow] if multirow else []) + [celery_row]
    return Result(
        "archive", rows, baseline=single, ratio=round(ratio, 2),
        targets=[Target("batched turns/s", batched["turns_per_s"], ">=", 20_000, "/s"),
                 Target("batched / one-per-turn", ratio, ">=", 10)],
        params={"batch_size": batch, "database": "postgresql" if postgres else "sqlite"},
        notes="ratio = batched (COPY on PostgreSQL) / one insert per turn (same database, same "
              "run); the multi-row INSERT row is the previous batched path; the Celery row adds "
              "the broker, the ledger rows and the worker.")
