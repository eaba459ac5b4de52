"""One queued note update applied (``npc_memory.update_note``): the event folded into the
session note of one entry (``memory.notes.apply_note_update``), the result published to
the nearline tier and the entry's composite document sent to be embedded again.

``update`` is a note-update payload (``NoteUpdatePayload``'s fields: ``session_id``,
``lore_entry_key``, ``update_summary``, ``idempotency_key``, ``turn_id``, ``cause``,
``game_minutes``). Follow-up tasks go through ``enqueue``, ``(task name, payload fields) ->
task id`` (validated, recorded in the task ledger, sent).
"""

from __future__ import annotations

from contract.names import TaskName
from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory import nearline
from memory.notes import Consolidator, PendingEvent, Rewriter, apply_note_update, note_turn_ids
from models import GameSession, LoreEntry

EMBED = TaskName.EMBED


def update_note(db: Callable[[], AbstractContextManager[Session]], r, update, *,
                task_id: str, rewrite: Rewriter, consolidate: Consolidator, coalesce: bool,
                enqueue: Callable[[str, dict], object]) -> dict:
    """Fold ``update`` into its note (a checked rewrite with ``rewrite``/``consolidate``, or
    the event appended; with ``coalesce`` the other queued updates of the note are folded
    in too), drop the folded updates from the pending set, publish the note and its turn ids
    to the nearline tier and send ``npc_memory.embed`` for the entry (a duplicate too: its
    first run may have died before; not a coalesced one).

    Returns ``{status, note_id, version, tokens, folded}`` and, when written, ``mode``,
    ``reason``, ``consolidated``, ``dropped`` and ``turn_ids``; ``{"status": "cancelled"}``
    when a rollback undid the update's turn during the rewrite (nothing written or sent).

    Raises:
        LookupError: the session, or the entry in its world, does not exist.
    """
    with db() as s:
        game = s.get(GameSession, update.session_id)
        if game is None:
            raise LookupError(f"session {update.session_id} does not exist")
        entry_id = s.scalar(select(LoreEntry.id).where(
            LoreEntry.world_id == game.world_id, LoreEntry.key == update.lore_entry_key))
        if entry_id is None:
            raise LookupError(f"no lore entry {update.lore_entry_key!r} in world {game.world_id}")

        def pending() -> list[PendingEvent]:
            return [PendingEvent(**e) for e in nearline.pending_updates(
                r, update.session_id, update.lore_entry_key)]

        res = apply_note_update(
            s, session_id=update.session_id, lore_entry_id=entry_id, event=update.update_summary,
            idempotency_key=update.idempotency_key, rewrite=rewrite, turn_id=update.turn_id,
            task_id=task_id, cause=update.cause, game_minutes=update.game_minutes,
            pending=pending if coalesce else None, consolidate=consolidate,
        )
        evidence = note_turn_ids(s, update.session_id, entry_id) \
            if res.status == "written" else None
    if res.status == "cancelled":  # a rollback undid the turn during the rewrite
        nearline.drop_pending(r, update.session_id, update.lore_entry_key,
                              [update.idempotency_key])
        return {"status": "cancelled"}
    nearline.drop_pending(r, update.session_id, update.lore_entry_key,
                          res.folded or [update.idempotency_key])
    if res.status == "written":
        nearline.set_note(r, update.session_id, entry_id, res.after, turn_ids=evidence)
    if res.status != "coalesced":  # a duplicate re-embeds too: its first run may have died before
        enqueue(EMBED, dict(lore_entry_id=entry_id, session_id=update.session_id))
    out = {"status": res.status, "note_id": res.note_id, "version": res.version,
           "tokens": res.tokens, "folded": len(res.folded)}
    if res.status == "written":
        out.update(mode=res.mode, reason=res.reason, consolidated=res.consolidated,
                   dropped=res.dropped, turn_ids=list(res.turn_ids))
    return out


__all__ = ["EMBED", "update_note"]
