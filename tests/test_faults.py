"""Fault tests with real processes: a real ``celery worker`` subprocess (prefork), the real
PostgreSQL/SQLite test database, the real llama.cpp model server behind a fault-injecting
proxy (tests/faultproxy.py), and a private Redis server started here.

The private Redis (a ``redis-server`` subprocess on a free port, nothing saved) is the
subprocess worker's broker, result backend and nearline store, and these tests send their
tasks to it through a Celery app of their own. So the in-process ``worker`` fixture of other
test modules (session-scoped, on the shared Redis DB) never consumes these messages, and the
broker can be restarted without touching anybody else's Redis.
"""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest
from sqlalchemy import func, select

from memory.db import session_scope
from models import DeadLetter, LoreEntry, SessionNote, SessionNoteRevision, TaskRecord
from tests.faultproxy import FaultProxy
from tests.procs import PrivateRedis, SubprocessWorker, process_env

TERMINAL = ("succeeded", "dead")


# ---- helpers -------------------------------------------------------------------------------

def _record(task_id: str) -> TaskRecord | None:
    with session_scope() as s:
        return s.scalar(select(TaskRecord).where(TaskRecord.task_id == task_id))


def _status(task_id: str) -> str | None:
    rec = _record(task_id)
    return rec.status if rec else None


def _revisions(key: str) -> int:
    with session_scope() as s:
        return s.scalar(select(func.count()).select_from(SessionNoteRevision).where(
            SessionNoteRevision.idempotency_key == key))


def _entry(world_id: int, key: str) -> LoreEntry:
    with session_scope() as s:
        return s.scalar(select(LoreEntry).where(LoreEntry.world_id == world_id, LoreEntry.key == key))


def _update(game, key: str = "baker_27", text: str | None = None) -> dict:
    return {"session_id": game["id"], "lore_entry_key": key,
            "update_summary": text or "The player paid the baker two silver coins for a rye loaf.",
            "idempotency_key": f"faults:{uuid.uuid4().hex}", "cause": "turn"}


def _turn(game, npc: LoreEntry, player_text: str, npc_text: str) -> dict:
    return {"turn_id": uuid.uuid4().hex, "session_id": game["id"], "world_id": game["world_id"],
            "seq": 1, "npc_entry_id": npc.id, "player_text": player_text, "npc_text": npc_text,
            "latency_ms": 5.0, "created_at": time.time()}


def assert_notes_consistent(session_id: str) -> int:
    """Every note of the session equals its last revision; versions are exactly 1..n."""
    with session_scope() as s:
        notes = s.scalars(select(SessionNote).where(SessionNote.session_id == session_id)).all()
        for note in notes:
            revs = s.scalars(select(SessionNoteRevision).where(SessionNoteRevision.note_id == note.id)
                             .order_by(SessionNoteRevision.version)).all()
            assert [r.version for r in revs] == list(range(1, len(revs) + 1)), note.id
            assert note.version == len(revs), (note.id, note.version, len(revs))
            if revs:
                assert note.content == revs[-1].content
                for prev, cur in zip(revs, revs[1:]):  # a chain: each rewrite starts from the last
                    assert cur.previous_content == prev.content
            else:
                assert note.content == ""
        return len(notes)


# ---- fixtures ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def private_redis():
    r = PrivateRedis()
    r.start()
    yield r
    r.stop()


@pytest.fixture(scope="module")
def proxy(llm_server):
    p = FaultProxy(llm_server).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def fault_app(private_redis):
    """A Celery app with the project's routes, on the private Redis (sends only)."""
    from celery import Celery

    import celeryconfig

    app = Celery("npc_memory_faults", set_as_current=False)  # never the tests' current app
    app.config_from_object(celeryconfig)
    app.conf.broker_url = private_redis.url
    app.conf.result_backend = private_redis.url
    yield app
    app.close()


@pytest.fixture(scope="module")
def sub_worker(private_redis, proxy, database):
    env = process_env(REDIS_URL=private_redis.url, LLM_BASE_URL=proxy.url, LLM_MAX_RETRIES="2",
                      LLM_TIMEOUT_S="60")
    w = SubprocessWorker(env, "note_update,embed,analysis", "faults-worker.log")
    w.start()
    yield w
    w.stop()


@pytest.fixture()
def wait_terminal(wait_for):
    def wait(task_id: str, timeout: float = 120) -> TaskRecord:
        wait_for(lambda: _status(task_id) in TERMINAL, timeout=timeout)
        return _record(task_id)
    return wait


# ---- tests ---------------------------------------------------------------------------------

def test_worker_child_killed_mid_rewrite_redelivers_and_applies_once(
        sub_worker, proxy, fault_app, game_session, wait_terminal):
    """kill -9 of the pool child while its model call is in flight: the message comes back
    (acks_late + reject_on_worker_lost), the update lands exactly once."""
    proxy.clear(default=("slow", 3.0))
    try:
        for i in range(3):
            payload = _update(game_session, text=f"The player bought loaf number {i} from the baker.")
            task_id = f"kill-{i}-{uuid.uuid4().hex}"
            seen = proxy.chat_requests
            fault_app.send_task("npc_memory.update_note", kwargs=payload, task_id=task_id)
            assert proxy.wait_requests(seen + 1, 90), sub_worker.tail()
            time.sleep(0.3 + 0.7 * i)  # somewhere inside the 3 s delay
            children = sub_worker.children()
            assert len(children) == 1, children
            assert _status(task_id) == "running"
            os.kill(children[0].pid, signal.SIGKILL)
            rec = wait_terminal(task_id, timeout=120)
            assert rec.status == "succeeded", (rec.status, rec.error, sub_worker.tail())
            assert rec.attempts >= 2  # it really was delivered again
            assert _revisions(payload["idempotency_key"]) == 1
            assert sub_worker.proc.poll() is None  # the main process survived
        assert_notes_consistent(game_session["id"])
    finally:
        proxy.clear()


