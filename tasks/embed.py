"""Queue ``embed``: ``npc_memory.embed`` turns a composite document into a stored vector;
``npc_memory.embed_evidence`` turns the evidence items of a batch of archived turns into
stored vectors (``memory.evidence``)."""

from __future__ import annotations

from inference.embedding import get_embedder
from memory import nearline
from memory.db import session_scope
from memory.evidence import embed_turns
from memory.vectors import embed_entry
from contract.names import TaskName
from contract.payloads import EmbedPayload, EvidencePayload
from tasks.base import TaskContext, npc_task


@npc_task(TaskName.EMBED, soft_time_limit=60, time_limit=90)
def embed(p: EmbedPayload, ctx: TaskContext) -> dict:
    """Embed the entry's composite document for the session, store it, announce it to the
    dialogue servers. An unchanged document (same content hash) is skipped."""
    with session_scope() as s:
        res = embed_entry(s, nearline.get_redis(), get_embedder(), p.lore_entry_id, p.session_id)
    return {"status": res.status, "scope": res.scope}


@npc_task(TaskName.EMBED_EVIDENCE, soft_time_limit=60, time_limit=90)
def embed_evidence(p: EvidencePayload, ctx: TaskContext) -> dict:
    """Embed the evidence items of archived turns in one batch, store the vectors, write the
    items to Redis and announce them to the dialogue servers (``memory.evidence.embed_turns``;
    idempotent: a redelivery writes nothing twice). Returns ``{"items", "embedded",
    "published"}``."""
    with session_scope() as s:
        return embed_turns(s, nearline.get_redis(), get_embedder(), p.turn_ids)
