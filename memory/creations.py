"""One queued entity creation applied (``npc_memory.create_entity``): the entry created
under the grounding rule (``memory.entities.create_entity``), cached in the nearline tier
and sent to be embedded; an entity that already exists gets the summary as a note update
instead.

``creation`` is a creation payload (``CreationPayload``'s fields: ``session_id``,
``entity_type``, ``creation_summary``, ``idempotency_key``, ``turn_id``, ``source_text``).
Follow-up tasks go through ``enqueue``, ``(task name, payload fields) -> task id``
(validated, recorded in the task ledger, sent).
"""

from __future__ import annotations

from contract.names import TaskName
from collections.abc import Callable
from contextlib import AbstractContextManager

from sqlalchemy.orm import Session

from memory import fencing, nearline, timeline
from memory.entities import Creator, create_entity
from models import GameSession, LoreEntry, World

EMBED = TaskName.EMBED
UPDATE_NOTE = TaskName.UPDATE_NOTE


def create_from_summary(db: Callable[[], AbstractContextManager[Session]], r, creation, *,
                        create: Creator, embedder,
                        enqueue: Callable[[str, dict], object]) -> dict:
    """Create the entry ``creation`` describes (flagged ``is_dynamically_generated``) and
    send ``npc_memory.embed`` for it; if the entity exists already, send its summary as an
    ``npc_memory.update_note`` of that entry (idempotency key ``{key}:exists``, cause
    ``creation``) instead. A creation that fails the grounding rule writes and sends nothing.
    An entity whose turn a rollback undid while it was being made (``memory.fencing``) is
    retracted at once: the rollback may have looked for the turn's entities before this one
    was committed.

    Returns ``{"status", "entry_id", "title", "matched_by", "grounded_by", "tokens"}``;
    ``{"status": "rejected", "reason", "entry_id": None, "title", "tokens"}`` when rejected;
    ``{"status": "cancelled"}`` when retracted.

    Raises:
        LookupError: the session does not exist.
    """
    with db() as s:
        game = s.get(GameSession, creation.session_id)
        if game is None:
            raise LookupError(f"session {creation.session_id} does not exist")
        world = s.get(World, game.world_id)
        res = create_entity(
            s, world_id=world.id, session_id=creation.session_id,
            entity_type=creation.entity_type, creation_summary=creation.creation_summary,
            idempotency_key=creation.idempotency_key, create=create, turn_id=creation.turn_id,
            embedder=embedder, source_text=creation.source_text,
        )
        if res.status == "created" and fencing.turn_undone(r, creation.session_id,
                                                           creation.turn_id):
            timeline.retract_entries(s, r, creation.session_id, [res.entry_id])  # commits
            return {"status": "cancelled"}
        if res.status == "created":
            entry = s.get(LoreEntry, res.entry_id)
            nearline.cache_entries(r, world.id, [entry], session_id=creation.session_id)
    if res.status == "rejected":
        return {"status": "rejected", "reason": res.reason, "entry_id": None,
                "title": res.title[:200], "tokens": res.tokens}
    if res.status == "exists":
        enqueue(UPDATE_NOTE, dict(
            session_id=creation.session_id, lore_entry_key=res.key,
            update_summary=creation.creation_summary,
            idempotency_key=f"{creation.idempotency_key}:exists", turn_id=creation.turn_id,
            cause="creation"))
    else:
        enqueue(EMBED, dict(lore_entry_id=res.entry_id, session_id=creation.session_id))
    return {"status": res.status, "entry_id": res.entry_id, "title": res.title,
            "matched_by": res.matched_by, "grounded_by": res.grounded_by, "tokens": res.tokens}


__all__ = ["create_from_summary"]
