"""Queue ``entity_creation``: ``npc_memory.create_entity`` makes a new lore entry."""

from __future__ import annotations

from inference import calls
from inference.embedding import get_embedder
from memory import creations, nearline
from memory.db import session_scope
from contract.names import TaskName
from contract.payloads import CreationPayload
from tasks.base import TaskCancelled, TaskContext, npc_task
from tasks.follow_up import follow_up


@npc_task(TaskName.CREATE_ENTITY, soft_time_limit=120, time_limit=150)
def create_entity(p: CreationPayload, ctx: TaskContext) -> dict:
    """Create the entry (flagged ``is_dynamically_generated``) and enqueue ``embed``; if an
    entry with that title exists, the summary becomes an ``update_note`` for it instead. A
    creation that fails the grounding rule (``memory.entities.create_entity``) writes nothing
    and returns ``{"status": "rejected", "reason", "title", ...}`` (kept in the task ledger). An entity whose turn a rollback undid while it was being made
    is retracted at once and the task ends ``cancelled`` (``memory.fencing``)."""
    out = creations.create_from_summary(session_scope, nearline.get_redis(), p,
                                        create=calls.create_lore, embedder=get_embedder(),
                                        enqueue=follow_up(ctx.send))
    if out["status"] == "cancelled":
        raise TaskCancelled("its turn was undone by a rollback of the session")
    return out
