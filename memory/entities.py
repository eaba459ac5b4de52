"""Dynamic entity creation (seed 003): a creation summary becomes a new LoreEntry.

Before creating, the entry is looked up by title in the world and among the session's own
creations; an existing one is returned instead (the caller turns the summary into a note
update). ``origin_key`` (the task's idempotency key) is unique, so a redelivered creation
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

from models import LoreEntry
from prompts.outputs import CreatedEntity

Creator = Callable[[str, str], tuple[CreatedEntity, int]]
"""``(entity_type, creation_summary) -> (created entity, tokens_used)``."""


@dataclass(frozen=True)
class CreationResult:
    """``status``: ``created``, ``duplicate`` (same task seen before) or ``exists`` (an
    entry with that title already exists); ``entry_id`` the entry; ``tokens`` model tokens."""

    status: str
    entry_id: int
    key: str
    title: str
    tokens: int = 0


def slug(text: str) -> str:
    """Lower-case ASCII slug (``"Old Marta's Boat" -> "old-marta-s-boat"``), <= 60 chars."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "entity"


def clean_title(title: str) -> str:
    """Drop a trailing type label such as ``"(location)"`` that models echo from prompts."""
    return re.sub(r"\s*\((character|location|item|place|person|object)\)\s*$", "", title.strip(),
                  flags=re.I).strip() or title.strip()


def find_by_title(session: Session, world_id: int, session_id: str, title: str) -> LoreEntry | None:
    """An entry of the world (canon, or created in this session) whose title has the same
    slug (case, spacing and punctuation ignored: ``"Wenni Grimbostall"`` = ``"wenni-grimbostall"``)."""
    wanted = slug(title)
    rows = session.execute(
        select(LoreEntry.id, LoreEntry.title).where(
            LoreEntry.world_id == world_id,
            or_(LoreEntry.is_dynamically_generated.is_(False),
                LoreEntry.created_in_session_id == session_id),
        )
    ).all()
    for entry_id, other in rows:
        if slug(other) == wanted:
            return session.get(LoreEntry, entry_id)
    return None


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
    same = find_by_title(session, world_id, session_id, made.title)
    if same is not None:
        return CreationResult("exists", same.id, same.key, same.title, tokens)
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
