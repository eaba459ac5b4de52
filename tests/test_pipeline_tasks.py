"""Each task through a real Celery worker on the real broker, with the real model server."""

from __future__ import annotations

import time
import uuid

from sqlalchemy import func, select

from memory import nearline
from memory.db import session_scope
from models import DeadLetter, LoreEntry, SessionNote, SessionNoteRevision, StoredVector, TaskRecord, Turn


def _entry(world_id: int, key: str) -> LoreEntry:
    with session_scope() as s:
        return s.scalar(select(LoreEntry).where(LoreEntry.world_id == world_id, LoreEntry.key == key))


def _turn(game, npc: LoreEntry, player_text: str, npc_text: str) -> dict:
    return {"turn_id": uuid.uuid4().hex, "session_id": game["id"], "world_id": game["world_id"],
            "seq": 1, "npc_entry_id": npc.id, "player_text": player_text, "npc_text": npc_text,
            "latency_ms": 5.0, "created_at": time.time()}


def _status(task_id: str) -> str | None:
    with session_scope() as s:
        return s.scalar(select(TaskRecord.status).where(TaskRecord.task_id == task_id))


def test_archive_turn_is_idempotent(worker, celery_app, game_session, wait_for):
    baker = _entry(game_session["world_id"], "baker_27")
    turn = _turn(game_session, baker, "Good morning, baker!", "Fresh bread today.")
    first = celery_app.send_task("npc_memory.archive_turn", kwargs=turn).id
    second = celery_app.send_task("npc_memory.archive_turn", kwargs=turn).id
    wait_for(lambda: _status(first) == "succeeded" and _status(second) == "succeeded")
    with session_scope() as s:
        rows = s.scalars(select(Turn).where(Turn.id == turn["turn_id"])).all()
        assert len(rows) == 1
        assert rows[0].player_text == "Good morning, baker!"


def test_invalid_payload_is_dead_not_dropped(worker, celery_app, wait_for):
    bad = {"session_id": "s", "lore_entry_key": "baker_27", "update_summary": "",
           "idempotency_key": "k", "unexpected": 1}
    task_id = celery_app.send_task("npc_memory.update_note", kwargs=bad).id
    wait_for(lambda: _status(task_id) == "dead")
    with session_scope() as s:
        dl = s.scalar(select(DeadLetter).where(DeadLetter.task_id == task_id))
        assert dl is not None and "invalid payload" in dl.error
        assert dl.payload == bad


def test_update_note_writes_revision_embeds_and_is_idempotent(worker, celery_app, game_session, wait_for):
    sid = game_session["id"]
    baker = _entry(game_session["world_id"], "baker_27")
    payload = {"session_id": sid, "lore_entry_key": "baker_27",
               "update_summary": "The player gave the baker a sack of rye flour as a gift.",
               "idempotency_key": f"test:{uuid.uuid4().hex}", "cause": "turn"}
    t1 = celery_app.send_task("npc_memory.update_note", kwargs=payload).id
    wait_for(lambda: _status(t1) == "succeeded")
    t2 = celery_app.send_task("npc_memory.update_note", kwargs=payload).id  # redelivery
    wait_for(lambda: _status(t2) == "succeeded")

    def vector():
        with session_scope() as s:
            return s.scalar(select(StoredVector).where(StoredVector.scope == f"session:{sid}",
                                                       StoredVector.lore_entry_id == baker.id))
    vec = wait_for(vector)
    with session_scope() as s:
        note = s.scalar(select(SessionNote).where(SessionNote.session_id == sid,
                                                  SessionNote.lore_entry_id == baker.id))
        revisions = s.scalars(select(SessionNoteRevision).where(SessionNoteRevision.note_id == note.id)).all()
    assert note.version == 1 and len(revisions) == 1
    assert note.content.strip()
    assert revisions[0].event_summary == payload["update_summary"]
    assert nearline.get_note(nearline.get_redis(), sid, baker.id) == note.content
    assert "[Session-Specific Notes]" in vec.document and note.content in vec.document
    with session_scope() as s:  # base lore is never rewritten
        assert s.get(LoreEntry, baker.id).content == baker.content


