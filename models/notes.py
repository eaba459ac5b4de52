"""The session overlay: one SessionNote per (session, lore entry) and its revision history."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow


class SessionNote(Base):
    """Session-specific truth about one lore entry: what changed in this session, over the
    unchanged base lore.

    ``version`` starts at 1 and increases by one per revision; writers commit only if the
    version they read is still current.
    """

    __tablename__ = "session_notes"
    __table_args__ = (
        UniqueConstraint("session_id", "lore_entry_id", name="uq_session_notes_session_entry"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("game_sessions.id", ondelete="CASCADE"), index=True
    )
    lore_entry_id: Mapped[int] = mapped_column(ForeignKey("lore_entries.id", ondelete="CASCADE"))
    content: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(Integer, default=0)
    last_updated_turn_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SessionNoteRevision(Base):
    """One rewrite of a SessionNote: before/after text, the event, and what caused it.

    ``idempotency_key`` is unique: a redelivered ``update_note`` cannot add a second revision.
    ``cause`` is ``turn`` (analysis of a player turn) or ``simulation`` (a world tick).
    """

    __tablename__ = "session_note_revisions"
    __table_args__ = (UniqueConstraint("note_id", "version", name="uq_note_revisions_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    note_id: Mapped[int] = mapped_column(ForeignKey("session_notes.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    previous_content: Mapped[str] = mapped_column(Text, default="")
    content: Mapped[str] = mapped_column(Text)
    event_summary: Mapped[str] = mapped_column(Text)
    cause: Mapped[str] = mapped_column(String(20), default="turn")
    turn_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    task_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    # in-game time of the (latest) event, minutes since the session began; wall clock below
    game_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class AppliedNoteEvent(Base):
    """One event applied to a session note, by the idempotency key of the update that
    carried it. Coalescing folds several queued events into one revision: each gets a row
    pointing at that revision, so every update is applied exactly once.
    """

    __tablename__ = "applied_note_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    revision_id: Mapped[int] = mapped_column(
        ForeignKey("session_note_revisions.id", ondelete="CASCADE"), index=True)
    idempotency_key: Mapped[str] = mapped_column(String(200), unique=True)
    event_summary: Mapped[str] = mapped_column(Text)
    turn_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cause: Mapped[str] = mapped_column(String(20), default="turn")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
