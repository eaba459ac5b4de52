"""Queue ``archive``: ``npc_memory.archive_turn`` writes a turn into the archive table."""

from __future__ import annotations

from memory.archive import archive_turns
from memory.db import session_scope
from tasks.base import TaskContext, npc_task
from tasks.payloads import TurnPayload


@npc_task("npc_memory.archive_turn", TurnPayload, soft_time_limit=30, time_limit=60)
def archive_turn(p: TurnPayload, ctx: TaskContext) -> dict:
    """Insert the turn; a turn id already archived is left as it is (idempotent)."""
    with session_scope() as s:
        written = archive_turns(s, [p.model_dump()])
    return {"written": written}
