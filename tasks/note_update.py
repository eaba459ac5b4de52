"""Queue ``note_update``: ``npc_memory.update_note`` folds an event into one session note."""

from __future__ import annotations

from inference import calls
from memory import nearline, note_updates
from memory.db import session_scope
from settings import get_settings
from contract.names import TaskName
from contract.payloads import NoteUpdatePayload
from tasks.base import TaskCancelled, TaskContext, npc_task
from tasks.follow_up import follow_up


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
    out = note_updates.update_note(
        session_scope, nearline.get_redis(), p, task_id=ctx.task_id, rewrite=calls.rewrite_note,
        consolidate=calls.consolidate_note, coalesce=get_settings().note_coalescing,
        enqueue=follow_up(ctx.send))
    if out["status"] == "cancelled":
        raise TaskCancelled("its turn was undone by a rollback of the session")
    return out