def test_create_entity_flags_provenance_and_is_idempotent(worker, celery_app, game_session, wait_for):
    sid = game_session["id"]
    payload = {"session_id": sid, "entity_type": "character", "turn_id": "turn-x",
               "creation_summary": "A pale stranger named Count Orlok arrived by night carriage "
                                   "and took rooms above the tavern.",
               "idempotency_key": f"turn-x:c{uuid.uuid4().hex[:6]}"}
    t1 = celery_app.send_task("npc_memory.create_entity", kwargs=payload).id
    wait_for(lambda: _status(t1) in ("succeeded", "dead"), timeout=300)
    assert _status(t1) == "succeeded"
    t2 = celery_app.send_task("npc_memory.create_entity", kwargs=payload).id
    wait_for(lambda: _status(t2) == "succeeded")
    with session_scope() as s:
        made = s.scalars(select(LoreEntry).where(LoreEntry.origin_key == payload["idempotency_key"])).all()
        result = s.scalar(select(TaskRecord.result).where(TaskRecord.task_id == t2))
    assert len(made) == 1
    assert result["status"] == "duplicate"
    entry = made[0]
    assert entry.is_dynamically_generated and entry.created_in_session_id == sid
    assert entry.created_by_turn_id == "turn-x" and entry.content


def test_analyze_turn_fans_out_update_tasks(worker, celery_app, game_session, wait_for):
    baker = _entry(game_session["world_id"], "baker_27")
    turn = _turn(game_session, baker, "I brought you a sack of flour from the mill, baker.",
                 "Thank you kindly, that will make a fine loaf for the Viscount.")
    t = celery_app.send_task("npc_memory.analyze_turn", kwargs=turn).id
    wait_for(lambda: _status(t) in ("succeeded", "dead"), timeout=300)
    assert _status(t) == "succeeded"

    def fanned():
        with session_scope() as s:
            return s.scalar(select(func.count()).select_from(TaskRecord).where(
                TaskRecord.task_name == "npc_memory.update_note",
                TaskRecord.payload["turn_id"].as_string() == turn["turn_id"]))
    assert wait_for(fanned) >= 1
    # whatever card events the small model named were applied to the baker's cards, once each
    from memory import cards

    with session_scope() as s:
        result = s.scalar(select(TaskRecord.result).where(TaskRecord.task_id == t))
    applied = cards.turn_applied(nearline.get_redis(), game_session["id"], baker.id, turn["turn_id"])
    assert len(applied) == result["card_events"] and result["card_duplicates"] == 0
    assert all(e["kind"] in cards.RELATIONSHIP_KINDS + cards.QUEST_KINDS for e in applied)
    now = cards.get_cards(nearline.get_redis(), game_session["id"], baker.id)
    assert sum(now.relationship.counts.values()) + sum(now.quest.counts.values()) == len(applied)


def test_simulate_world_traces_its_choice_advances_the_clock_once_and_reruns_idempotently(
        worker, celery_app, game_session, wait_for):
    """A tick for one session: its trace names the chosen NPCs with their scores and signals;
    the in-game clock moves by one tick; the simulated revisions carry that in-game time; the
    same tick sent again (another task id) adds no revision and does not move the clock."""
    from models import GameSession

    sid = game_session["id"]
    r = nearline.get_redis()
    tick = f"tick-{uuid.uuid4().hex[:8]}"
    t = celery_app.send_task("npc_memory.simulate_world", kwargs={"session_id": sid, "tick_id": tick}).id
    wait_for(lambda: _status(t) in ("succeeded", "dead"), timeout=300)
    assert _status(t) == "succeeded"
    result = _result(t)
    assert 1 <= len(result["npcs"]) <= 2 and result["updates"] >= 1
    assert set(result["npcs"][0]["why"]) == {"promises", "relationship", "mentions",
                                             "hours_since_simulated"}
    assert result["tokens"] <= 2 * result["token_budget"]  # one call, plus a retry at most
    assert result["game_minutes"] == 120 and result["elapsed"] == "2 hours"
    assert nearline.get_session(r, sid)["game_minutes"] == 120
    prefix = f"{tick}:{sid}:"

    def simulated_revisions():
        with session_scope() as s:
            return s.scalars(select(SessionNoteRevision).where(
                SessionNoteRevision.idempotency_key.startswith(prefix))).all()
    revs = wait_for(lambda: len(simulated_revisions()) == result["updates"] and simulated_revisions(),
                    timeout=300)
    chosen = {n["key"] for n in result["npcs"]}
    for rev in revs:
        assert rev.cause in ("simulation", "coalesced") and rev.game_minutes == 120
        assert rev.idempotency_key[len(prefix):] in chosen | set(result["did"])
    with session_scope() as s:
        assert s.get(GameSession, sid).game_minutes == 120

    again = celery_app.send_task("npc_memory.simulate_world",
                                 kwargs={"session_id": sid, "tick_id": tick}).id
    wait_for(lambda: _status(again) == "succeeded", timeout=300)
    assert _result(again)["game_minutes"] == 120  # the clock moved once for this tick
    ids = [x for x in _ledger_ids("npc_memory.update_note", prefix)]
    wait_for(lambda: all(_status(i) in ("succeeded", "dead") for i in _ledger_ids(
        "npc_memory.update_note", prefix)), timeout=300)
    assert ids and len(simulated_revisions()) == result["updates"]  # nothing applied twice


