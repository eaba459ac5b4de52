"""Find a recorded turn of a session, wherever it still is (Redis, the ledger, the archive)."""

from __future__ import annotations

import json
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory import keys as rkeys
from memory import nearline
from memory.ops.entries import get_game
from memory.ops.errors import NotFound
from models import TaskRecord, Turn


def find_turn(session: Session, r, session_id: str, turn_id: str, *,
              ledger_task_ids: Iterable[str] = ()) -> tuple[dict, str]:
    """A recorded turn of a session as ``analyze_turn`` kwargs, and where it was found.

    Looked up in order: the session's recent turns in Redis (the last ``TURNS_CAP``) and the
    turn outbox (``"redis"``); the task ledger's recorded payload of one of
    ``ledger_task_ids``, the ids of the turn's own ``analyze_turn``/``archive_turn`` tasks
    (``"ledger"``; not searched when none are given); the turn archive (``"archive"``).
    The archive keeps the speaker, event id and in-game clock of turns archived since
    migration 0009; older rows have the speaker as a ``"name: "`` prefix of ``player_text``
    and ``game_minutes`` 0.

    Raises:
        NotFound: unknown session, or no turn ``turn_id`` in that session.
    """
    game = get_game(session, session_id)
    for doc in reversed(nearline.recent_turns(r, session_id, nearline.TURNS_CAP)):
        if doc.get("turn_id") == turn_id:
            return doc, "redis"
    raw = r.hget(rkeys.OUTBOX_PAYLOADS, turn_id)
    if raw is not None:
        doc = json.loads(raw)
        if doc.get("session_id") == session_id:
            return doc, "redis"
    ids = list(ledger_task_ids)
    payloads = session.scalars(select(TaskRecord.payload).where(
        TaskRecord.task_id.in_(ids))).all() if ids else []
    for p in payloads:
        if p and p.get("session_id") == session_id and p.get("turn_id") == turn_id:
            return dict(p), "ledger"
    t = session.get(Turn, turn_id)
    if t is None or t.session_id != session_id:
        raise NotFound(f"unknown turn {turn_id!r} in session {session_id!r}")
    doc = {"turn_id": t.id, "session_id": t.session_id, "world_id": game.world_id, "seq": t.seq,
           "npc_entry_id": t.npc_entry_id, "player_text": t.player_text, "npc_text": t.npc_text,
           "latency_ms": t.latency_ms, "created_at": t.created_at.timestamp(),
           "game_minutes": t.game_minutes or 0}
    doc.update({k: v for k, v in (("speaker", t.speaker), ("event_id", t.event_id),
                                  ("kind", t.kind), ("source", t.source)) if v})
    if t.witnesses is not None:
        doc["witnesses"] = list(t.witnesses)
    if doc["npc_entry_id"] is None:
        del doc["npc_entry_id"]
    return doc, "archive"
