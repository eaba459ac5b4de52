"""The archive of the memory cards (the PostgreSQL tier): the latest snapshot of each
card and every event applied to it. Written by the ``archive`` queue from Redis, never read
on the dialogue hot path (Redis holds the live cards, ``memory.cards``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow


class NpcCard(Base):
    """The newest archived snapshot of one card of (session, NPC): ``kind`` is
    ``relationship`` or ``quest``, ``rev`` the card's revision in Redis; an older revision
    arriving late never replaces a newer one."""

    __tablename__ = "npc_cards"
    __table_args__ = (
        UniqueConstraint("session_id", "npc_entry_id", "kind", name="uq_npc_cards_session_npc_kind"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("game_sessions.id", ondelete="CASCADE"), index=True)
    npc_entry_id: Mapped[int] = mapped_column(ForeignKey("lore_entries.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(20))
    rev: Mapped[int] = mapped_column(Integer, default=0)
    card: Mapped[dict] = mapped_column(JSON, default=dict)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class CardEvent(Base):
    """One relationship or quest event applied to a card, as applied (``data``: the event
    with its effective score changes). ``event_id`` (``{turn_id}:r{i}``/``{turn_id}:q{i}``)
    is unique: archiving it twice is a no-op."""

    __tablename__ = "card_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    event_id: Mapped[str] = mapped_column(String(200), unique=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("game_sessions.id", ondelete="CASCADE"), index=True)
    npc_entry_id: Mapped[int] = mapped_column(ForeignKey("lore_entries.id", ondelete="CASCADE"))
    card: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(30))
    turn_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seq: Mapped[int | None] = mapped_column(Integer, nullable=True)
    data: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
