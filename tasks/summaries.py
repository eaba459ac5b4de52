"""Queue ``note_update``: ``npc_memory.summarize_session`` keeps the rolling session summary
(the Redis tier, level 2 of hot cache -> Redis -> PostgreSQL; ``memory.summaries``) with the
maintenance model.

Sent by the dialogue server every ``SUMMARIZE_EVERY_TURNS`` turns of a session (task id
``npc_memory.summarize_session:{session_id}:{seq}``, so a resend runs once). It reads only
Redis: the previous summary and the turns after it (at most the 50 the session's turn list
keeps), and stores the new summary unless a summary of a later turn is already stored, with its
audience: the characters who witnessed every turn it covers (``memory.witnesses``), the only
NPCs whose prompt shows it.
It shares the ``note_update`` queue: both are maintenance-model rewrites of session memory.
"""

from __future__ import annotations

from inference import calls
from memory import nearline, summaries
from contract.names import TaskName
from contract.payloads import SummaryPayload
from tasks.base import TaskContext, npc_task


@npc_task(TaskName.SUMMARIZE_SESSION, soft_time_limit=120, time_limit=150)
def summarize_session(p: SummaryPayload, ctx: TaskContext) -> dict:
    """Summarize the session up to turn ``upto_seq``.

    Returns ``{"stored": bool, "turns": n, "chars": len, "tokens": n}``; ``{"stored": False,
    "skipped": reason}`` when the session is gone or already summarized that far.

    Raises:
        inference.llm.InvalidModelOutput / ModelError: as ``calls.summarize_session``.
    """
    return summaries.summarize_session(nearline.get_redis(), p.session_id, p.upto_seq,
                                       calls.summarize_session)
