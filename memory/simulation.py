"""Off-screen world simulation (seed 004): which NPCs a tick simulates.

Candidates are the session's world characters not seen in its last K turns; among them the
ones simulated least recently go first (Redis sorted set ``session:{id}:simulated``), ties by
id. At most ``max_npcs`` per tick.
"""

from __future__ import annotations

import time

from sqlalchemy.orm import Session

from memory import nearline
from memory.scope import offscreen_characters
from models import LoreEntry


def pick_targets(session: Session, r, world_id: int, session_id: str, recent_k: int,
                 max_npcs: int) -> list[LoreEntry]:
    """Up to ``max_npcs`` off-screen characters to simulate, least recently simulated first."""
    recent = nearline.recent_turns(r, session_id, recent_k)
    recent_ids = {t["npc_entry_id"] for t in recent}
    candidates = offscreen_characters(session, world_id, session_id, recent_ids)
    if not candidates:
        return []
    scores = r.zmscore(f"session:{session_id}:simulated", [str(c.id) for c in candidates])
    ranked = sorted(zip(candidates, scores), key=lambda cs: (cs[1] or 0.0, cs[0].id))
    return [c for c, _ in ranked[:max_npcs]]


def mark_simulated(r, session_id: str, entry_ids: list[int]) -> None:
    """Remember when these NPCs were last simulated."""
    if entry_ids:
        now = time.time()
        r.zadd(f"session:{session_id}:simulated", {str(i): now for i in entry_ids})
