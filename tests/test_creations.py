"""A queued entity creation applied without Celery (``memory.creations``): real database
and Redis, a fake creating model and a fake ``enqueue`` that records the follow-up tasks."""

from __future__ import annotations

import uuid
from types import SimpleNamespace as NS

import pytest

from prompts.outputs import CreatedEntity
from memory import creations, keys, nearline
from memory.db import session_scope
from models import LoreEntry
from contract.payloads import EmbedPayload, NoteUpdatePayload

PAYLOADS = {"npc_memory.embed": EmbedPayload, "npc_memory.update_note": NoteUpdatePayload}


def _creation(game, title: str, **kw) -> NS:
    return NS(**{**dict(session_id=game["id"], entity_type="character",
                        creation_summary=f"A pale stranger named {title} took rooms.",
                        idempotency_key=f"c:{uuid.uuid4().hex}", turn_id=uuid.uuid4().hex,
                        source_text=f"Player: Who is {title}?\nA pale stranger."), **kw})


def _run(creation, title: str, sent: list):
    def enqueue(name, fields):
        sent.append((name, PAYLOADS[name].model_validate(fields)))

    return creations.create_from_summary(
        session_scope, nearline.get_redis(), creation, embedder=None, enqueue=enqueue,
        create=lambda t, summary: (CreatedEntity(title=title, content="A pale stranger."), 3))


def test_a_created_entity_is_cached_and_embedded_and_a_second_one_updates_its_note(
        game_session):
    sent = []
    title = "Count Orlok"
    first = _creation(game_session, title)
    out = _run(first, title, sent)
    assert (out["status"], out["title"], out["tokens"]) == ("created", title, 3)
    (name, embed), = sent
    assert name == "npc_memory.embed" and embed.lore_entry_id == out["entry_id"]
    cached = nearline.get_entry(nearline.get_redis(), game_session["world_id"], out["entry_id"])
    assert cached["title"] == title

    second = _creation(game_session, title,  # the same entity again, beside a new name
                       source_text=f"Player: {title} met Jonathan Harker.\nHm.")
    again = _run(second, title, sent)
    assert again["status"] == "exists" and again["entry_id"] == out["entry_id"]
    name, update = sent[-1]
    assert name == "npc_memory.update_note" and update.cause == "creation"
    assert update.idempotency_key == f"{second.idempotency_key}:exists"
    assert update.update_summary == second.creation_summary


def test_an_ungrounded_creation_writes_and_sends_nothing(game_session):
    sent = []
    creation = _creation(game_session, "Nobody", source_text="Greetings, friend.")
    out = _run(creation, "Nobody", sent)
    assert out["status"] == "rejected" and out["entry_id"] is None and out["reason"]
    assert sent == []


def test_an_entity_whose_turn_was_rolled_back_is_retracted_at_once(game_session):
    sent, r = [], nearline.get_redis()
    creation = _creation(game_session, "Mina Murray")
    r.sadd(keys.undone(game_session["id"]), creation.turn_id)  # undone while it was made
    assert _run(creation, "Mina Murray", sent) == {"status": "cancelled"}
    assert sent == []
    with session_scope() as s:
        (entry,) = s.query(LoreEntry).filter(
            LoreEntry.created_in_session_id == game_session["id"],
            LoreEntry.title == "Mina Murray").all()
        assert entry.retracted_at is not None


def test_a_creation_in_an_unknown_session_raises_lookup_error(game_session):
    with pytest.raises(LookupError):
        _run(_creation(game_session, "Lucy", session_id="no-such-session"), "Lucy", [])
