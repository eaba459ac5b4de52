"""Queue ``note_update``: ``npc_memory.update_note`` rewrites one session note (seed 003)."""

from __future__ import annotations

from sqlalchemy import select

from inference import calls
from memory import nearline
from memory.db import session_scope
from memory.notes import PendingEvent, apply_note_update
from models import GameSession, LoreEntry
from settings import get_settings
from tasks.base import TaskContext, enqueue, npc_task
from tasks.payloads import EmbedPayload, NoteUpdatePayload


@npc_task("npc_memory.update_note", NoteUpdatePayload, soft_time_limit=120, time_limit=150)
def update_note(p: NoteUpdatePayload, ctx: TaskContext) -> dict:
    """Rewrite the note of ``lore_entry_key`` in the session, publish it to the nearline tier
    and enqueue ``embed``. Unknown session or entry raises LookupError (dead-lettered)."""
    with session_scope() as s:
        game = s.get(GameSession, p.session_id)
        if game is None:
            raise LookupError(f"session {p.session_id} does not exist")
        entry_id = s.scalar(select(LoreEntry.id).where(
            LoreEntry.world_id == game.world_id, LoreEntry.key == p.lore_entry_key))
        if entry_id is None:
            raise LookupError(f"no lore entry {p.lore_entry_key!r} in world {game.world_id}")
        r = nearline.get_redis()

        def pending() -> list[PendingEvent]:
            return [PendingEvent(**e) for e in nearline.pending_updates(r, p.session_id, p.lore_entry_key)]

        res = apply_note_update(
            s, session_id=p.session_id, lore_entry_id=entry_id, event=p.update_summary,
            idempotency_key=p.idempotency_key, rewrite=calls.rewrite_note, turn_id=p.turn_id,
            task_id=ctx.task_id, cause=p.cause, game_minutes=p.game_minutes,
            pending=pending if get_settings().note_coalescing else None,
        )
    nearline.drop_pending(r, p.session_id, p.lore_entry_key, res.folded or [p.idempotency_key])
    if res.status == "written":
        nearline.set_note(r, p.session_id, entry_id, res.after)
    if res.status != "coalesced":  # a duplicate re-embeds too: its first run may have died before
        enqueue("npc_memory.embed", EmbedPayload(lore_entry_id=entry_id, session_id=p.session_id))
    return {"status": res.status, "note_id": res.note_id, "version": res.version,
            "tokens": res.tokens, "folded": len(res.folded)}


def enqueue_note_update(p: NoteUpdatePayload) -> str:
    """Enqueue ``npc_memory.update_note`` and announce it for coalescing; returns the task id."""
    nearline.add_pending(nearline.get_redis(), p.session_id, p.lore_entry_key, p.idempotency_key,
                         p.update_summary, p.turn_id, p.cause, p.game_minutes)
    return enqueue("npc_memory.update_note", p)
