"""Turns archived after their rollback are marked rolled back, without Celery
(``memory.archive.mark_undone``): real database and Redis."""

from __future__ import annotations

import time
import uuid

from memory import keys, nearline
from memory.archive import insert_turns, mark_undone
from memory.db import session_scope
from models import Turn


def _turn(game, seq: int) -> dict:
    return {"turn_id": uuid.uuid4().hex, "session_id": game["id"], "seq": seq,
            "npc_entry_id": None, "player_text": f"turn {seq}", "npc_text": "",
            "latency_ms": 0.0, "created_at": time.time()}


def test_only_the_turns_a_rollback_undid_are_marked(game_session):
    r = nearline.get_redis()
    kept, undone = _turn(game_session, 1), _turn(game_session, 2)
    r.sadd(keys.undone(game_session["id"]), undone["turn_id"])
    with session_scope() as s:
        insert_turns(s, [kept, undone])
        pairs = [(t["session_id"], t["turn_id"]) for t in (kept, undone)]
        assert mark_undone(s, r, pairs + [("no-rollbacks", "x")]) == 1
    with session_scope() as s:
        assert s.get(Turn, kept["turn_id"]).rolled_back_at is None
        assert s.get(Turn, undone["turn_id"]).rolled_back_at is not None
