"""Queue ``archive``: ``npc_memory.archive_turn`` writes turns into the archive table in
batches; ``npc_memory.archive_cards`` writes memory-card snapshots and their events in batches
too (seed 000's PostgreSQL tier, seed 001's Level 3: asynchronous, batched writes only).

``archive_turn`` keeps its one-turn payload (``TurnPayload``) and stable task id
``npc_memory.archive_turn:{turn_id}``; the worker gathers its messages with celery-batches and
writes up to ``ARCHIVE_BATCH_SIZE`` turns (default 100) in one multi-row
``INSERT ... ON CONFLICT (id) DO NOTHING``, or what arrived within ``ARCHIVE_FLUSH_MS``
(default 100 ms) of the first buffered one. ``archive_cards`` keeps its payload
(``CardArchivePayload``) and is batched the same way: one multi-row snapshot upsert and one
multi-row event insert per batch. See ``tasks.batch`` for acks, retries and dead letters.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from memory.archive import archive_card_batch, insert_turns
from settings import get_settings
from tasks.batch import npc_batch_task
from tasks.payloads import CardArchivePayload, TurnPayload

_s = get_settings()


@npc_batch_task("npc_memory.archive_turn", TurnPayload, flush_every=_s.archive_batch_size,
                flush_interval_s=_s.archive_flush_ms / 1000.0, soft_time_limit=30, time_limit=60)
def archive_turn(s: Session, payloads: list[TurnPayload]) -> list[dict]:
    """Insert a batch of turns in one statement; a turn id already archived is left as it is
    (idempotent). Returns ``{"written": 1|0}`` per payload (0: archived before)."""
    new = insert_turns(s, [p.model_dump() for p in payloads])
    seen: set[str] = set()
    out = []
    for p in payloads:
        out.append({"written": int(p.turn_id in new and p.turn_id not in seen)})
        seen.add(p.turn_id)
    return out


@npc_batch_task("npc_memory.archive_cards", CardArchivePayload, flush_every=_s.archive_batch_size,
                flush_interval_s=_s.archive_flush_ms / 1000.0, soft_time_limit=30, time_limit=60)
def archive_cards(s: Session, payloads: list[CardArchivePayload]) -> list[dict]:
    """Write a batch of card archives with one multi-row upsert of the snapshots (a higher
    ``rev`` wins) and one multi-row insert of the events not archived yet (idempotent on the
    event id); see ``memory.archive.archive_card_batch``. Returns ``{"snapshots", "events"}``
    (rows written) per payload."""
    return archive_card_batch(s, [{
        "session_id": p.session_id, "npc_entry_id": p.npc_entry_id,
        "cards": {kind: card.model_dump(exclude_none=True)
                  for kind, card in (("relationship", p.cards.relationship),
                                     ("quest", p.cards.quest)) if card is not None},
        "events": [e.model_dump() for e in p.events]} for p in payloads])
