"""One session's off-screen simulation without Celery (``memory.offscreen``,
``memory.gossip.pass_on``): real Redis and database, a fake model call and fake sends that
record what they were given."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace

import pytest
from sqlalchemy import select

from memory import gossip, nearline, offscreen
from memory.db import session_scope
from memory.simulation import Weights
from models import GameSession, LoreEntry, World
from contract.payloads import NoteUpdatePayload


def _entry(world_id: int, key: str) -> LoreEntry:
    with session_scope() as s:
        return s.scalar(select(LoreEntry).where(LoreEntry.world_id == world_id,
                                                LoreEntry.key == key))


def _budget(max_tokens: int = 4000, gossip_per_tick: int = 0) -> offscreen.TickBudget:
    return offscreen.TickBudget(max_npcs=2, max_tokens=max_tokens, recent_k=6,
                                weights=Weights(), tick_minutes=90,
                                gossip_per_tick=gossip_per_tick)


class Model:
    """The simulation model: every NPC it is shown "walked the crypt"; counts its calls."""

    def __init__(self):
        self.calls = []

    def messages(self, world_title, elapsed, now_text, targets, places, recent):
        return [{"role": "user", "content": "x" * 600 + "y" * 300 * len(targets)}]

    def call(self, world_title, elapsed, now_text, docs, places, recent, max_tokens,
             archetypes):
        self.calls.append({"docs": docs, "max_tokens": max_tokens, "now": now_text})
        updates = [SimpleNamespace(lore_entry_id=d["key"], update_summary=f"{d['title']} walked.")
                   for d in docs]
        updates.append(updates[0])  # a small model repeats itself
        return SimpleNamespace(updates=updates), 55, {"model": "fake", "adapter": None}


def _sends():
    sent = []

    def send(name, kwargs, task_id=None, **options):
        sent.append((name, kwargs, task_id))
        return task_id

    return sent, send


def test_a_tick_simulates_the_best_npcs_advances_the_clock_once_and_reruns_idempotently(
        game_session):
    r, sid, tick = nearline.get_redis(), game_session["id"], f"t-{uuid.uuid4().hex[:8]}"
    model, enqueued = Model(), []
    _, send = _sends()

    def run():
        return offscreen.simulate_session(
            session_scope, r, sid, tick, _budget(), messages=model.messages, call=model.call,
            send=send, enqueue=lambda name, fields: enqueued.append((name, fields)))

    result = run()
    chosen = [n["key"] for n in result["npcs"]]
    assert len(chosen) == 2 and len(model.calls) == 1
    assert [d["key"] for d in model.calls[0]["docs"]] == chosen
    with session_scope() as s:
        tick_minutes = s.get(World, game_session["world_id"]).tick_game_minutes or 90
    assert result["game_minutes"] == tick_minutes == nearline.get_session(r, sid)["game_minutes"]
    assert (result["updates"], result["calls"], result["tokens"]) == (2, 1, 55)
    assert result["model"] == {"model": "fake", "adapter": None} and result["told"] == []
    assert set(result["did"]) == set(chosen)
    assert enqueued == [("npc_memory.update_note", {
        "session_id": sid, "lore_entry_key": key, "update_summary": result["did"][key],
        "cause": "simulation", "game_minutes": tick_minutes,
        "idempotency_key": f"{tick}:{sid}:{key}"}) for key in result["did"]]
    for _, fields in enqueued:  # what the task layer validates them with
        NoteUpdatePayload.model_validate(fields)
    with session_scope() as s:
        assert s.get(GameSession, sid).game_minutes == tick_minutes
    simulated = r.zrange(f"session:{sid}:simulated", 0, -1)
    assert sorted(int(i) for i in simulated) == sorted(
        _entry(game_session["world_id"], k).id for k in chosen)

    again = run()  # a redelivered tick: the same updates again, no model call, no clock move
    assert len(model.calls) == 1
    assert again == {**result, "status": "duplicate", "tokens": 0}
    assert enqueued[len(result["did"]):] == enqueued[:len(result["did"])]
    assert nearline.get_session(r, sid)["game_minutes"] == tick_minutes


def test_a_budget_too_small_for_one_npc_calls_no_model_and_moves_no_clock(game_session):
    r, sid = nearline.get_redis(), game_session["id"]
    model, enqueued = Model(), []
    _, send = _sends()
    result = offscreen.simulate_session(
        session_scope, r, sid, "t-small", _budget(max_tokens=150), messages=model.messages,
        call=model.call, send=send, enqueue=lambda *a: enqueued.append(a))
    assert result["npcs"] == [] and result["updates"] == result["calls"] == 0
    assert len(result["waiting"]) > 0 and "model" not in result
    assert model.calls == [] and enqueued == []
    assert nearline.get_session(r, sid)["game_minutes"] == 0
    assert r.zscore("sessions:simulated", sid) is not None  # it had its turn this tick


def test_simulating_an_unknown_session_raises_lookup_error():
    model = Model()
    with pytest.raises(LookupError):
        offscreen.simulate_session(session_scope, nearline.get_redis(), "no-such-session",
                                   "t1", _budget(), messages=model.messages, call=model.call,
                                   send=lambda *a, **k: None, enqueue=lambda *a: None)


def test_npcs_that_meet_pass_on_what_one_witnessed_once_per_tick(game_session):
    r, sid, world = nearline.get_redis(), game_session["id"], game_session["world_id"]
    teller, listener = _entry(world, "prisoner_39"), _entry(world, "sir edward_37")
    said = {"turn_id": uuid.uuid4().hex, "session_id": sid, "world_id": world, "seq": 1,
            "npc_entry_id": teller.id, "witnesses": [teller.id],
            "player_text": "The gold is under the well.", "npc_text": "I will keep it.",
            "latency_ms": 1.0, "created_at": time.time()}
    nearline.record_turn(r, sid, said)
    sent, send = _sends()
    told = gossip.pass_on(r, send, sid, "t1", [teller], [teller, listener], limit=1)
    assert [(t["teller"], t["listener"], t["turn_id"]) for t in told] == [
        (teller.key, listener.key, said["turn_id"])]
    turn = nearline.recent_turns(r, sid, 1)[0]
    assert turn["turn_id"] == told[0]["told_turn_id"] and turn["kind"] == "told"
    assert turn["witnesses"] == sorted([teller.id, listener.id])
    assert turn["source"] == f"tick t1; turn {said['turn_id']}"
    assert "The gold is under the well." in turn["player_text"]
    assert [(name, task_id) for name, _, task_id in sent] == [
        ("npc_memory.analyze_turn", f"npc_memory.analyze_turn:{turn['turn_id']}"),
        ("npc_memory.archive_turn", f"npc_memory.archive_turn:{turn['turn_id']}")]

    again = gossip.pass_on(r, send, sid, "t1", [teller], [teller, listener], limit=1)
    assert again == told and len(sent) == 2  # the same tick records and sends nothing twice
    assert gossip.pass_on(r, send, sid, "t2", [teller], [teller, listener], limit=0) == []
    assert gossip.pass_on(r, send, "no-such-session", "t2", [teller], [teller, listener],
                          limit=1) == []
