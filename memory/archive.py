"""The turn archive (PostgreSQL in production): idempotent inserts keyed by turn id."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import select
from sqlalchemy.orm import Session

from models import Turn


def archive_turns(session: Session, turns: list[dict]) -> int:
    """Insert turns whose id is not archived yet; returns how many were written.

    Each dict has ``turn_id, session_id, seq, npc_entry_id, player_text, npc_text,
    latency_ms, created_at`` (unix seconds).
    """
    ids = [t["turn_id"] for t in turns]
    have = set(session.scalars(select(Turn.id).where(Turn.id.in_(ids))))
    new = [t for t in turns if t["turn_id"] not in have]
    for t in new:
        session.add(Turn(
            id=t["turn_id"], session_id=t["session_id"], seq=t["seq"],
            npc_entry_id=t["npc_entry_id"], player_text=t["player_text"], npc_text=t["npc_text"],
            latency_ms=t.get("latency_ms", 0.0),
            created_at=datetime.fromtimestamp(t["created_at"], tz=timezone.utc),
        ))
    return len(new)
