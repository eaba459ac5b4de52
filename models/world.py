"""The canon: worlds and their lore entries (characters, locations, items)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, Boolean, DateTime, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow


class World(Base):
    """An imported world; ``key`` is the importer's stable name (e.g. ``possibly-vampires``)."""

    __tablename__ = "worlds"

    id: Mapped[int] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(String(200), unique=True)
    title: Mapped[str] = mapped_column(String(500))
    description: Mapped[str] = mapped_column(Text, default="")
    source: Mapped[str] = mapped_column(String(500), default="")
    # world simulation: a tick every N turns of a session (None: SIMULATE_EVERY_TURNS; 0: off)
    # and how far a tick moves the session's in-game clock (None: TICK_GAME_MINUTES)
    simulate_every_turns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tick_game_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class LoreEntry(Base):
    """One canonical entity of a world: the base lore every session starts from.

    ``key`` is unique within the world and is the id the analysis model sees.
    Base lore is never rewritten by the pipeline; sessions write SessionNotes instead.
    Dynamically generated entries carry their provenance (session, turn) and ``origin_key``,
    the idempotency key of the task that created them, so a redelivered creation is a no-op.
    """

    __tablename__ = "lore_entries"
    __table_args__ = (UniqueConstraint("world_id", "key", name="uq_lore_entries_world_key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    world_id: Mapped[int] = mapped_column(ForeignKey("worlds.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(300))
    entity_type: Mapped[str] = mapped_column(String(40))
    title: Mapped[str] = mapped_column(String(300))
    content: Mapped[str] = mapped_column(Text)
    tags: Mapped[list] = mapped_column(JSON, default=list)
    relations: Mapped[dict] = mapped_column(JSON, default=dict)
    archetype: Mapped[str | None] = mapped_column(String(100), nullable=True)
    is_dynamically_generated: Mapped[bool] = mapped_column(Boolean, default=False)
    created_in_session_id: Mapped[str | None] = mapped_column(
        ForeignKey("game_sessions.id", ondelete="SET NULL"), nullable=True, index=True
    )
    created_by_turn_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    origin_key: Mapped[str | None] = mapped_column(String(200), nullable=True, unique=True)
    # a created entry whose turn a rollback undid: hidden from retrieval, kept in history
    retracted_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
