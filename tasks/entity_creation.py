"""Queue ``entity_creation``: ``npc_memory.create_entity`` makes a new lore entry."""

from __future__ import annotations

from inference import calls
from inference.embedding import get_embedder
from memory import fencing, nearline, timeline
from memory.db import session_scope
from memory.entities import create_entity as create_entry
from models import GameSession, LoreEntry, World
from contract.names import TaskName
from contract.payloads import CreationPayload, EmbedPayload, NoteUpdatePayload
from tasks.base import TaskCancelled, TaskContext, enqueue, npc_task
from tasks.note_update import enqueue_note_update


@npc_task(TaskName.CREATE_ENTITY, soft_time_limit=120, time_limit=150)
def create_entity(p: CreationPayload, ctx: TaskContext) -> dict:
    """Create the entry (flagged ``is_dynamically_generated``) and enqueue ``embed``; if an
    entry with that title exists, the summary becomes an ``update_note`` for it instead. A
    creation that fails the grounding rule (``memory.entities.create_entity``) writes nothing
    and returns ``{"status": "rejected", "reason", "title", ...}`` (kept in the task ledger). An entity whose turn a rollback undid while it was being made
    is retracted at once and the task ends ``cancelled`` (``memory.fencing``)."""
    with session_scope() as s:
        game = s.get(GameSession, p.session_id)
        if game is None:
            raise LookupError(f"session {p.session_id} does not exist")
        world = s.get(World, game.world_id)
        res = create_entry(
            s, world_id=world.id, session_id=p.session_id, entity_type=p.entity_type,
            creation_summary=p.creation_summary, idempotency_key=p.idempotency_key,
            create=calls.create_lore, turn_id=p.turn_id, embedder=get_embedder(),
            source_text=p.source_text,
        )
        if res.status == "created" and fencing.turn_undone(nearline.get_redis(), p.session_id,
                                                           p.turn_id):
            # a rollback undid the turn while the entity was being made (memory.fencing): the
            # rollback may have looked for the turn's entities before this one was committed
            timeline.retract_entries(s, nearline.get_redis(), p.session_id, [res.entry_id])
            raise TaskCancelled("its turn was undone by a rollback of the session")
        if res.status == "created":
            entry = s.get(LoreEntry, res.entry_id)
            nearline.cache_entries(nearline.get_redis(), world.id, [entry], session_id=p.session_id)
    if res.status == "rejected":
        return {"status": "rejected", "reason": res.reason, "entry_id": None,
                "title": res.title[:200], "tokens": res.tokens}
    if res.status == "exists":
        enqueue_note_update(ctx.send, NoteUpdatePayload(
            session_id=p.session_id, lore_entry_key=res.key, update_summary=p.creation_summary,
            idempotency_key=f"{p.idempotency_key}:exists", turn_id=p.turn_id, cause="creation"))
    else:
        enqueue(ctx.send, TaskName.EMBED, EmbedPayload(lore_entry_id=res.entry_id,
                                                      session_id=p.session_id))
    return {"status": res.status, "entry_id": res.entry_id, "title": res.title,
            "matched_by": res.matched_by, "grounded_by": res.grounded_by, "tokens": res.tokens}
