"""Outages with real processes: Redis restarted under the dialogue server and a worker, and
PostgreSQL stopped while turns keep coming (the memory pipeline must lose nothing).

Both tests run the dialogue server (uvicorn) and a prefork Celery worker as subprocesses on a
private Redis (``tests.procs``), with the real llama.cpp model server; the PostgreSQL test
also runs a private PostgreSQL cluster, so stopping it disturbs nobody else.
"""

from __future__ import annotations

import time
import uuid

import httpx
import pytest
import redis as redis_py
from sqlalchemy import func, select

from memory import keys as rkeys
from memory import nearline
from memory.db import session_scope
from models import DeadLetter, TaskRecord, Turn
from contract.send import turn_task_id
from tests.procs import (LINES, PrivatePostgres, PrivateRedis, SubprocessWorker, WebServer,
                         api_headers, archived, ledger, open_session, play_lines, play_turn,
                         process_env)

TERMINAL = ("succeeded", "dead")



def _archive_rows(session_id: str, url: str | None = None) -> int:
    with session_scope(url) as s:
        return s.scalar(select(func.count()).select_from(Turn).where(Turn.session_id == session_id))





def _send(redis_url: str, name: str, kwargs: dict) -> str:
    from celery import Celery

    import celeryconfig

    app = Celery("npc_memory_outages", set_as_current=False)  # never the tests' current app
    app.config_from_object(celeryconfig)
    app.conf.broker_url = redis_url
    app.conf.result_backend = redis_url
    try:
        return app.send_task(name, kwargs=kwargs).id
    finally:
        app.close()


def test_redis_restart_loses_no_turn_and_no_task(light_world, llm_server, wait_for):
    """Redis (AOF, ``appendfsync always``) is killed with two turns' tasks still queued: the
    dialogue server answers 503 while it is down and serves turns again after the restart
    without being restarted itself; a worker started afterwards archives and analyses every
    turn once, including one left in the outbox by a server that died before sending."""
    broker = PrivateRedis(persist=True)
    broker.start()
    env = process_env(REDIS_URL=broker.url)
    web = WebServer(env, "outage-redis-web.log")
    # one worker per queue: a slow model call must not hold the archive back
    worker = SubprocessWorker(env, "archive", "outage-redis-archiver.log")
    analyst = SubprocessWorker(env, "analysis", "outage-redis-analyst.log")
    r = redis_py.Redis.from_url(broker.url)
    try:
        web.start()
        client = httpx.Client(base_url=web.url, timeout=180, headers=api_headers())
        sid, npc = open_session(client, light_world["key"])
        turn_ids = play_lines(client, sid, npc, LINES[:2])
        # no worker yet: all still queued (the server's outbox relay sends them just after
        # each reply) and the outbox settled
        wait_for(lambda: r.llen("analysis") + r.llen("archive") == 4
                 and r.zcard(rkeys.OUTBOX_TURNS) == 0, timeout=30)

        broker.stop()
        resp = play_turn(client, sid, npc, LINES[2])
        assert resp.status_code == 503 and "unavailable" in resp.json()["detail"]
        broker.start()
        assert r.llen("analysis") + r.llen("archive") == 4  # the restart kept the queued tasks

        resp = play_turn(client, sid, npc, LINES[2])  # the same server process, reconnected
        assert resp.status_code == 200, (resp.text, web.tail())
        turn_ids.append(resp.json()["turn_id"])
        wait_for(lambda: r.llen("analysis") + r.llen("archive") == 6
                 and r.zcard(rkeys.OUTBOX_TURNS) == 0, timeout=30)  # sent over the new connection

        # a turn recorded by a server that died before sending its tasks: only the outbox has it
        orphan = {"turn_id": uuid.uuid4().hex, "session_id": sid, "world_id": light_world["id"],
                  "seq": nearline.next_turn_seq(r, sid), "npc_entry_id": int(r.hget(
                      f"world:{light_world['id']}:keys", npc)), "player_text": LINES[3],
                  "npc_text": "Go safely.", "latency_ms": 1.0, "created_at": time.time()}
        nearline.record_turn(r, sid, orphan)
        turn_ids.append(orphan["turn_id"])
        assert [t["turn_id"] for t in nearline.outbox_due(r, 0)] == [orphan["turn_id"]]

        worker.start()
        analyst.start()
        _send(broker.url, "npc_memory.reconcile", {"older_than_s": 0})
        wait_for(lambda: archived(sid) == set(turn_ids), timeout=180)
        assert _archive_rows(sid) == 4
        assert [t["turn_id"] for t in nearline.recent_turns(r, sid, 10)] == turn_ids
        assert r.zcard(rkeys.OUTBOX_TURNS) == 0

        analysis_ids = [turn_task_id("npc_memory.analyze_turn", t) for t in turn_ids]
        wait_for(lambda: all(rec.status in TERMINAL
                             for rec in ledger(analysis_ids).values())
                 and len(ledger(analysis_ids)) == 4, timeout=300)
        for rec in ledger(analysis_ids).values():
            assert rec.status == "succeeded" or "InvalidModelOutput" in rec.error, rec.error
            assert rec.attempts == 1  # each analysis ran once
    finally:
        analyst.stop()
        worker.stop()
        web.stop()
        broker.stop()


