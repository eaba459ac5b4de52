"""Queue ``archive``: ``npc_memory.archive_turn`` writes a turn into the archive table;
``npc_memory.archive_cards`` writes memory-card snapshots and their events (seed 000's
PostgreSQL tier)."""

from __future__ import annotations

from memory.archive import archive_cards as write_cards
from memory.archive import archive_turns
from memory.db import session_scope
from tasks.base import TaskContext, npc_task
from tasks.payloads import CardArchivePayload, TurnPayload


@npc_task("npc_memory.archive_turn", TurnPayload, soft_time_limit=30, time_limit=60)
def archive_turn(p: TurnPayload, ctx: TaskContext) -> dict:
    """Insert the turn; a turn id already archived is left as it is (idempotent)."""
    with session_scope() as s:
        written = archive_turns(s, [p.model_dump()])
    return {"written": written}


@npc_task("npc_memory.archive_cards", CardArchivePayload, soft_time_limit=30, time_limit=60)
def archive_cards(p: CardArchivePayload, ctx: TaskContext) -> dict:
    """Upsert the card snapshots (a higher ``rev`` wins) and insert the events not archived
    yet (idempotent)."""
    with session_scope() as s:
        cards = {kind: card.model_dump(exclude_none=True)
                 for kind, card in (("relationship", p.cards.relationship), ("quest", p.cards.quest))
                 if card is not None}
        return write_cards(s, p.session_id, p.npc_entry_id, cards, [e.model_dump() for e in p.events])
