"""Queue ``note_update``: ``npc_memory.update_note`` folds an event into one session note."""

from __future__ import annotations

from sqlalchemy import select

from inference import calls
from memory import nearline
from memory.db import session_scope
from memory.notes import PendingEvent, apply_note_update, note_turn_ids
from models import GameSession, LoreEntry
from settings import get_settings
from contract.names import TaskName
from contract.payloads import EmbedPayload, NoteUpdatePayload
from contract.send import Send
from tasks.base import TaskCancelled, TaskContext, enqueue, npc_task


@npc_task(TaskName.UPDATE_NOTE, soft_time_limit=120, time_limit=150)
def update_note(p: NoteUpdatePayload, ctx: TaskContext) -> dict:
    """Fold the event into the note of ``lore_entry_key`` in the session (a checked rewrite,
    or the event appended: ``memory.notes``), publish the note and its turn ids to the
    nearline tier and enqueue ``embed``. Unknown session or entry raises LookupError
    (dead-lettered).

    Returns (the ledger's result): ``{status, note_id, version, tokens, folded}`` and, when
    written, ``mode`` (``rewritten`` | ``appended``), ``reason`` (why the rewrite was refused,
    '' if it was not), ``consolidated`` (bool), ``dropped`` (oldest lines cut to fit the cap)
    and ``turn_ids`` (the turns this revision folded in). An update whose turn a rollback
    undid before its write ends ``cancelled`` in the ledger (``memory.fencing``)."""
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
            consolidate=calls.consolidate_note,
        )
        evidence = note_turn_ids(s, p.session_id, entry_id) if res.status == "written" else None
    if res.status == "cancelled":  # a rollback undid the turn during the rewrite
        nearline.drop_pending(r, p.session_id, p.lore_entry_key, [p.idempotency_key])
        raise TaskCancelled("its turn was undone by a rollback of the session")
    nearline.drop_pending(r, p.session_id, p.lore_entry_key, res.folded or [p.idempotency_key])
    if res.status == "written":
        nearline.set_note(r, p.session_id, entry_id, res.after, turn_ids=evidence)
    if res.status != "coalesced":  # a duplicate re-embeds too: its first run may have died before
        enqueue(ctx.send, TaskName.EMBED, EmbedPayload(lore_entry_id=entry_id,
                                                      session_id=p.session_id))
    out = {"status": res.status, "note_id": res.note_id, "version": res.version,
           "tokens": res.tokens, "folded": len(res.folded)}
    if res.status == "written":
        out.update(mode=res.mode, reason=res.reason, consolidated=res.consolidated,
                   dropped=res.dropped, turn_ids=list(res.turn_ids))
    return out


def enqueue_note_update(send: Send, p: NoteUpdatePayload) -> str:
    """Enqueue ``npc_memory.update_note`` through ``send`` and announce it for coalescing;
    returns the task id."""
    nearline.add_pending(nearline.get_redis(), p.session_id, p.lore_entry_key, p.idempotency_key,
                         p.update_summary, p.turn_id, p.cause, p.game_minutes)
    return enqueue(send, TaskName.UPDATE_NOTE, p)