@pytest.mark.skipif(not PrivatePostgres.available(), reason="PostgreSQL server binaries not found")
def test_postgres_outage_turns_served_and_archive_catches_up(light_world_path, llm_server,
                                                             wait_for):
    """PostgreSQL stops (``-m immediate``) with one turn archived: two more turns are served
    while it is down (the turn path never reads it), their archive tasks wait with backoff
    instead of dead-lettering, and after the restart every turn is archived exactly once."""
    from inference.embedding import get_embedder
    from memory.db import _engines, migrate, normalise_url
    from memory.importers.light import load_light_world
    from memory.vectors import embed_world_base
    from memory.worlds import import_world

    pg = PrivatePostgres()
    pg.init()
    pg.start()
    broker = PrivateRedis()
    broker.start()
    r = redis_py.Redis.from_url(broker.url)
    env = process_env(REDIS_URL=broker.url, DATABASE_URL=pg.url)
    web = WebServer(env, "outage-pg-web.log")
    worker = SubprocessWorker(env, "archive", "outage-pg-worker.log")
    try:
        migrate(pg.url)
        with session_scope(pg.url) as s:
            world, _ = import_world(s, load_light_world(light_world_path))
            embed_world_base(s, r, get_embedder(), world.id)
            world_key = world.key
        web.start()
        worker.start()
        client = httpx.Client(base_url=web.url, timeout=180, headers=api_headers())
        sid, npc = open_session(client, world_key)
        turn_ids = [play_turn(client, sid, npc, LINES[0]).json()["turn_id"]]
        wait_for(lambda: archived(sid, pg.url) == set(turn_ids), timeout=60)

        pg.stop()
        for text in LINES[1:3]:
            resp = play_turn(client, sid, npc, text)
            assert resp.status_code == 200, (resp.text, web.tail())
            turn_ids.append(resp.json()["turn_id"])
        wait_for(lambda: "database unavailable, retry" in worker.tail(20000), timeout=60)
        # an invalid payload during the outage: its dead letter is parked in Redis
        bad_id = _send(broker.url, "npc_memory.archive_turn", {"turn_id": "x", "seq": 0})
        wait_for(lambda: r.llen(rkeys.DEAD_LETTERS_PARKED) == 1, timeout=60)
        time.sleep(5)  # the outage lasts a while: the tasks keep waiting
        assert worker.proc.poll() is None

        pg.start()
        wait_for(lambda: archived(sid, pg.url) == set(turn_ids), timeout=240)
        assert _archive_rows(sid, pg.url) == 3
        archive_ids = [turn_task_id("npc_memory.archive_turn", t) for t in turn_ids]
        wait_for(lambda: all(rec.status == "succeeded"
                             for rec in ledger(archive_ids, pg.url).values()), timeout=60)
        rows = ledger(archive_ids, pg.url)
        assert len(rows) == 3
        assert all(rows[t].attempts >= 2 for t in archive_ids[1:])  # they really waited

        _send(broker.url, "npc_memory.reconcile", {})  # beat's job: write the parked dead letter
        wait_for(lambda: r.llen(rkeys.DEAD_LETTERS_PARKED) == 0, timeout=60)
        with session_scope(pg.url) as s:
            dl = s.scalar(select(DeadLetter).where(DeadLetter.task_id == bad_id))
            assert dl is not None and dl.error.startswith("invalid payload")
            assert s.scalar(select(TaskRecord.status).where(TaskRecord.task_id == bad_id)) == "dead"
    finally:
        worker.stop()
        web.stop()
        broker.stop()
        for key in [k for k in _engines if k[1] == normalise_url(pg.url)]:
            _engines.pop(key).dispose()
        pg.remove()