def test_model_faults_end_succeeded_or_dead_and_never_corrupt_notes(
        sub_worker, proxy, fault_app, game_session, wait_terminal, wait_for):
    proxy.clear()
    baker = _entry(game_session["world_id"], "baker_27")

    def run(name: str, kwargs: dict, *faults) -> TaskRecord:
        proxy.clear()
        proxy.plan(*faults)
        before = sum(proxy.faults.values())
        task_id = fault_app.send_task(name, kwargs=kwargs).id
        rec = wait_terminal(task_id, timeout=150)
        assert proxy.pending() == 0, f"faults not consumed by {name}: {proxy.pending()}"
        assert sum(proxy.faults.values()) - before == len(faults)
        assert rec.status in TERMINAL
        if rec.status == "dead":
            assert rec.error
            with session_scope() as s:
                dl = s.scalar(select(DeadLetter).where(DeadLetter.task_id == task_id))
            assert dl is not None and dl.payload == kwargs and dl.error
        return rec

    # transient errors inside the HTTP retry budget (LLM_MAX_RETRIES=2: 3 calls)
    up = _update(game_session)
    rec = run("npc_memory.update_note", up, "429", "500")
    assert rec.status == "succeeded", rec.error
    assert _revisions(up["idempotency_key"]) == 1

    # beyond the HTTP budget: ModelError -> Celery retry with backoff -> success
    up = _update(game_session, text="The baker's oven cracked and the player helped mend it.")
    rec = run("npc_memory.update_note", up, "500", "429", "500")
    assert rec.status == "succeeded", rec.error
    assert rec.attempts >= 2
    assert _revisions(up["idempotency_key"]) == 1

    # a slow model and a rewrite cut at the token limit: a cut rewrite that fails the note
    # check is appended instead, so the update always lands once
    for fault in (("slow", 2.0), "truncated"):
        up = _update(game_session, text="A guard told the baker that flour prices will double.")
        rec = run("npc_memory.update_note", up, fault)
        assert rec.status == "succeeded", rec.error
        assert _revisions(up["idempotency_key"]) == 1

    # analysis answering invalid JSON on every attempt: dead-lettered with the reason, no fan-out
    turn = _turn(game_session, baker, "Bake me a pie?", "Aye, for a silver.")
    rec = run("npc_memory.analyze_turn", turn, "invalid_json", "invalid_json", "invalid_json")
    assert rec.status == "dead"
    assert "InvalidModelOutput" in rec.error

    # analysis cut short once, then the real model: succeeded or dead-lettered, with a reason
    turn = _turn(game_session, baker, "I brought flour from the mill, baker.",
                 "Thank you kindly, that will make a fine loaf for the Viscount.")
    rec = run("npc_memory.analyze_turn", turn, "truncated")
    if rec.status == "dead":
        assert "InvalidModelOutput" in rec.error
    else:  # its fan-out ends too
        def fanned():
            with session_scope() as s:
                rows = s.scalars(select(TaskRecord).where(
                    TaskRecord.task_name == "npc_memory.update_note",
                    TaskRecord.payload["turn_id"].as_string() == turn["turn_id"])).all()
            return len(rows) == rec.result["updates"] and all(r.status in TERMINAL for r in rows)
        wait_for(fanned, timeout=150)
    assert_notes_consistent(game_session["id"])


def test_same_message_twice_has_one_effect(sub_worker, proxy, fault_app, game_session, wait_terminal):
    proxy.clear()
    payload = _update(game_session, text="The player returned the baker's lost apron.")
    fixed = f"dup-{uuid.uuid4().hex}"
    fault_app.send_task("npc_memory.update_note", kwargs=payload, task_id=fixed)
    fault_app.send_task("npc_memory.update_note", kwargs=payload, task_id=fixed)
    other = fault_app.send_task("npc_memory.update_note", kwargs=payload).id
    assert wait_terminal(fixed).status == "succeeded"
    rec = wait_terminal(other)
    assert rec.status == "succeeded"
    deadline = time.monotonic() + 60  # the second copy of ``fixed`` has run when attempts == 2
    while _record(fixed).attempts < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _record(fixed).attempts == 2 and _status(fixed) == "succeeded"
    assert _revisions(payload["idempotency_key"]) == 1
    assert rec.result["status"] == "duplicate"
    assert_notes_consistent(game_session["id"])


def test_worker_survives_broker_restart(sub_worker, private_redis, proxy, fault_app, game_session,
                                        wait_terminal):
    """The private Redis is killed and restarted empty on the same port: the worker reconnects
    and processes a task sent after the restart."""
    proxy.clear()
    private_redis.stop()
    time.sleep(2.0)
    assert sub_worker.proc.poll() is None
    private_redis.start()
    payload = _update(game_session, text="After the storm the baker reopened his shop.")
    deadline = time.monotonic() + 30
    while True:  # the sending app reconnects too
        try:
            task_id = fault_app.send_task("npc_memory.update_note", kwargs=payload).id
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    rec = wait_terminal(task_id, timeout=120)
    assert rec.status == "succeeded", (rec.error, sub_worker.tail())
    assert _revisions(payload["idempotency_key"]) == 1
    assert sub_worker.proc.poll() is None
