"""Level 2 additions in Redis (``memory.summaries``): salient memories and the emotional
trajectory written with the memory cards, a batch prefetch for many NPCs, the prompt budget,
and ``npc_memory.summarize_session`` through the real worker and model server."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from memory import cards as mc
from memory import keys as rkeys
from memory import nearline, summaries, turns
from memory.db import session_scope
from models import TaskRecord
from contract.send import celery_sender


def _rel(kind: str, detail: str, intensity: int) -> mc.RelationshipEvent:
    return mc.RelationshipEvent(event_id=f"{uuid.uuid4().hex}:r0", kind=kind, detail=detail,
                                intensity=intensity)


def _target(game, key: str = "baker_27") -> turns.Target:
    return turns.resolve_target(nearline.get_redis(), game["id"], key)


def test_salient_memories_keep_the_most_important_card_events_once(game_session):
    r, sid = nearline.get_redis(), game_session["id"]
    npc = _target(game_session).npc_entry_id
    events = ([_rel("trust_up", f"Small talk {i}.", 1) for i in range(8)]
              + [_rel("gift", "A sack of rye flour.", 4), _rel("insult", "Called his bread stale.", 6),
                 _rel("saved_life", "Pulled him out of the burning bakery.", 9),
                 _rel("betrayal", "Sold his recipe to the miller.", 8)])
    for e in events:
        mc.apply_events(r, sid, npc, [e])
    mc.apply_events(r, sid, npc, events)  # redelivered analysis: nothing new
    top = summaries.salient_memories(r, sid, npc)
    assert len(top) == summaries.SALIENT_KEEP
    assert [m["kind"] for m in top[:4]] == ["saved_life", "betrayal", "insult", "gift"]
    assert top[0]["importance"] == 90 and top[0]["detail"].startswith("Pulled him out")
    assert len({m["event_id"] for m in top}) == len(top)
    # the emotional trajectory: one point per change, in time order, ending at the card
    traj = summaries.trajectory(r, sid, npc)
    assert len(traj) == len(events)
    assert [p["rev"] for p in traj] == sorted(p["rev"] for p in traj)
    card = mc.get_cards(r, sid, npc).relationship
    assert (traj[-1]["trust"], traj[-1]["affinity"]) == (card.trust, card.affinity)
    # rolling session TTL (30 days by default)
    for key in (rkeys.salient(sid, npc), rkeys.trajectory(sid, npc),
                rkeys.card(sid, npc, "relationship"), rkeys.session(sid)):
        assert 0 < r.ttl(key) <= 30 * 24 * 3600


def test_prefetch_reads_many_npcs_in_one_round_trip(game_session, light_world):
    r, sid = nearline.get_redis(), game_session["id"]
    keys = [c.key for c in light_world["spec"].characters()][:5]
    ids = [_target(game_session, k).npc_entry_id for k in keys]
    mc.apply_events(r, sid, ids[0], [_rel("gift", "A lantern.", 3)])
    summaries.save_summary(r, sid, "The player arrived at dusk.", 4)
    calls = []
    r_counting = r.__class__(connection_pool=r.connection_pool)
    original = r_counting.pipeline

    def pipeline(*a, **kw):
        calls.append(1)
        return original(*a, **kw)

    r_counting.pipeline = pipeline
    got = summaries.prefetch(r_counting, sid, ids)
    assert len(calls) == 1
    assert got["summary"]["summary"] == "The player arrived at dusk."
    assert set(got["npcs"]) == set(ids)
    assert [m["detail"] for m in got["npcs"][ids[0]]["salient"]] == ["A lantern."]
    assert all(got["npcs"][i] == {"salient": [], "trajectory": []} for i in ids[1:])


def test_summary_of_an_older_turn_never_replaces_a_newer_one(game_session):
    r, sid = nearline.get_redis(), game_session["id"]
    assert summaries.save_summary(r, sid, "Up to turn ten.", 10)
    assert not summaries.save_summary(r, sid, "Up to turn five.", 5)
    assert not summaries.save_summary(r, sid, "Again ten.", 10)
    assert summaries.get_summary(r, sid)["summary"] == "Up to turn ten."
    assert summaries.save_summary(r, sid, "Up to turn twenty.", 20)
    assert summaries.get_summary(r, sid)["upto_seq"] == 20


def test_memories_are_rendered_within_the_budget():
    salient = [{"kind": "saved_life", "detail": "Pulled him from the river."},
               {"kind": "gift", "detail": "A sack of rye flour."}]
    summary = "The player met the baker. They talked about bread. " * 3
    for budget in (0, 40, 120, 400):
        text = summaries.render_memories(summary, salient, budget)
        assert len(text) <= budget
    full = summaries.render_memories(summary.strip(), salient, 400)
    assert "- saved life: Pulled him from the river." in full.splitlines()
    assert summaries.render_memories("", [], 400) == ""


def test_summarize_session_every_n_turns_through_the_worker(worker, celery_app, game_session,
                                                            wait_for, monkeypatch):
    from settings import get_settings

    monkeypatch.setattr(get_settings(), "summarize_every_turns", 3)
    r, sid = nearline.get_redis(), game_session["id"]
    target = _target(game_session)
    lines = [("I brought you flour from the mill.", "Bless you, that is a fine sack."),
             ("Will you bake bread for the festival?", "Aye, forty loaves by dawn."),
             ("I promise to fetch more salt tomorrow.", "I will hold you to that.")]
    send = celery_sender(celery_app)
    for text, reply in lines:
        turns.record_turn(r, send, target, player_text=text, npc_text=reply)
    task_id = f"npc_memory.summarize_session:{sid}:3"

    def status():
        with session_scope() as s:
            return s.scalar(select(TaskRecord.status).where(TaskRecord.task_id == task_id))
    wait_for(lambda: status() in ("succeeded", "dead"), timeout=300)
    assert status() == "succeeded"
    doc = summaries.get_summary(r, sid)
    assert doc["upto_seq"] == 3 and 300 <= len(doc["summary"]) <= 600
    assert 0 < r.ttl(rkeys.summary(sid)) <= 30 * 24 * 3600
