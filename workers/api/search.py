"""What a session's memory holds: ``/search`` (a query's fused documents and evidence,
optionally as one NPC may see them) and ``/memory`` (everything). They read Redis and the
in-process vector index; the database only for the turn ids of notes, and go without them
while it is down."""

from __future__ import annotations

import logging

from fastapi import APIRouter, HTTPException
from sqlalchemy.exc import OperationalError

from inference.embedding import get_embedder
from memory import dialogue_context, evidence, nearline, retrieval, turns, witnesses
from memory.composite import base_lore, composite_document
from memory.db import session_scope
from memory.vector_index import evidence_scope, world_scope
from memory.vector_index import session_scope as session_scope_name
from workers.api.errors import responses
from workers.state import state

log = logging.getLogger(__name__)
router = APIRouter()


def _document_hit(doc: dict, scope: str, turn_ids: dict[int, list[str]]) -> dict:
    """A composite document as ``/search`` and ``/memory`` answer it (rank and score 0)."""
    return {"kind": "document", "rank": 0, "score": 0.0,
            "text": composite_document(base_lore(doc["title"], doc["content"]), doc["note"]),
            "lore_entry_id": doc["id"], "key": doc.get("key"), "title": doc.get("title"),
            "scope": scope, "turn_ids": turn_ids.get(doc["id"], [])}


def _evidence_hit(item: dict) -> dict:
    """An evidence item as ``/search`` and ``/memory`` answer it (rank and score 0)."""
    return {"kind": "evidence", "rank": 0, "score": 0.0, **item}


def _note_turn_ids(session_id: str, entry_ids: list[int]) -> dict[int, list[str]]:
    """``memory.retrieval.note_turn_ids`` from the database; {} (turn ids unknown) while the
    database is unreachable, so search keeps answering from Redis and the index."""
    try:
        with session_scope() as s:
            return retrieval.note_turn_ids(s, session_id, entry_ids)
    except OperationalError as exc:
        log.warning("note turn ids unavailable: %s", exc)
        return {}


def _open_session(r, session_id: str) -> dict:
    """The session's nearline record.

    Raises:
        memory.turns.UnknownSession: the session is not open.
    """
    sess = nearline.get_session(r, session_id)
    if sess is None:
        raise turns.UnknownSession(f"unknown session {session_id!r}")
    return sess


@router.get("/v1/sessions/{session_id}/search",
         responses=responses(404, e404="unknown session or NPC"))
def search(session_id: str, q: str, k: int = 3, max_chars: int | None = None,
           npc_id: str | None = None) -> dict:
    """What the session's memory holds for query ``q``: its composite documents (base lore
    and session note) and its evidence (what was said, ``memory.evidence``), fused by
    reciprocal rank (``memory.retrieval.merge``): at most ``k`` hits in rank order and, with
    ``max_chars``, only while the sum of their ``text`` lengths stays within it (an item that
    does not fit is skipped). ``k``: 1..50, or 1..200 with ``max_chars`` (>= 1).

    ``npc_id`` (an NPC's entry key): that NPC's view, as its dialogue prompt gets it
    (``memory.witnesses``): evidence of the turns it witnessed, notes only when it witnessed
    every turn they fold in (else the base lore), creations of turns it witnessed. Without
    it: the whole session (operators).

    Answers ``{"query", "npc_id", "hits": [{"kind": "document", "rank", "score", "text",
    "lore_entry_id", "key", "title", "scope", "turn_ids"} | {"kind": "evidence", "rank",
    "score", "text", "turn_id", "seq", "part", "speaker", "event_id", "created_at",
    "game_minutes", "turn_kind", "witnesses"}]}`` (``score``: the fused score). 404 unknown session or
    NPC, 422 bad ``q``, ``k`` or ``max_chars``, or an ``npc_id`` that is not a character."""
    k_max = 50 if max_chars is None else 200
    if not q.strip() or not 1 <= k <= k_max or (max_chars is not None and max_chars < 1):
        raise HTTPException(422, f"q must be non-empty, 1 <= k <= {k_max} (200 with "
                                 "max_chars) and max_chars >= 1")
    r = nearline.get_redis()
    sess = _open_session(r, session_id)
    npc_entry_id = None
    include = None
    if npc_id is not None:
        npc_entry_id = turns.resolve_target(r, session_id, npc_id).npc_entry_id
        include = witnesses.witnessed_item_ids(r, session_id, npc_entry_id)
    query = get_embedder().embed([q])[0]
    doc_hits = state.index.search_session(sess["world_id"], session_id, query, k)
    ev_ids = [h.lore_entry_id for h in state.index.search(evidence_scope(session_id), query, k,
                                                          include=include)]
    docs, items = dialogue_context.fetch(r, sess["world_id"], session_id,
                                         [h.lore_entry_id for h in doc_hits], ev_ids)
    if npc_entry_id is not None:
        docs, items, _ = dialogue_context.npc_view(r, session_id, npc_entry_id, docs, items)
    scopes = {h.lore_entry_id: h.scope for h in doc_hits}
    turn_ids = _note_turn_ids(session_id, [d["id"] for d in docs if d["note"]]) if docs else {}
    merged = retrieval.merge(
        [_document_hit(d, scopes[d["id"]], turn_ids) for d in docs],
        [_evidence_hit(it) for it in items], text=lambda h: h["text"],
        key=lambda h: (h["kind"], h.get("lore_entry_id", h.get("turn_id")), h.get("part")),
        k=k, max_chars=max_chars)
    return {"query": q, "npc_id": npc_id,
            "hits": [{**f.item, "rank": f.rank, "score": round(f.score, 6)} for f in merged]}


@router.get("/v1/sessions/{session_id}/memory",
         responses=responses(404, e404="unknown session"))
def session_memory(session_id: str) -> dict:
    """Everything the session's memory holds: ``{"documents": [...], "evidence": [...]}``,
    each item as ``/search`` answers it with rank and score 0. The documents are every
    composite document visible to the session (the world's base documents it has no document
    of its own for, then its own documents, by lore entry id); the evidence every item of the
    session by id (``seq``, then part). 404 unknown session."""
    r = nearline.get_redis()
    sess = _open_session(r, session_id)
    world_id = sess["world_id"]
    own = sorted(int(i) for i in state.index.ids(session_scope_name(session_id)))
    base = sorted({int(i) for i in state.index.ids(world_scope(world_id))} - set(own))
    docs, _ = dialogue_context.fetch(r, world_id, session_id, base + own, [])
    scopes = {**{i: world_scope(world_id) for i in base},
              **{i: session_scope_name(session_id) for i in own}}
    turn_ids = _note_turn_ids(session_id, [d["id"] for d in docs]) if docs else {}
    return {"documents": [_document_hit(d, scopes[d["id"]], turn_ids) for d in docs],
            "evidence": [_evidence_hit(it) for it in evidence.all_items(r, session_id)]}
