"""Entity creation (``memory.entities.create_entity``): an existing title, a near-identical
title or a document that embeds next to an existing one resolves to that entry; a new entity
is created once per idempotency key."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from memory.db import session_scope
from models import LoreEntry


def _entry(world_id: int, key: str) -> LoreEntry:
    with session_scope() as s:
        return s.scalar(select(LoreEntry).where(LoreEntry.world_id == world_id, LoreEntry.key == key))


def test_create_entity_finds_existing_title_and_creates_once(game_session):
    """A creation whose title matches an existing entry (any case or punctuation) is not
    created; a new title is created once per idempotency key, flagged and keyed by slug.
    (Each summary names someone new: without a new name the model is not asked at all.)"""
    from memory.entities import create_entity
    from prompts.outputs import CreatedEntity

    calls = []

    def creator(title):
        def create(entity_type, summary):
            calls.append(summary)
            return CreatedEntity(title=title, content="Someone new in town, pale and polite.", tags=["x"]), 7
        return create

    with session_scope() as s:
        res = create_entity(s, world_id=game_session["world_id"], session_id=game_session["id"],
                            entity_type="character", creation_summary="The baker meets Count Vlad at the door.",
                            idempotency_key=f"t:{uuid.uuid4().hex}", create=creator("  BAKER "))
    assert res.status == "exists" and res.key == "baker_27"
    key = f"t:{uuid.uuid4().hex}"
    with session_scope() as s:
        made = create_entity(s, world_id=game_session["world_id"], session_id=game_session["id"],
                             entity_type="character", creation_summary="A pale man, Count Vlad, arrives.",
                             idempotency_key=key, create=creator("Count Vlad (character)"))
    with session_scope() as s:
        again = create_entity(s, world_id=game_session["world_id"], session_id=game_session["id"],
                              entity_type="character", creation_summary="A pale man, Count Vlad, arrives.",
                              idempotency_key=key, create=creator("Count Vlad"))
        entry = s.get(LoreEntry, made.entry_id)
        assert made.status == "created" and again.status == "duplicate"
        assert again.entry_id == made.entry_id and len(calls) == 2
        assert entry.title == "Count Vlad" and entry.key.startswith("count-vlad-")
        assert entry.is_dynamically_generated and entry.created_in_session_id == game_session["id"]



@pytest.mark.parametrize("title, content_from, how", [
    ("Lady Elinore", None, "fuzzy"),
    ("The Night Kneader", "baker_27", "embedding"),
])
def test_creation_matches_existing_entity_fuzzily(game_session, light_world, title, content_from, how):
    """A near-identical title, or a text that embeds next to an existing document, resolves to
    that entry instead of creating a duplicate."""
    from inference.embedding import get_embedder
    from memory.entities import create_entity
    from prompts.outputs import CreatedEntity

    content = _entry(light_world["id"], content_from).content if content_from else "A fierce warrior."
    with session_scope() as s:
        res = create_entity(s, world_id=game_session["world_id"], session_id=game_session["id"],
                            entity_type="character", creation_summary=f"{title} came to town with Mirela Dusk.",
                            idempotency_key=f"t:{uuid.uuid4().hex}", embedder=get_embedder(),
                            create=lambda t, summary: (CreatedEntity(title=title, content=content[:800], tags=[]), 1))
    assert res.status == "exists" and res.matched_by == how
    assert res.key == ("lady elinor_49" if how == "fuzzy" else "baker_27")


def test_distinct_new_entity_is_created_not_matched(game_session, light_world):
    from inference.embedding import get_embedder
    from memory.entities import create_entity
    from prompts.outputs import CreatedEntity

    made = CreatedEntity(title="Captain Orsolya Vey", tags=[],
                         content="A sea captain who smuggles spices past the harbour chain at night.")
    with session_scope() as s:
        res = create_entity(s, world_id=game_session["world_id"], session_id=game_session["id"],
                            entity_type="character", creation_summary="Captain Orsolya Vey sails tonight.",
                            idempotency_key=f"t:{uuid.uuid4().hex}", embedder=get_embedder(),
                            create=lambda t, summary: (made, 1))
    assert res.status == "created" and res.matched_by == ""
