"""Save slots (``memory.timeline``) against the real PostgreSQL and Redis, the dialogue
server's routes and CLI, and the real Celery worker and model for a rewrite in flight: fork a
session at a turn and let both diverge, roll a session back across a note rewrite, an entity
creation and a card event, and a late task of a rolled-back turn that does not apply."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
from sqlalchemy import select
from typer.testing import CliRunner

from inference.embedding import get_embedder
from memory import cards as mc
from memory import fencing, nearline, summaries, timeline
from memory import keys as rkeys
from memory.archive import insert_turns
from memory.db import session_scope
from memory.evidence import embed_turns
from memory.hot_cache import HotCache
from memory.notes import apply_note_update
from memory.vector_index import VectorIndex, VectorSync, evidence_scope, session_scope as vscope
from memory.vectors import embed_entry
from models import (
    CardEvent, EvidenceVector, GameSession, LoreEntry, NpcCard, SessionNote, SessionNoteRevision,
    SessionRollback, StoredVector, TaskRecord, Turn,
)
from tasks.base import _ledger

NPC = "baker_27"


def _npc_id(world_id: int, key: str = NPC) -> int:
    with session_scope() as s:
        return s.scalar(select(LoreEntry.id).where(LoreEntry.world_id == world_id,
                                                   LoreEntry.key == key))


def _play(sid: str, world_id: int, npc_id: int, text: str, reply: str = "Hm.") -> dict:
    """Record a turn as the dialogue server does (Redis), archive it and embed its evidence
    as the archive and embed workers do."""
    r = nearline.get_redis()
    turn = {"turn_id": uuid.uuid4().hex, "session_id": sid, "world_id": world_id,
            "seq": nearline.next_turn_seq(r, sid), "npc_entry_id": npc_id,
            "player_text": text, "npc_text": reply, "latency_ms": 1.0,
            "created_at": time.time()}
    turn["game_minutes"] = 30 * turn["seq"]
    nearline.record_turn(r, sid, turn)
    nearline.settle_turn(r, turn["turn_id"])
    with session_scope() as s:
        insert_turns(s, [turn])
    with session_scope() as s:
        embed_turns(s, r, get_embedder(), [turn["turn_id"]])
    time.sleep(0.01)  # distinct creation times
    return turn


def _append(title, lore, note, event):
    return ((note + "\n" + event).strip(), 0)


def _note_event(sid: str, entry_id: int, turn: dict, event: str, i: int = 0):
    with session_scope() as s:
        res = apply_note_update(s, session_id=sid, lore_entry_id=entry_id, event=event,
                                idempotency_key=f"{turn['turn_id']}:u{i}", rewrite=_append,
                                turn_id=turn["turn_id"], game_minutes=turn["game_minutes"])
    assert res.status == "written", res
    nearline.set_note(nearline.get_redis(), sid, entry_id, res.after, turn_ids=list(res.turn_ids))
    return res


def _card(sid: str, npc_id: int, turn: dict, kind: str, detail: str):
    return mc.apply_events(nearline.get_redis(), sid, npc_id, [mc.RelationshipEvent(
        event_id=f"{turn['turn_id']}:r0", kind=kind, detail=detail, intensity=5,
        turn_id=turn["turn_id"], seq=turn["seq"])])


def _create(sid: str, world_id: int, turn: dict, title: str, content: str) -> LoreEntry:
    r = nearline.get_redis()
    with session_scope() as s:
        e = LoreEntry(world_id=world_id, key=f"{title.lower().replace(' ', '-')}-{uuid.uuid4().hex[:8]}",
                      entity_type="item", title=title, content=content,
                      is_dynamically_generated=True, created_in_session_id=sid,
                      created_by_turn_id=turn["turn_id"], origin_key=f"{turn['turn_id']}:c0")
        s.add(e)
        s.commit()
        nearline.cache_entries(r, world_id, [e], session_id=sid)
        embed_entry(s, r, get_embedder(), e.id, sid)
        s.commit()
        s.expunge(e)
        return e


def _note(sid: str, entry_id: int) -> SessionNote | None:
    with session_scope() as s:
        n = s.scalar(select(SessionNote).where(SessionNote.session_id == sid,
                                               SessionNote.lore_entry_id == entry_id))
        if n is not None:
            s.expunge(n)
        return n


def _send_nothing(name: str, kwargs: dict, task_id: str | None = None) -> str:
    return "not-sent"


def test_fork_then_diverge(client, game_session):
    sid, wid = game_session["id"], game_session["world_id"]
    r = nearline.get_redis()
    npc = _npc_id(wid)
    t1 = _play(sid, wid, npc, "My name is Ann and I love rye bread.")
    first = _note_event(sid, npc, t1, "Ann told the baker she loves rye bread.").after
    _card(sid, npc, t1, "gift", "Ann brought the baker a jar of honey.")
    t2 = _play(sid, wid, npc, "I found a silver amulet in the mill.")
    _note_event(sid, npc, t2, "Ann showed the baker a silver amulet from the mill.")
    _card(sid, npc, t2, "insult", "Ann mocked the baker's burnt loaves.")
    amulet = _create(sid, wid, t2, "Silver Amulet", "A tarnished amulet found in the mill.")
    summaries.save_summary(r, sid, "Ann met the baker.", 1)

    res = client.post(f"/v1/sessions/{sid}/fork", json={"at_turn": t1["turn_id"]})
    assert res.status_code == 201, res.text
    fork = res.json()
    fid = fork["session_id"]
    assert fid != sid and fork["forked_from"] == sid and fork["at_seq"] == t1["seq"]
    assert fork["counts"]["turns"] == 1 and fork["counts"]["notes"] == 1
    assert fork["counts"]["entities"] == 0 and fork["counts"]["card_events"] == 1
    assert fork["counts"]["summary"] == 1 and fork["game_minutes"] == t1["game_minutes"]

    # the fork remembers turn 1 only; the source is untouched
    assert nearline.get_note(r, fid, npc) == first and "rye bread" in first
    assert "amulet" in nearline.get_note(r, sid, npc)
    assert _note(fid, npc).version == 1 and _note(sid, npc).version == 2
    fcards = mc.get_cards(r, fid, npc)
    assert [g.text for g in fcards.relationship.gifts] == ["Ann brought the baker a jar of honey."]
    assert fcards.relationship.insults == []
    assert len(mc.get_cards(r, sid, npc).relationship.insults) == 1
    assert nearline.resolve_key(r, wid, fid, amulet.key) is None
    assert nearline.resolve_key(r, wid, sid, amulet.key) == amulet.id
    assert [t["player_text"] for t in nearline.recent_turns(r, fid, 10)] == [t1["player_text"]]
    assert summaries.get_summary(r, fid)["summary"] == "Ann met the baker."
    with session_scope() as s:
        copied = s.scalars(select(Turn).where(Turn.session_id == fid)).all()
        assert [(t.seq, t.player_text) for t in copied] == [(1, t1["player_text"])]
        assert copied[0].id == timeline.fork_turn_id(fid, t1["turn_id"])
        assert s.scalar(select(EvidenceVector.item_id).where(
            EvidenceVector.session_id == fid, EvidenceVector.part == 0)) == 2
        assert s.get(GameSession, fid).forked_from_session_id == sid
    # the fork's turn numbers continue after the turn it was made at
    assert nearline.next_turn_seq(r, fid) == 2

    # both sessions go on differently and remember different things
    f2 = _play(fid, wid, npc, "I will help you bake for the festival.")
    _note_event(fid, npc, f2, "Ann promised to help bake for the festival.")
    t3 = _play(sid, wid, npc, "I am leaving town tomorrow.")
    _note_event(sid, npc, t3, "Ann said she is leaving town tomorrow.")
    fork_note, src_note = nearline.get_note(r, fid, npc), nearline.get_note(r, sid, npc)
    assert "festival" in fork_note and "amulet" not in fork_note and "leaving" not in fork_note
    assert "leaving" in src_note and "amulet" in src_note and "festival" not in src_note

    # an entity created before the fork point is copied into the fork as its own entry
    other = client.post(f"/v1/sessions/{sid}/fork", json={"at_turn": t2["turn_id"]}).json()
    assert other["counts"]["entities"] == 1
    with session_scope() as s:
        copy = s.scalar(select(LoreEntry).where(LoreEntry.created_in_session_id ==
                                                other["session_id"]))
        assert copy.title == "Silver Amulet" and copy.id != amulet.id
    # 404 for an unknown turn or session
    assert client.post(f"/v1/sessions/{sid}/fork", json={"at_turn": "nope"}).status_code == 404
    assert client.post("/v1/sessions/nope/fork", json={"at_turn": t1["turn_id"]}).status_code == 404


def test_rollback_across_a_rewrite_an_entity_and_a_card_event(client, game_session):
    sid, wid = game_session["id"], game_session["world_id"]
    r = nearline.get_redis()
    npc = _npc_id(wid)
    index = VectorIndex(get_embedder().dim, get_embedder().name)
    sync = VectorSync(index, r, block_ms=50)
    sync.start_id()
    hot = HotCache(ttl_s=60, turns=5)

    t1 = _play(sid, wid, npc, "My name is Ann and I love rye bread.")
    first = _note_event(sid, npc, t1, "Ann told the baker she loves rye bread.").after
    _card(sid, npc, t1, "gift", "Ann brought the baker a jar of honey.")
    t2 = _play(sid, wid, npc, "I stole the silver amulet from the mill.")
    _note_event(sid, npc, t2, "Ann admitted stealing a silver amulet from the mill.")
    rel_before = _card(sid, npc, t2, "betrayal", "Ann stole from the miller.").cards.relationship
    amulet = _create(sid, wid, t2, "Silver Amulet", "A tarnished amulet stolen from the mill.")
    with session_scope() as s:  # the archive of card events (as archive_cards writes it)
        s.add(CardEvent(event_id=f"{t2['turn_id']}:r0", session_id=sid, npc_entry_id=npc,
                        card="relationship", kind="betrayal", turn_id=t2["turn_id"], seq=2))
    _ledger(f"npc_memory.update_note:{t2['turn_id']}:late", "npc_memory.update_note",
            status="queued", session_id=sid, payload={"session_id": sid, "turn_id": t2["turn_id"]})
    _ledger(f"npc_memory.create_entity:{t2['turn_id']}:dead", "npc_memory.create_entity",
            status="dead", session_id=sid, payload={"session_id": sid, "turn_id": t2["turn_id"]})
    summaries.save_summary(r, sid, "Ann stole an amulet.", 2)
    while sync.poll():
        pass
    assert index.size(vscope(sid)) == 1 and index.size(evidence_scope(sid)) == 4
    assert "amulet" in hot.get(r, sid, NPC).note

    res = client.post(f"/v1/sessions/{sid}/rollback", json={"to_turn": t1["turn_id"]})
    assert res.status_code == 200, res.text
    out = res.json()
    assert out["turn_ids"] == [t2["turn_id"]] and out["epoch"] == 1 and out["to_seq"] == 1
    assert out["counts"] == {"turns": 1, "note_revisions": 1, "entities": 1, "card_events": 1,
                             "summaries": 1, "evidence_items": 2, "tasks_cancelled": 2}

    # the note rewrite: back to turn 1's text, as a new revision
    note = _note(sid, npc)
    assert note.content == first and note.version == 3
    assert nearline.get_note(r, sid, npc) == note.content
    assert nearline.get_note_turns(r, sid, npc) == [t1["turn_id"]]
    with session_scope() as s:
        last = s.scalar(select(SessionNoteRevision).where(SessionNoteRevision.note_id == note.id,
                                                          SessionNoteRevision.version == 3))
        assert (last.cause, last.event_summary) == ("rollback", "rollback to version 1")
    # the entity: retracted (kept in history), out of the session's keys and vectors
    with session_scope() as s:
        e = s.get(LoreEntry, amulet.id)
        assert e.retracted_at is not None and e.title == "Silver Amulet"
        assert s.scalar(select(StoredVector.id).where(StoredVector.lore_entry_id == amulet.id)) is None
    assert nearline.resolve_key(r, wid, sid, amulet.key) is None
    # the card event: gone from the cards and the archive, the gift stays
    rel = mc.get_cards(r, sid, npc).relationship
    assert rel.betrayals == [] and [g.text for g in rel.gifts] == ["Ann brought the baker a jar of honey."]
    assert rel.trust > rel_before.trust and rel.rev > rel_before.rev
    assert [e["kind"] for e in mc.applied_events(r, sid, npc)] == ["gift"]
    assert [m["kind"] for m in summaries.salient_memories(r, sid, npc)] == ["gift"]
    with session_scope() as s:
        assert s.scalar(select(CardEvent.id).where(CardEvent.turn_id == t2["turn_id"])) is None
        archived = s.scalar(select(NpcCard).where(NpcCard.session_id == sid,
                                                  NpcCard.npc_entry_id == npc,
                                                  NpcCard.kind == "relationship"))
        assert archived.rev == rel.rev and archived.card["betrayals"] == []
    # summary, evidence, turns, tasks
    assert summaries.get_summary(r, sid) is None
    assert sorted(int(k) for k in r.hkeys(rkeys.evidence(sid))) == [2, 3]
    assert [t["turn_id"] for t in nearline.recent_turns(r, sid, 10)] == [t1["turn_id"]]
    with session_scope() as s:
        assert s.get(Turn, t2["turn_id"]).rolled_back_at is not None  # kept, marked
        assert s.scalar(select(EvidenceVector.id).where(EvidenceVector.turn_id == t2["turn_id"])) is None
        statuses = {t.task_id: t.status for t in s.scalars(select(TaskRecord).where(
            TaskRecord.session_id == sid, TaskRecord.task_id.contains(t2["turn_id"])))}
        assert set(statuses.values()) == {"cancelled"} and len(statuses) == 2
        rb = s.scalar(select(SessionRollback).where(SessionRollback.session_id == sid))
        assert rb.turn_ids == [t2["turn_id"]] and rb.counts == out["counts"]
        assert s.get(GameSession, sid).epoch == 1
    # every dialogue server's index drops the vectors (op=remove on the stream)
    deadline = time.monotonic() + 5
    while (index.size(vscope(sid)) or index.size(evidence_scope(sid)) != 2) \
            and time.monotonic() < deadline:
        sync.poll()
    assert index.size(vscope(sid)) == 0 and index.size(evidence_scope(sid)) == 2
    # the hot cache sees the rolled-back note and turns on its next use
    entry = hot.get(r, sid, NPC)
    assert "amulet" not in entry.note and [t["turn_id"] for t in entry.turns] == [t1["turn_id"]]
    assert "betray" not in entry.cards_text(600).lower()
    # the session goes on: turn numbers are not reused, new memory applies
    t3 = _play(sid, wid, npc, "Let us bake together.")
    assert t3["seq"] == 4
    assert "bake together" in _note_event(sid, npc, t3, "Ann offered to bake together.").after
    # the ledger's listing knows the status; a rolled-back turn cannot be a rollback target
    got = client.get(f"/v1/sessions/{sid}/tasks", params={"status": "cancelled"})
    assert got.status_code == 200 and len(got.json()) == 2
    assert client.post(f"/v1/sessions/{sid}/rollback",
                       json={"to_turn": t2["turn_id"]}).status_code == 404
    assert client.get(f"/v1/sessions/{sid}/rollbacks").json()[0]["turn_ids"] == [t2["turn_id"]]


def test_cli_fork_and_rollback(game_session):
    from workers.cli import cli

    sid, wid = game_session["id"], game_session["world_id"]
    npc = _npc_id(wid)
    t1 = _play(sid, wid, npc, "Good morning.")
    t2 = _play(sid, wid, npc, "Give me your bread.")
    runner = CliRunner()
    res = runner.invoke(cli, ["fork-session", sid, t1["turn_id"]])
    assert res.exit_code == 0, res.output
    assert '"forked_from": "' + sid in res.output
    res = runner.invoke(cli, ["rollback-session", sid, t1["turn_id"]])
    assert res.exit_code == 0, res.output
    assert t2["turn_id"] in res.output
    res = runner.invoke(cli, ["rollback-session", sid, "nope"])
    assert res.exit_code == 1 and "unknown turn" in res.output


def test_a_rewrite_in_flight_for_a_rolled_back_turn_does_not_apply(game_session):
    """Domain level, deterministic: the rewrite of turn 2 is held inside its model call while
    the session is rolled back to turn 1; its write then finds the epoch moved and its turn
    undone, and writes nothing. Card events and entity checks of that turn see it too."""
    sid, wid = game_session["id"], game_session["world_id"]
    r = nearline.get_redis()
    npc = _npc_id(wid)
    t1 = _play(sid, wid, npc, "Hello there.")
    first = _note_event(sid, npc, t1, "Ann greeted the baker.").after
    t2 = _play(sid, wid, npc, "I burned down the mill.")
    started, release = threading.Event(), threading.Event()

    def slow(title, lore, note, event):
        started.set()
        assert release.wait(30)
        return (note + "\n" + event, 0)

    result = {}

    def run():
        with session_scope() as s:
            result["res"] = apply_note_update(
                s, session_id=sid, lore_entry_id=npc, event="Ann burned down the mill.",
                idempotency_key=f"{t2['turn_id']}:u0", rewrite=slow, turn_id=t2["turn_id"])

    th = threading.Thread(target=run)
    th.start()
    assert started.wait(30)
    with session_scope() as s:
        timeline.rollback_session(s, r, sid, t1["turn_id"], _send_nothing)
    release.set()
    th.join(30)
    assert result["res"].status == "cancelled"
    note = _note(sid, npc)
    assert note.content == first and note.version == 1
    assert fencing.turn_undone(r, sid, t2["turn_id"])
    # a late analysis of turn 2 applies no card event
    assert _card(sid, npc, t2, "betrayal", "Ann burned the mill.").applied == []
    assert mc.get_cards(r, sid, npc).relationship.betrayals == []


def test_a_worker_mid_rewrite_does_not_apply_after_the_rollback(worker, game_session,
                                                                 monkeypatch, wait_for):
    """The real worker runs ``npc_memory.update_note`` for turn 2 with the real model; the
    model call is held until the session has been rolled back to turn 1. The task ends
    ``cancelled`` and the note keeps turn 1's text; a task of turn 2 sent after the rollback
    does not run at all."""
    from inference import calls
    from tasks import note_update
    from contract.names import TaskName
    from contract.send import celery_sender
    from tasks.follow_up import follow_up

    sid, wid = game_session["id"], game_session["world_id"]
    r = nearline.get_redis()
    npc = _npc_id(wid)
    t1 = _play(sid, wid, npc, "Hello there.")
    first = _note_event(sid, npc, t1, "Ann greeted the baker.").after
    t2 = _play(sid, wid, npc, "I burned down the mill.")
    started, release = threading.Event(), threading.Event()
    real = calls.rewrite_note
    mill_calls: list[str] = []  # this test's rewrites (the shared worker may run others)

    def held(*args, **kwargs):
        if "burned down the mill" in repr((args, kwargs)):
            mill_calls.append("call")
            started.set()
            assert release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(note_update.calls, "rewrite_note", held)
    enqueue = follow_up(celery_sender(worker.app))
    task_id = enqueue(TaskName.UPDATE_NOTE, dict(
        session_id=sid, lore_entry_key=NPC, update_summary="Ann burned down the mill.",
        idempotency_key=f"{t2['turn_id']}:u0", turn_id=t2["turn_id"]))
    assert started.wait(120)
    with session_scope() as s:
        out = timeline.rollback_session(s, r, sid, t1["turn_id"], _send_nothing)
    assert out["counts"]["tasks_cancelled"] == 0  # it is running, not queued
    release.set()

    def status(tid):
        with session_scope() as s:
            return s.scalar(select(TaskRecord.status).where(TaskRecord.task_id == tid))

    assert wait_for(lambda: status(task_id) in ("cancelled", "succeeded"), 180) and \
        status(task_id) == "cancelled"
    assert _note(sid, npc).content == first and _note(sid, npc).version == 1
    assert nearline.get_note(r, sid, npc) == first
    # sent again after the rollback (a redelivery): cancelled at its start, no model call
    calls_before = len(mill_calls)
    again = enqueue(TaskName.UPDATE_NOTE, dict(
        session_id=sid, lore_entry_key=NPC, update_summary="Ann burned down the mill.",
        idempotency_key=f"{t2['turn_id']}:u1", turn_id=t2["turn_id"]))
    assert wait_for(lambda: status(again) == "cancelled", 120)
    assert len(mill_calls) == calls_before
    assert _note(sid, npc).version == 1


def test_rollback_of_a_session_with_nothing_after_the_turn_only_bumps_the_epoch(game_session):
    sid, wid = game_session["id"], game_session["world_id"]
    r = nearline.get_redis()
    npc = _npc_id(wid)
    t1 = _play(sid, wid, npc, "Hello.")
    first = _note_event(sid, npc, t1, "Ann said hello.").after
    with session_scope() as s:
        out = timeline.rollback_session(s, r, sid, t1["turn_id"], _send_nothing)
    assert out["turn_ids"] == [] and out["epoch"] == 1
    assert set(out["counts"].values()) == {0}
    assert nearline.get_note(r, sid, npc) == first
    assert np.array_equal(sorted(int(k) for k in r.hkeys(rkeys.evidence(sid))), [2, 3])


def test_a_fork_keeps_who_witnessed_what(client, game_session):
    """A secret told to one NPC in front of a second stays known to both in the fork, and
    unknown to a third; turns after the fork point are known to nobody there."""
    from memory import witnesses

    sid, wid = game_session["id"], game_session["world_id"]
    r = nearline.get_redis()
    with session_scope() as s:
        a, b, c = s.scalars(select(LoreEntry.id).where(
            LoreEntry.world_id == wid, LoreEntry.entity_type == "character")
            .order_by(LoreEntry.id).limit(3)).all()
    told = {"turn_id": uuid.uuid4().hex, "session_id": sid, "world_id": wid,
            "seq": nearline.next_turn_seq(r, sid), "npc_entry_id": a, "witnesses": [a, b],
            "player_text": "The gold is under the mill.", "npc_text": "I will keep it.",
            "latency_ms": 1.0, "created_at": time.time()}
    nearline.record_turn(r, sid, told)
    with session_scope() as s:
        insert_turns(s, [told])
    later = _play(sid, wid, c, "Nice weather today.")
    res = client.post(f"/v1/sessions/{sid}/fork", json={"at_turn": told["turn_id"]})
    assert res.status_code == 201, res.text
    fid = res.json()["session_id"]
    seq_items = {2 * told["seq"], 2 * told["seq"] + 1}
    assert set(witnesses.witnessed_item_ids(r, fid, a).tolist()) == seq_items
    assert set(witnesses.witnessed_item_ids(r, fid, b).tolist()) == seq_items
    assert witnesses.witnessed_item_ids(r, fid, c).size == 0  # ``later`` is not in the fork
    assert later["seq"] > told["seq"]
    with session_scope() as s:
        copied = s.scalars(select(Turn).where(Turn.session_id == fid)).one()
        assert copied.witnesses == [a, b]
