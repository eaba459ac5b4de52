"""A turn's analysis fanned out without Celery (``memory.analysis``): the scope, the note
updates and creations sent through a fake ``enqueue``, and the card events applied once to
real Redis. The analysis model is a fake that returns a fixed answer."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace as NS

import pytest
from sqlalchemy import select

from memory import analysis, cards, nearline
from memory.db import session_scope
from models import LoreEntry
from contract.payloads import CardArchivePayload, CreationPayload, NoteUpdatePayload

PAYLOADS = {"npc_memory.update_note": NoteUpdatePayload,
            "npc_memory.create_entity": CreationPayload,
            "npc_memory.archive_cards": CardArchivePayload}


def _entry(world_id: int, key: str) -> LoreEntry:
    with session_scope() as s:
        return s.scalar(select(LoreEntry).where(LoreEntry.world_id == world_id,
                                                LoreEntry.key == key))


def _turn(game, npc_id: int | None, **kw) -> NS:
    fields = dict(turn_id=uuid.uuid4().hex, session_id=game["id"], world_id=game["world_id"],
                  seq=1, npc_entry_id=npc_id, witnesses=[npc_id] if npc_id else [],
                  kind=None, speaker=None, game_minutes=30, created_at=time.time(),
                  player_text="I brought you a sack of flour from the mill.",
                  npc_text="Thank you kindly, that makes a fine loaf.")
    return NS(**{**fields, **kw})


ANSWER = NS(
    updates=[NS(lore_entry_id="baker_27", update_summary="The player brought flour."),
             NS(lore_entry_id="baker_27", update_summary="The player brought flour."),
             NS(lore_entry_id="miller_1", update_summary="The mill lost a sack.")],
    creations=[NS(entity_type="item", creation_summary="A sack of rye flour.")],
    relationship=[NS(kind="gift", detail="A sack of flour.", intensity=3)],
    quests=[])


class Recorder:
    """``enqueue`` that keeps what it was given, checked against the real payload models."""

    def __init__(self):
        self.sent = []

    def __call__(self, name, fields):
        PAYLOADS[name].model_validate(fields)
        self.sent.append((name, fields))
        return f"{name}:{len(self.sent)}"

    def named(self, name):
        return [f for n, f in self.sent if n == name]


def test_turn_text_leaves_a_narrators_name_out():
    assert analysis.turn_text("Hello.", "Hm.", "Wenna", narrative=False) == "Wenna: Hello.\nHm."
    assert analysis.turn_text("The bridge falls.", "", "GM", narrative=True) == "The bridge falls."
    assert analysis.turn_text("Hello.", "", None, narrative=False) == "Hello."


def test_a_turn_fans_out_into_updates_creations_and_card_events_once(game_session):
    r = nearline.get_redis()
    baker = _entry(game_session["world_id"], "baker_27")
    turn = _turn(game_session, baker.id)
    with session_scope() as s:
        ts = analysis.scope_of(s, turn, narrative=False)
    assert ts.scope and ts.npc_title == baker.title and ts.source.endswith("fine loaf.")
    asked = []

    def analyze(npc_title, scope, speaker, hints):
        asked.append((npc_title, speaker, hints))
        return ANSWER, 21

    send = Recorder()
    out = analysis.fan_out(r, turn, ts, analyze=analyze, enqueue=send, source_max=10)
    assert out == {"updates": 2, "creations": 1, "card_events": 1, "card_duplicates": 0,
                   "tokens": 21}
    assert asked == [(baker.title, None, "")]
    assert [(f["lore_entry_key"], f["idempotency_key"], f["cause"], f["game_minutes"])
            for f in send.named("npc_memory.update_note")] == [
        ("baker_27", f"{turn.turn_id}:u0", "turn", 30),
        ("miller_1", f"{turn.turn_id}:u2", "turn", 30)]
    (creation,) = send.named("npc_memory.create_entity")
    assert creation["idempotency_key"] == f"{turn.turn_id}:c0"
    assert creation["source_text"] == ts.source[:10]
    (archive,) = send.named("npc_memory.archive_cards")
    assert [e["event_id"] for e in archive["events"]] == [f"{turn.turn_id}:r0"]
    assert archive["cards"]["relationship"].counts  # the snapshot after the gift

    again = Recorder()  # a redelivery: the event is not applied twice, but archived again
    out = analysis.fan_out(r, turn, ts, analyze=analyze, enqueue=again, source_max=10)
    assert (out["card_events"], out["card_duplicates"]) == (0, 1)
    assert [e["event_id"] for e in again.named("npc_memory.archive_cards")[0]["events"]] == [
        f"{turn.turn_id}:r0"]
    gifts = cards.get_cards(r, game_session["id"], baker.id).relationship.counts
    assert sum(gifts.values()) == 1


def test_an_empty_scope_calls_no_model(game_session):
    turn = _turn(game_session, None, player_text="Zzz.", npc_text="")
    ts = analysis.TurnScope(scope=[], npc_title=None, source="Zzz.", speaker=None)

    def analyze(*a):
        raise AssertionError("no model call without a scope")

    send = Recorder()
    out = analysis.fan_out(nearline.get_redis(), turn, ts, analyze=analyze, enqueue=send,
                           source_max=100)
    assert out["skipped"] == "empty_scope" and send.sent == []


def test_a_turn_addressed_to_nobody_changes_no_card(game_session):
    r = nearline.get_redis()
    baker = _entry(game_session["world_id"], "baker_27")
    turn = _turn(game_session, None, witnesses=[baker.id], kind="narration", speaker="GM",
                 player_text="The baker drops a sack of flour.", npc_text="")
    with session_scope() as s:
        ts = analysis.scope_of(s, turn, narrative=True)
    assert ts.scope and ts.npc_title is None and ts.speaker is None
    assert ts.source == "The baker drops a sack of flour."
    send = Recorder()
    out = analysis.fan_out(r, turn, ts, analyze=lambda *a: (ANSWER, 5), enqueue=send,
                           source_max=100)
    assert (out["updates"], out["creations"], out["card_events"]) == (2, 1, 0)
    assert send.named("npc_memory.archive_cards") == []
    assert cards.turn_applied(r, game_session["id"], baker.id, turn.turn_id) == []


def test_the_scope_of_a_turn_to_a_missing_npc_raises_lookup_error(game_session):
    with session_scope() as s, pytest.raises(LookupError):
        analysis.scope_of(s, _turn(game_session, 10**9), narrative=False)
