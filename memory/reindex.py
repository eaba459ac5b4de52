"""Rebuilding the stored vectors from the database (switching the embedder re-embeds
into a new index instead of mixing dimensions; ``npc-memory reindex``).

The documents are rebuilt from their sources, not from the stored vectors: every canonical
lore entry of a world (world scope, base lore only), every session note (session scope, base
lore + note) and every entity created in a session that has no note there (session scope,
base lore only) - the same composite documents ``memory.vectors.embed_entry`` embeds.

The vectors are written for the given embedder only (``memory.vectors._store``): another
embedder's vectors of the same documents stay where they are, so dialogue servers still
configured with the old embedder keep serving its index until they are restarted with the new
``EMBEDDER``. A document whose vector for this embedder is current (same content hash) is not
embedded again, so running the rebuild twice embeds nothing the second time.

The evidence of every archived turn of the world's sessions (``memory.evidence``) is embedded
for the embedder too, unless ``evidence=False``: a dialogue server switched to the new
embedder then retrieves what was said as before.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from memory.composite import base_lore, composite_document
from memory.evidence import embed_turns
from memory.vector_index import session_scope, world_scope
from memory.vectors import _store
from models import GameSession, LoreEntry, SessionNote, Turn, World

EVIDENCE_TURNS = 500
"""Archived turns per evidence step (one commit each; the embedder calls are batched inside)."""

Item = tuple[int, str, str, int, int]
"""``(world_id, scope, lore_entry_id, document, note_version)``."""


@dataclass
class ReindexResult:
    """Counts of a rebuild: ``documents`` seen, ``embedded`` (written now), ``unchanged``
    (already current for this embedder), ``evidence`` (evidence vectors written now), per
    world key in ``worlds``."""

    embedder: str
    dim: int
    documents: int = 0
    embedded: int = 0
    unchanged: int = 0
    evidence: int = 0
    worlds: dict[str, dict[str, int]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        """JSON-ready counts."""
        return {"embedder": self.embedder, "dim": self.dim, "documents": self.documents,
                "embedded": self.embedded, "unchanged": self.unchanged,
                "evidence": self.evidence, "worlds": self.worlds}


def _worlds(session: Session, world_key: str | None) -> list[World]:
    q = select(World).order_by(World.id)
    if world_key is not None:
        q = q.where(World.key == world_key)
    worlds = list(session.scalars(q))
    if world_key is not None and not worlds:
        raise LookupError(f"unknown world {world_key!r}")
    return worlds


def count_documents(session: Session, world_id: int) -> int:
    """How many documents :func:`world_documents` yields for a world (for a progress bar)."""
    canon = session.scalar(select(func.count()).select_from(LoreEntry).where(
        LoreEntry.world_id == world_id, LoreEntry.is_dynamically_generated.is_(False)))
    notes = session.scalar(select(func.count()).select_from(SessionNote).join(
        LoreEntry, LoreEntry.id == SessionNote.lore_entry_id).where(LoreEntry.world_id == world_id))
    created = session.scalar(select(func.count()).select_from(LoreEntry).outerjoin(
        SessionNote, and_(SessionNote.lore_entry_id == LoreEntry.id,
                          SessionNote.session_id == LoreEntry.created_in_session_id)).where(
        LoreEntry.world_id == world_id, LoreEntry.is_dynamically_generated.is_(True),
        LoreEntry.created_in_session_id.is_not(None), LoreEntry.retracted_at.is_(None),
        SessionNote.id.is_(None)))
    return int(canon or 0) + int(notes or 0) + int(created or 0)


def world_documents(session: Session, world_id: int) -> Iterator[Item]:
    """Every composite document of a world, as :data:`Item` tuples, world scope first, then
    session notes, then created entities without a note (each in id order)."""
    for e in session.scalars(select(LoreEntry).where(
            LoreEntry.world_id == world_id, LoreEntry.is_dynamically_generated.is_(False))
            .order_by(LoreEntry.id)):
        yield (world_id, world_scope(world_id), e.id,
               composite_document(base_lore(e.title, e.content), None), 0)
    noted: set[tuple[str, int]] = set()
    for note, e in session.execute(select(SessionNote, LoreEntry).join(
            LoreEntry, LoreEntry.id == SessionNote.lore_entry_id)
            .where(LoreEntry.world_id == world_id).order_by(SessionNote.id)):
        noted.add((note.session_id, e.id))
        yield (world_id, session_scope(note.session_id), e.id,
               composite_document(base_lore(e.title, e.content), note.content), note.version)
    for e in session.scalars(select(LoreEntry).where(
            LoreEntry.world_id == world_id, LoreEntry.is_dynamically_generated.is_(True),
            LoreEntry.created_in_session_id.is_not(None), LoreEntry.retracted_at.is_(None))
            .order_by(LoreEntry.id)):
        if (e.created_in_session_id, e.id) not in noted:
            yield (world_id, session_scope(e.created_in_session_id), e.id,
                   composite_document(base_lore(e.title, e.content), None), 0)


def world_turn_ids(session: Session, world_id: int) -> list[str]:
    """The ids of every archived turn of the world's sessions, by session and ``seq``."""
    return list(session.scalars(select(Turn.id).join(GameSession, GameSession.id == Turn.session_id)
                                .where(GameSession.world_id == world_id)
                                .order_by(Turn.session_id, Turn.seq)))


