"""Game sessions and the turn archive (written by the ``archive`` queue, never read on the
dialogue hot path)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, DateTime, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from models.base import Base, utcnow


class GameSession(Base):
    """A player's session on a world; ``id`` is a 32-char hex UUID chosen by the server."""

    __tablename__ = "game_sessions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    world_id: Mapped[int] = mapped_column(ForeignKey("worlds.id", ondelete="CASCADE"), index=True)
    player_name: Mapped[str] = mapped_column(String(200), default="player")
    status: Mapped[str] = mapped_column(String(20), default="active")
    # the in-game clock, in minutes since the session began (advanced by world ticks); the
    # live value is in Redis (``session:{id}`` field ``game_minutes``), this is its last copy
    game_minutes: Mapped[int] = mapped_column(Integer, default=0)
    # save slots (``memory.timeline``): bumped by every rollback; a task whose write would
    # land after a rollback of its turn sees the change and does not apply (epoch fencing)
    epoch: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    forked_from_session_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    forked_at_turn_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class SessionRollback(Base):
    """One rollback of a session to a turn (``memory.timeline.rollback_session``): the turn
    kept (``to_turn_id``, ``to_seq``), the session's epoch after it, the turn ids undone
    (JSON list) and what was undone (``counts``: JSON object of counts)."""

    __tablename__ = "session_rollbacks"

    id: Mapped[int] = mapped_column(primary_key=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("game_sessions.id", ondelete="CASCADE"), index=True)
    epoch: Mapped[int] = mapped_column(Integer)
    to_turn_id: Mapped[str] = mapped_column(String(64))
    to_seq: Mapped[int] = mapped_column(Integer)
    turn_ids: Mapped[list] = mapped_column(JSON, default=list)
    counts: Mapped[dict] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Turn(Base):
    """One archived turn: what was said to the NPC and the NPC's reply (the session's evidence,
    ``memory.evidence``).

    ``id`` is the turn id returned to the client; inserting it twice is a no-op. ``speaker``
    is who said ``player_text`` (None: the session's player), ``event_id`` the caller's id of a
    posted event, ``game_minutes`` the session's in-game clock at the turn (None: archived
    before the clock was kept). ``npc_entry_id`` is None for a narration or game event
    addressed to no NPC; ``kind`` is what the turn is (None: speech,
    ``contract.payloads.TurnKind``); ``witnesses`` the lore entry ids of the characters who
    witnessed it (None: archived before witnesses were recorded, the addressed NPC alone);
    ``source`` the provenance of a turn the system made (a ``told`` turn of the simulation).
    """

    __tablename__ = "turns"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("game_sessions.id", ondelete="CASCADE"), index=True
    )
    seq: Mapped[int] = mapped_column(Integer)
    npc_entry_id: Mapped[int | None] = mapped_column(
        ForeignKey("lore_entries.id", ondelete="CASCADE"), nullable=True)
    player_text: Mapped[str] = mapped_column(Text)
    npc_text: Mapped[str] = mapped_column(Text)
    latency_ms: Mapped[float] = mapped_column(default=0.0)
    speaker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    event_id: Mapped[str | None] = mapped_column(String(200), nullable=True)
    game_minutes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # set when a rollback of the session undid this turn: kept in history, out of its evidence
    rolled_back_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    kind: Mapped[str | None] = mapped_column(String(20), nullable=True)
    witnesses: Mapped[list | None] = mapped_column(JSON, nullable=True)
    source: Mapped[str | None] = mapped_column(String(300), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
