"""The batched archive (Level 3, PostgreSQL): ``npc_memory.archive_turn`` and
``npc_memory.archive_cards`` through a real
``celery worker`` subprocess consuming only ``archive`` with a batch-sized prefetch (as the
Procfile's ``archiver``), on the real broker and database."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import func, select

from memory.db import session_scope
from models import CardEvent, DeadLetter, LoreEntry, NpcCard, TaskRecord, Turn
from contract.send import turn_task_id
from tests.procs import SubprocessWorker, process_env

NAME = "npc_memory.archive_turn"


@pytest.fixture(scope="module")
def archiver(celery_app):
    w = SubprocessWorker(process_env(), "archive", "archive-batch-worker.log",
                         extra_args=("--prefetch-multiplier", "200"))
    w.start()
    yield w
    w.stop()


def _turns(game, n: int) -> list[dict]:
    return [{"turn_id": uuid.uuid4().hex, "session_id": game["id"], "world_id": game["world_id"],
             "seq": i + 1, "npc_entry_id": 1, "player_text": f"line {i}", "npc_text": f"reply {i}",
             "latency_ms": 1.0, "created_at": time.time()} for i in range(n)]


def _ledger(task_ids: list[str]) -> dict[str, TaskRecord]:
    with session_scope() as s:
        return {r.task_id: r for r in s.scalars(
            select(TaskRecord).where(TaskRecord.task_id.in_(task_ids))).all()}


def _rows(session_id: str) -> dict[str, int]:
    with session_scope() as s:
        return dict(s.execute(select(Turn.id, func.count()).where(Turn.session_id == session_id)
                              .group_by(Turn.id)).all())


def test_same_turns_twice_archive_one_row_each(archiver, celery_app, game_session, wait_for):
    turns = _turns(game_session, 20)
    stable = [celery_app.send_task(NAME, kwargs=t, task_id=turn_task_id(NAME, t["turn_id"])).id
              for t in turns]
    wait_for(lambda: all(r.status == "succeeded" for r in _ledger(stable).values())
             and len(_ledger(stable)) == 20, timeout=60)
    # the same turns again: new task ids (a second sender) and the stable ids (a resend)
    again = [celery_app.send_task(NAME, kwargs=t).id for t in turns]
    for t in turns:
        celery_app.send_task(NAME, kwargs=t, task_id=turn_task_id(NAME, t["turn_id"]))
    wait_for(lambda: all(r.status == "succeeded" for r in _ledger(again).values())
             and len(_ledger(again)) == 20, timeout=60)
    wait_for(lambda: all(r.attempts == 2 for r in _ledger(stable).values()), timeout=60)
    rows = _rows(game_session["id"])
    assert rows == {t["turn_id"]: 1 for t in turns}
    assert sum(r.result["written"] for r in _ledger(stable).values()) == 20
    assert sum(r.result["written"] for r in _ledger(again).values()) == 0


def test_burst_is_archived_in_few_batches_and_a_bad_payload_alone_is_dead(
        archiver, celery_app, game_session, wait_for):
    n = 300
    turns = _turns(game_session, n)
    ids = [turn_task_id(NAME, t["turn_id"]) for t in turns]
    bad_at = 150
    bad_id = f"bad-{uuid.uuid4().hex}"
    t0 = time.monotonic()
    for i, (t, task_id) in enumerate(zip(turns, ids)):
        if i == bad_at:
            celery_app.send_task(NAME, kwargs={"turn_id": "x", "seq": 0}, task_id=bad_id)
        celery_app.send_task(NAME, kwargs=t, task_id=task_id)
    sending_s = time.monotonic() - t0
    wait_for(lambda: len(_ledger(ids)) == n and all(r.status == "succeeded"
                                                    for r in _ledger(ids).values()), timeout=120)
    assert len(_rows(game_session["id"])) == n
    ledger = _ledger(ids)
    sizes = {r.result["batch_id"]: r.result["batch_size"] for r in ledger.values()}
    # the archiver: at most one batch per 100 ms flush while the burst was being sent, plus
    # one per 100 turns; a handful of multi-row writes, not 300 (the bound allows for a slow
    # sender). The in-process test worker of other modules (prefetch 1, two threads) may run
    # in this session too and take a few turns in batches of 1-2: most turns must still go
    # in the archiver's large batches.
    bound = int(sending_s / 0.1) + n // 100 + 2
    large = [size for size in sizes.values() if size >= 10]
    assert sum(large) >= n // 2, (sending_s, sorted(sizes.values()))
    assert len(large) <= min(bound, n // 5), (sending_s, sorted(sizes.values()))
    assert max(sizes.values()) <= 100
    assert sum(sizes.values()) == n
    wait_for(lambda: _ledger([bad_id]).get(bad_id) is not None
             and _ledger([bad_id])[bad_id].status == "dead", timeout=30)
    with session_scope() as s:
        dl = s.scalar(select(DeadLetter).where(DeadLetter.task_id == bad_id))
        assert dl is not None and dl.error.startswith("invalid payload")


# --------------------------------------------------------------------------- card archives

CARDS = "npc_memory.archive_cards"


def _card_payload(session_id: str, npc: int, rev: int, turn: str, n_events: int = 2) -> dict:
    events = [{"event_id": f"{turn}:r{i}", "card": "relationship", "kind": "gift", "turn_id": turn,
               "seq": rev, "detail": f"gift {i}", "trust_delta": 1, "applied_at": time.time()}
              for i in range(n_events)]
    return {"session_id": session_id, "npc_entry_id": npc, "turn_id": turn,
            "cards": {"relationship": {"rev": rev, "trust": rev},
                      "quest": {"rev": rev, "quests": [{"name": "q", "goal": f"goal {rev}"}]}},
            "events": events}


def _cards(session_id: str) -> dict:
    with session_scope() as s:
        snaps = {(c.npc_entry_id, c.kind): c.rev for c in s.scalars(
            select(NpcCard).where(NpcCard.session_id == session_id))}
        events = dict(s.execute(select(CardEvent.event_id, func.count())
                                .where(CardEvent.session_id == session_id)
                                .group_by(CardEvent.event_id)).all())
    return {"snapshots": snaps, "events": events}


def test_card_archives_are_batched_idempotent_and_a_bad_one_is_dead_alone(
        archiver, celery_app, game_session, wait_for):
    sid = game_session["id"]
    with session_scope() as s:
        npcs = list(s.scalars(select(LoreEntry.id).where(
            LoreEntry.world_id == game_session["world_id"]).order_by(LoreEntry.id).limit(3)))
    # 3 NPCs x 20 turns each, sent newest revision first for the last one (late deliveries)
    payloads = []
    for npc in npcs:
        revs = range(20, 0, -1) if npc == npcs[-1] else range(1, 21)
        payloads += [_card_payload(sid, npc, rev, f"{sid[:8]}-{npc}-{rev}") for rev in revs]
    ids = [uuid.uuid4().hex for _ in payloads]
    bad_id = f"bad-{uuid.uuid4().hex}"
    for i, (p, task_id) in enumerate(zip(payloads, ids)):
        if i == 30:  # a malformed card: dead-lettered alone, its batch is written
            celery_app.send_task(CARDS, kwargs={**p, "cards": {"relationship": {"trust": "x"}}},
                                 task_id=bad_id)
        celery_app.send_task(CARDS, kwargs=p, task_id=task_id)
    wait_for(lambda: len(_ledger(ids)) == len(ids)
             and all(r.status == "succeeded" for r in _ledger(ids).values()), timeout=120)
    stored = _cards(sid)
    # the highest revision wins whatever the arrival order; every event once
    assert stored["snapshots"] == {(npc, kind): 20 for npc in npcs
                                   for kind in ("relationship", "quest")}
    assert stored["events"] == {e["event_id"]: 1 for p in payloads for e in p["events"]}
    ledger = _ledger(ids)
    assert sum(r.result["events"] for r in ledger.values()) == 120
    sizes = {r.result["batch_id"]: r.result["batch_size"] for r in ledger.values()}
    assert sum(sizes.values()) == len(ids) and max(sizes.values()) <= 100
    assert len(sizes) < len(ids)  # several messages per multi-row write
    wait_for(lambda: _ledger([bad_id]).get(bad_id) is not None
             and _ledger([bad_id])[bad_id].status == "dead", timeout=30)
    with session_scope() as s:
        dl = s.scalar(select(DeadLetter).where(DeadLetter.task_id == bad_id))
        assert dl is not None and dl.error.startswith("invalid payload")

    # redelivery: the same task ids again (counted as second attempts, nothing rewritten) and
    # the same payloads under new ids (a second sender: written as no-ops)
    for p, task_id in zip(payloads[:10], ids[:10]):
        celery_app.send_task(CARDS, kwargs=p, task_id=task_id)
    again = [celery_app.send_task(CARDS, kwargs=p).id for p in payloads]
    wait_for(lambda: len(_ledger(again)) == len(again)
             and all(r.status == "succeeded" for r in _ledger(again).values()), timeout=120)
    wait_for(lambda: all(r.attempts == 2 for r in _ledger(ids[:10]).values()), timeout=60)
    assert sum(r.result["events"] + r.result["snapshots"] for r in _ledger(again).values()) == 0
    assert _cards(sid) == stored