def reindex(session: Session, r, embedder, *, world_key: str | None = None, batch: int = 64,
            on_world: Callable[[str, int], None] | None = None,
            on_batch: Callable[[int], None] | None = None,
            evidence: bool = True) -> ReindexResult:
    """Rebuild the stored vectors of every world (or of ``world_key``) for ``embedder``, and
    with ``evidence`` the evidence vectors of the world's archived turns
    (``memory.evidence.embed_turns``, :data:`EVIDENCE_TURNS` turns per step; items already
    embedded for this embedder are skipped).

    Documents are embedded ``batch`` at a time per scope (one embedder call and one commit
    per batch; each changed vector is announced on ``vectors:updates`` with the embedder's
    name). ``on_world(world_key, documents)`` is called before each world and
    ``on_batch(n)`` after each batch of ``n`` documents (progress reporting).

    Raises:
        LookupError: unknown ``world_key``.
        ValueError: ``batch`` < 1, or the embedder answered vectors of the wrong shape.
        Whatever the embedder raises (network errors of a remote embedder, after its retries);
        the batches written before stay written, and running again continues from there.
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    result = ReindexResult(embedder=embedder.name, dim=embedder.dim)
    for world in _worlds(session, world_key):
        key, wid = world.key, world.id
        total = count_documents(session, wid)
        if on_world is not None:
            on_world(key, total)
        counts = {"documents": 0, "embedded": 0, "unchanged": 0, "evidence": 0}
        pending: dict[str, list[tuple[int, str, int]]] = {}

        def flush(scope: str) -> None:
            items = pending.pop(scope)
            statuses = _store(session, r, embedder, wid, scope, items)
            counts["documents"] += len(items)
            counts["embedded"] += statuses.count("embedded")
            counts["unchanged"] += statuses.count("unchanged")
            if on_batch is not None:
                on_batch(len(items))

        docs = list(world_documents(session, wid))  # read before _store commits
        for _, scope, entry_id, doc, version in docs:
            pending.setdefault(scope, []).append((entry_id, doc, version))
            if len(pending[scope]) >= batch:
                flush(scope)
        for scope in list(pending):
            flush(scope)
        if evidence:
            ids = world_turn_ids(session, wid)
            for start in range(0, len(ids), EVIDENCE_TURNS):
                counts["evidence"] += embed_turns(session, r, embedder,
                                                  ids[start:start + EVIDENCE_TURNS])["embedded"]
        result.worlds[key] = counts
        result.documents += counts["documents"]
        result.embedded += counts["embedded"]
        result.unchanged += counts["unchanged"]
        result.evidence += counts["evidence"]
    return result
