"""Queue ``archive``: ``npc_memory.archive_turn`` writes turns into the archive table in
batches; ``npc_memory.archive_cards`` writes memory-card snapshots and their events in batches
too (the PostgreSQL tier, level 3 of hot cache -> Redis -> PostgreSQL: asynchronous, batched
writes only).

``archive_turn`` keeps its one-turn payload (``TurnPayload``) and stable task id
``npc_memory.archive_turn:{turn_id}``; the worker gathers its messages with celery-batches and
writes up to ``ARCHIVE_BATCH_SIZE`` turns (default 100) in one multi-row
``INSERT ... ON CONFLICT (id) DO NOTHING``, or what arrived within ``ARCHIVE_FLUSH_MS``
(default 100 ms) of the first buffered one. Once a batch is committed it sends one
``npc_memory.embed_evidence`` for its turns (queue ``embed``, ``memory.evidence``): the turns'
evidence becomes searchable without a third task per turn. ``archive_cards`` keeps its payload
(``CardArchivePayload``) and is batched the same way: one multi-row snapshot upsert and one
multi-row event insert per batch. See ``tasks.batch`` for acks, retries and dead letters.
"""

from __future__ import annotations

import hashlib

from celery import Celery
from sqlalchemy.orm import Session

from contract.names import TaskName
from contract.payloads import CardArchivePayload, TurnPayload
from contract.send import celery_sender
from memory.archive import archive_card_batch, insert_turns
from memory.archive import mark_undone
from memory.nearline import get_redis
from settings import get_settings
from tasks.batch import npc_batch_task

_s = get_settings()


EVIDENCE_TASK = TaskName.EMBED_EVIDENCE


def evidence_task_id(turn_ids: list[str]) -> str:
    """The task id of the evidence embedding of a set of turns: the same set (a redelivered
    batch) gives the same id, so the ledger skips it once it succeeded."""
    digest = hashlib.sha256("\n".join(sorted(set(turn_ids))).encode()).hexdigest()[:32]
    return f"{EVIDENCE_TASK}:{digest}"


def send_evidence(app: Celery, payloads: list[TurnPayload]) -> str:
    """After a batch of turns is committed to the archive: send ONE
    ``npc_memory.embed_evidence`` (queue ``embed``) for all of them; returns its task id."""
    ids = list(dict.fromkeys(p.turn_id for p in payloads))
    task_id = evidence_task_id(ids)
    celery_sender(app)(EVIDENCE_TASK, {"turn_ids": ids}, task_id)
    return task_id


@npc_batch_task(TaskName.ARCHIVE_TURN, flush_every=_s.archive_batch_size,
                flush_interval_s=_s.archive_flush_ms / 1000.0, soft_time_limit=30, time_limit=60,
                after_commit=send_evidence)
def archive_turn(s: Session, payloads: list[TurnPayload]) -> list[dict]:
    """Insert a batch of turns in one statement; a turn id already archived is left as it is
    (idempotent); turns a rollback undid before they were archived are marked rolled back
    (``memory.archive.mark_undone``). Returns ``{"written": 1|0}`` per payload (0: archived before)."""
    new = insert_turns(s, [p.model_dump() for p in payloads])
    mark_undone(s, get_redis(), [(p.session_id, p.turn_id) for p in payloads])
    seen: set[str] = set()
    out = []
    for p in payloads:
        out.append({"written": int(p.turn_id in new and p.turn_id not in seen)})
        seen.add(p.turn_id)
    return out


@npc_batch_task(TaskName.ARCHIVE_CARDS, flush_every=_s.archive_batch_size,
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
