"""The turn archive (PostgreSQL in production): idempotent inserts keyed by turn id."""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy.orm import Session

from memory.db import dialect_insert
from models import Turn


def archive_turns(session: Session, turns: list[dict]) -> int:
    """Insert turns in one multi-row ``INSERT ... ON CONFLICT (id) DO NOTHING``; returns how
    many were new. Safe under concurrent and repeated delivery of the same turn.

    Each dict has ``turn_id, session_id, seq, npc_entry_id, player_text, npc_text,
    latency_ms, created_at`` (unix seconds) and optionally ``speaker``. The archive has no
    speaker column: a speaker other than the player is kept as a ``"<speaker>: "`` prefix of
    the archived ``player_text``.

    Raises:
        NotImplementedError: a database other than PostgreSQL or SQLite.
    """
    if not turns:
        return 0
    rows = [{
        "id": t["turn_id"], "session_id": t["session_id"], "seq": t["seq"],
        "npc_entry_id": t["npc_entry_id"],
        "player_text": f"{t['speaker']}: {t['player_text']}" if t.get("speaker") else t["player_text"],
        "npc_text": t["npc_text"], "latency_ms": t.get("latency_ms", 0.0),
        "created_at": datetime.fromtimestamp(t["created_at"], tz=timezone.utc),
    } for t in turns]
    stmt = (dialect_insert(session, Turn).values(rows)
            .on_conflict_do_nothing(index_elements=["id"]).returning(Turn.id))
    return len(session.execute(stmt).all())  # rowcount is -1 for multi-row inserts on psycopg
