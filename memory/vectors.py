"""Embedding lore entries: composite document -> vector -> stored vector + index update.

The stored vector row is upserted by (scope, lore entry); its content hash makes a repeated
``embed`` of an unchanged document a no-op. Every new vector is announced on the
``vectors:updates`` stream so each dialogue server's in-memory index picks it up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.composite import base_lore, composite_document, content_hash
from memory.vector_index import publish_upsert, session_scope, world_scope
from models import LoreEntry, SessionNote, StoredVector
from models.base import utcnow


@dataclass(frozen=True)
class EmbedResult:
    """What ``embed_entry`` did: ``status`` is ``embedded`` or ``unchanged``."""

    status: str
    scope: str
    lore_entry_id: int
    document: str


def _store(session: Session, r, embedder, world_id: int, scope: str,
           items: list[tuple[int, str]]) -> list[str]:
    """Embed and store ``(lore_entry_id, document)`` pairs of one scope; returns statuses."""
    hashes = [content_hash(doc, embedder.name) for _, doc in items]
    existing = {
        row.lore_entry_id: row for row in session.scalars(
            select(StoredVector).where(StoredVector.scope == scope,
                                       StoredVector.lore_entry_id.in_([i for i, _ in items]))
        )
    }
    todo = [(n, item) for n, item in enumerate(items)
            if existing.get(item[0]) is None or existing[item[0]].content_hash != hashes[n]]
    statuses = ["unchanged"] * len(items)
    if not todo:
        return statuses
    vectors = embedder.embed([doc for _, (_, doc) in todo])
    for (n, (entry_id, doc)), vec in zip(todo, vectors):
        row = existing.get(entry_id)
        blob = np.asarray(vec, dtype=np.float32).tobytes()
        if row is None:
            session.add(StoredVector(
                world_id=world_id, scope=scope, lore_entry_id=entry_id, embedder=embedder.name,
                dim=embedder.dim, vector=blob, document=doc, content_hash=hashes[n],
            ))
        else:
            row.vector, row.document, row.content_hash = blob, doc, hashes[n]
            row.embedder, row.dim, row.updated_at = embedder.name, embedder.dim, utcnow()
        statuses[n] = "embedded"
    session.flush()
    for (_, (entry_id, _doc)), vec in zip(todo, vectors):
        publish_upsert(r, scope, entry_id, vec)
    return statuses


def embed_world_base(session: Session, r, embedder, world_id: int) -> int:
    """Embed every canonical entry of a world into the world scope; returns how many changed."""
    entries = session.scalars(
        select(LoreEntry).where(LoreEntry.world_id == world_id,
                                LoreEntry.is_dynamically_generated.is_(False))
        .order_by(LoreEntry.id)
    ).all()
    items = [(e.id, composite_document(base_lore(e.title, e.content), None)) for e in entries]
    statuses: list[str] = []
    for start in range(0, len(items), 64):
        statuses += _store(session, r, embedder, world_id, world_scope(world_id), items[start:start + 64])
    return statuses.count("embedded")


def embed_entry(session: Session, r, embedder, lore_entry_id: int,
                session_id: str | None) -> EmbedResult:
    """Embed one entry's composite document in a session (or its base lore if no session).

    Raises:
        LookupError: no such lore entry.
    """
    entry = session.get(LoreEntry, lore_entry_id)
    if entry is None:
        raise LookupError(f"lore entry {lore_entry_id} does not exist")
    note = None
    if session_id is not None:
        note = session.scalar(select(SessionNote.content).where(
            SessionNote.session_id == session_id, SessionNote.lore_entry_id == lore_entry_id))
    scope = session_scope(session_id) if session_id else world_scope(entry.world_id)
    doc = composite_document(base_lore(entry.title, entry.content), note)
    status = _store(session, r, embedder, entry.world_id, scope, [(entry.id, doc)])[0]
    return EmbedResult(status, scope, entry.id, doc)