def _ledger_ids(task_name: str, key_prefix: str) -> list[str]:
    with session_scope() as s:
        return list(s.scalars(select(TaskRecord.task_id).where(
            TaskRecord.task_name == task_name, TaskRecord.idempotency_key.startswith(key_prefix))))


def test_unknown_task_name_has_no_route(celery_app):
    import pytest

    from contract.payloads import EmbedPayload
    from contract.send import celery_sender
    from tasks.base import enqueue

    with pytest.raises(RuntimeError, match="no queue"):
        enqueue(celery_sender(celery_app), "npc_memory.not_a_task", EmbedPayload(lore_entry_id=1))


def test_poison_message_is_dead_after_too_many_deliveries(worker, celery_app, game_session, wait_for):
    """The same task id delivered more times than its retries + tolerated redeliveries is
    dead-lettered instead of run again (a message that keeps killing its worker). Deliveries
    after the first success are counted but not run again."""
    from tasks.base import MAX_REDELIVERIES

    baker = _entry(game_session["world_id"], "baker_27")
    turn = _turn(game_session, baker, "Poison?", "No, bread.")
    task_id = f"poison-{uuid.uuid4().hex}"
    limit = MAX_REDELIVERIES + 1  # no retries: the first delivery and the tolerated ones
    for n in range(1, limit + 1):  # redeliveries arrive one after another
        celery_app.send_task("npc_memory.archive_turn", kwargs=turn, task_id=task_id)
        wait_for(lambda n=n: _attempts(task_id) == n and _status(task_id) == "succeeded")
    result = _result(task_id)  # a batch task: the result also names its batch
    assert result["written"] == 1 and result["batch_size"] >= 1  # later deliveries did not run it again
    celery_app.send_task("npc_memory.archive_turn", kwargs=turn, task_id=task_id)
    wait_for(lambda: _status(task_id) == "dead")
    with session_scope() as s:
        dl = s.scalar(select(DeadLetter).where(DeadLetter.task_id == task_id))
        assert dl is not None and f"delivered {limit + 1} times" in dl.error
        assert s.scalar(select(func.count()).select_from(Turn).where(Turn.id == turn["turn_id"])) == 1


def _result(task_id: str) -> dict | None:
    with session_scope() as s:
        return s.scalar(select(TaskRecord.result).where(TaskRecord.task_id == task_id))


def _attempts(task_id: str) -> int:
    with session_scope() as s:
        return s.scalar(select(TaskRecord.attempts).where(TaskRecord.task_id == task_id)) or 0


def test_queued_updates_to_one_note_are_coalesced(worker, celery_app, game_session, wait_for):
    """Four updates queued for the same note land in one revision; the tasks whose events were
    folded into it make no model call of their own."""
    from models import AppliedNoteEvent

    sid = game_session["id"]
    r = nearline.get_redis()
    events = ["The baker opened early.", "The baker sold a pie to the guard.",
              "The baker burnt the rye.", "The baker closed the shop at noon."]
    payloads = [{"session_id": sid, "lore_entry_key": "baker_27", "update_summary": e,
                 "idempotency_key": f"burst:{uuid.uuid4().hex}", "cause": "turn"} for e in events]
    for p in payloads:
        nearline.add_pending(r, sid, "baker_27", p["idempotency_key"], p["update_summary"], None, "turn")
    ids = [celery_app.send_task("npc_memory.update_note", kwargs=p).id for p in payloads]
    wait_for(lambda: all(_status(t) == "succeeded" for t in ids))
    keys = [p["idempotency_key"] for p in payloads]
    with session_scope() as s:
        applied = s.scalars(select(AppliedNoteEvent).where(AppliedNoteEvent.idempotency_key.in_(keys))).all()
        results = [s.scalar(select(TaskRecord.result).where(TaskRecord.task_id == t)) for t in ids]
    assert len(applied) == 4 and len({a.revision_id for a in applied}) == 1
    assert sum(res["status"] == "coalesced" for res in results) >= 2
    assert nearline.pending_updates(r, sid, "baker_27") == []
