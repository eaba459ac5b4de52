"""Dynamic entity creation (seed 003): a creation summary becomes a new LoreEntry.

Before creating, the entity is looked up among the world's entries and the session's own
creations: normalised exact title, fuzzy title, then embedding similarity; an existing one is
returned instead (the caller turns the summary into a note update). ``origin_key`` (the task's idempotency key) is unique, so a redelivered creation
returns the entry it already made.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from memory.composite import base_lore, composite_document
from models import LoreEntry
from prompts.outputs import CreatedEntity

Creator = Callable[[str, str], tuple[CreatedEntity, int]]
"""``(entity_type, creation_summary) -> (created entity, tokens_used)``."""


@dataclass(frozen=True)
class CreationResult:
    """``status``: ``created``, ``duplicate`` (same task seen before) or ``exists`` (the entity
    already exists; ``matched_by`` says how: ``exact``, ``fuzzy`` or ``embedding``);
    ``entry_id`` the entry; ``tokens`` model tokens."""

    status: str
    entry_id: int
    key: str
    title: str
    tokens: int = 0
    matched_by: str = ""


def slug(text: str) -> str:
    """Lower-case ASCII slug (``"Old Marta's Boat" -> "old-marta-s-boat"``), <= 60 chars."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "entity"


def clean_title(title: str) -> str:
    """Drop a trailing type label such as ``"(location)"`` that models echo from prompts."""
    return re.sub(r"\s*\((character|location|item|place|person|object)\)\s*$", "", title.strip(),
                  flags=re.I).strip() or title.strip()


FUZZY_TITLE_MIN = 90.0
"""rapidfuzz ``token_sort_ratio`` (0-100) at or above which two titles name the same entity."""
EMBEDDING_MIN = 0.90
"""Cosine similarity (MiniLM) at or above which a new entry's base-lore document matches an
existing one. Calibrated on LIGHT possibly-vampires: the closest two distinct characters score
0.881; the baker's own text under another title scores 0.909."""


def _candidates(session: Session, world_id: int, session_id: str):
    return session.execute(
        select(LoreEntry.id, LoreEntry.title, LoreEntry.entity_type).where(
            LoreEntry.world_id == world_id,
            or_(LoreEntry.is_dynamically_generated.is_(False),
                LoreEntry.created_in_session_id == session_id),
        )
    ).all()


def find_by_title(session: Session, world_id: int, session_id: str, title: str) -> LoreEntry | None:
    """An entry of the world (canon, or created in this session) whose title has the same
    slug (case, spacing and punctuation ignored: ``"Wenni Grimbostall"`` = ``"wenni-grimbostall"``)."""
    wanted = slug(title)
    for entry_id, other, _type in _candidates(session, world_id, session_id):
        if slug(other) == wanted:
            return session.get(LoreEntry, entry_id)
    return None


def find_existing(session: Session, world_id: int, session_id: str, made: CreatedEntity,
                  entity_type: str, embedder=None) -> tuple[LoreEntry | None, str]:
    """Look for the entity before creating it: normalised exact title, then fuzzy title
    (rapidfuzz token_sort_ratio >= ``FUZZY_TITLE_MIN`` among entries of the same type), then
    embedding similarity of its base-lore document against the stored vectors of the world and
    the session (cosine >= ``EMBEDDING_MIN``, same type).

    Returns:
        ``(entry, how)`` with ``how`` in ``exact``/``fuzzy``/``embedding``, or ``(None, "")``.
    """
    from rapidfuzz import fuzz, process, utils

    found = find_by_title(session, world_id, session_id, made.title)
    if found is not None:
        return found, "exact"
    rows = [r for r in _candidates(session, world_id, session_id) if r[2] == entity_type]
    if rows:
        best = process.extractOne(made.title, {r[0]: r[1] for r in rows}, scorer=fuzz.token_sort_ratio,
                                  processor=utils.default_process, score_cutoff=FUZZY_TITLE_MIN)
        if best is not None:
            return session.get(LoreEntry, best[2]), "fuzzy"
    if embedder is not None and rows:
        hit = _nearest_stored(session, world_id, session_id, {r[0] for r in rows},
                              embedder, composite_document(base_lore(made.title, made.content), None))
        if hit is not None and hit[1] >= EMBEDDING_MIN:
            return session.get(LoreEntry, hit[0]), "embedding"
    return None, ""


def _nearest_stored(session: Session, world_id: int, session_id: str, allowed: set[int],
                    embedder, text: str) -> tuple[int, float] | None:
    """The stored vector (world or session scope) nearest to ``text``: ``(entry id, cosine)``."""
    import numpy as np

    from memory.vector_index import session_scope, world_scope
    from models import StoredVector

    rows = session.execute(select(StoredVector.lore_entry_id, StoredVector.vector).where(
        StoredVector.world_id == world_id, StoredVector.dim == embedder.dim,
        StoredVector.embedder == embedder.name,
        StoredVector.scope.in_([world_scope(world_id), session_scope(session_id)]))).all()
    rows = [r for r in rows if r[0] in allowed]
    if not rows:
        return None
    matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
    scores = matrix @ embedder.embed([text])[0]
    best = int(np.argmax(scores))
    return rows[best][0], float(scores[best])


def create_entity(
    session: Session,
    *,
    world_id: int,
    session_id: str,
    entity_type: str,
    creation_summary: str,
    idempotency_key: str,
    create: Creator,
    turn_id: str | None = None,
    embedder=None,
) -> CreationResult:
    """Create a dynamically generated LoreEntry from a summary, at most once per key.

    Raises:
        Whatever ``create`` raises (model errors, invalid output); nothing is written then.
    """
    done = session.scalar(select(LoreEntry).where(LoreEntry.origin_key == idempotency_key))
    if done is not None:
        return CreationResult("duplicate", done.id, done.key, done.title)
    made, tokens = create(entity_type, creation_summary)
    made = made.model_copy(update={"title": clean_title(made.title)})
    same, how = find_existing(session, world_id, session_id, made, entity_type, embedder)
    if same is not None:
        return CreationResult("exists", same.id, same.key, same.title, tokens, how)
    key = f"{slug(made.title)}-{hashlib.sha1(idempotency_key.encode()).hexdigest()[:8]}"
    entry = LoreEntry(
        world_id=world_id, key=key, entity_type=entity_type, title=made.title,
        content=made.content, tags=list(dict.fromkeys(t for t in made.tags if t)),
        relations={}, is_dynamically_generated=True, created_in_session_id=session_id,
        created_by_turn_id=turn_id, origin_key=idempotency_key,
    )
    session.add(entry)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        done = session.scalar(select(LoreEntry).where(LoreEntry.origin_key == idempotency_key))
        if done is None:
            raise
        return CreationResult("duplicate", done.id, done.key, done.title, tokens)
    return CreationResult("created", entry.id, entry.key, entry.title, tokens)
