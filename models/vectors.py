"""Stored vectors: the source of truth every in-memory FAISS index is rebuilt and synced from."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    DateTime, ForeignKey, Index, Integer, LargeBinary, String, Text, UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow


class StoredVector(Base):
    """The embedding of one composite document.

    ``scope`` is ``world:{world_id}`` for base lore shared by all sessions of a world, or
    ``session:{session_id}`` for a session's composite document (base lore + session note) and
    its dynamically created entries. One row per (scope, lore entry, embedder): several
    embedders' vectors of the same document coexist (``npc-memory reindex --embedder``), each
    under the plain scope name, and every read filters by ``embedder`` (the index
    ``(embedder, scope)`` serves loading one embedder's vectors). ``embedder`` is the
    embedder's ``name`` (``all-MiniLM-L6-v2``, ``mistral-embed``, ...). ``vector`` holds
    ``dim`` little-endian float32 values, L2-normalised. ``content_hash`` is the SHA-256 of
    the document and the embedder name, so re-embedding the same text is skipped;
    ``note_version`` is the session note's version the document was built from, so an embed
    that finishes late never overwrites the vector of a newer note.
    """

    __tablename__ = "stored_vectors"
    __table_args__ = (
        UniqueConstraint("scope", "lore_entry_id", "embedder",
                         name="uq_stored_vectors_scope_entry_embedder"),
        Index("ix_stored_vectors_embedder_scope", "embedder", "scope"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    world_id: Mapped[int] = mapped_column(ForeignKey("worlds.id", ondelete="CASCADE"), index=True)
    scope: Mapped[str] = mapped_column(String(100), index=True)
    lore_entry_id: Mapped[int] = mapped_column(ForeignKey("lore_entries.id", ondelete="CASCADE"))
    embedder: Mapped[str] = mapped_column(String(100))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    document: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str] = mapped_column(String(64))
    note_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class EvidenceVector(Base):
    """The embedding of one evidence item: part 0 (what was said to the NPC) or part 1 (the
    NPC's reply) of an archived turn, as ``"Speaker: text"`` (``memory.evidence``).

    One row per (turn, part, embedder); inserting it again is a no-op, so a redelivered
    ``embed_evidence`` writes nothing twice. ``item_id`` is the item's id within its session
    (``seq * 2 + part``), the id under which the vector sits in the index scope
    ``evidence:{session_id}``. ``vector`` holds ``dim`` little-endian float32 values,
    L2-normalised.
    """

    __tablename__ = "evidence_vectors"
    __table_args__ = (
        UniqueConstraint("turn_id", "part", "embedder", name="uq_evidence_vectors_turn_part_embedder"),
        Index("ix_evidence_vectors_embedder_session", "embedder", "session_id"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    turn_id: Mapped[str] = mapped_column(ForeignKey("turns.id", ondelete="CASCADE"))
    part: Mapped[int] = mapped_column(Integer)
    session_id: Mapped[str] = mapped_column(ForeignKey("game_sessions.id", ondelete="CASCADE"))
    item_id: Mapped[int] = mapped_column(Integer)
    embedder: Mapped[str] = mapped_column(String(100))
    dim: Mapped[int] = mapped_column(Integer)
    vector: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
