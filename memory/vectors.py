"""Embedding lore entries: composite document -> vector -> stored vector + index update.

The stored vector row is upserted by (scope, lore entry, embedder); its content hash makes a
repeated ``embed`` of an unchanged document a no-op. Every new vector is announced on the
``vectors:updates`` stream so each dialogue server's in-memory index picks it up.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.db import dialect_insert
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
           items: list[tuple[int, str, int]]) -> list[str]:
    """Embed and upsert ``(lore_entry_id, document, note_version)`` items of one scope, as
    vectors of ``embedder`` (rows keyed by (scope, lore entry, ``embedder.name``), beside other
    embedders' vectors of the same documents, which are neither read nor touched).

    A row is written only if its document changed and its note version is not older than the
    stored one (``INSERT ... ON CONFLICT DO UPDATE ... WHERE``), so concurrent or late embeds
    of the same entry are safe. Returns ``embedded``/``unchanged`` per item.
    """
    hashes = [content_hash(doc, embedder.name) for _, doc, _ in items]
    stored = dict(session.execute(
        select(StoredVector.lore_entry_id, StoredVector.content_hash).where(
            StoredVector.scope == scope, StoredVector.embedder == embedder.name,
            StoredVector.lore_entry_id.in_([i for i, _, _ in items]))
    ).all())
    todo = [n for n, (entry_id, _, _) in enumerate(items) if stored.get(entry_id) != hashes[n]]
    statuses = ["unchanged"] * len(items)
    if not todo:
        return statuses
    vectors = embedder.embed([items[n][1] for n in todo])
    changed = []
    for n, vec in zip(todo, vectors):
        entry_id, doc, version = items[n]
        ins = dialect_insert(session, StoredVector).values(
            world_id=world_id, scope=scope, lore_entry_id=entry_id, embedder=embedder.name,
            dim=embedder.dim, vector=np.asarray(vec, dtype=np.float32).tobytes(), document=doc,
            content_hash=hashes[n], note_version=version, updated_at=utcnow())
        stmt = ins.on_conflict_do_update(
            index_elements=["scope", "lore_entry_id", "embedder"],
            set_={c: ins.excluded[c] for c in ("dim", "vector", "document",
                                               "content_hash", "note_version", "updated_at")},
            where=(StoredVector.note_version <= ins.excluded.note_version)
            & (StoredVector.content_hash != ins.excluded.content_hash),
        ).returning(StoredVector.id)
        # counted from RETURNING: SQLAlchemy 2.1 on psycopg reports INSERT rowcount as -1, so
        # an upsert the fence skipped would otherwise be announced to the dialogue servers
        if session.execute(stmt).first() is not None:
            statuses[n] = "embedded"
            changed.append((entry_id, vec))
    session.commit()  # announce only what is durable
    for entry_id, vec in changed:
        publish_upsert(r, scope, entry_id, vec, embedder.name)
    return statuses


def embed_world_base(session: Session, r, embedder, world_id: int) -> int:
    """Embed every canonical entry of a world into the world scope; returns how many changed."""
    entries = session.scalars(
        select(LoreEntry).where(LoreEntry.world_id == world_id,
                                LoreEntry.is_dynamically_generated.is_(False))
        .order_by(LoreEntry.id)
    ).all()
    items = [(e.id, composite_document(base_lore(e.title, e.content), None), 0) for e in entries]
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
    note, version = None, 0
    if session_id is not None:
        row = session.execute(select(SessionNote.content, SessionNote.version).where(
            SessionNote.session_id == session_id, SessionNote.lore_entry_id == lore_entry_id)).first()
        if row is not None:
            note, version = row
    scope = session_scope(session_id) if session_id else world_scope(entry.world_id)
    doc = composite_document(base_lore(entry.title, entry.content), note)
    status = _store(session, r, embedder, entry.world_id, scope, [(entry.id, doc, version)])[0]
    return EmbedResult(status, scope, entry.id, doc)
