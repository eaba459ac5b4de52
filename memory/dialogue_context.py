"""What an NPC's dialogue prompt retrieves for one player line (no HTTP, no database).

:func:`build_context` takes the embedded player line and the NPC's hot-cache entry
(``memory.hot_cache.HotEntry``) and answers a :class:`DialogueContext`: the session's
composite documents found by the in-process vector index, ranked for the session
(``memory.ranking``), and the session's evidence the NPC witnessed (``memory.evidence``,
``memory.witnesses``), minus what the prompt already shows as recent turns; both scoped to
what the NPC may know and fused by reciprocal rank within a character budget
(``memory.retrieval.merge``). It reads Redis only (three or four pipelined round trips).

:func:`fetch` and :func:`npc_view` are the two steps it shares with the search routes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import redis

from memory import keys as rkeys
from memory import evidence, ranking, retrieval, witnesses
from memory.hot_cache import HotEntry
from memory.vector_index import VectorIndex, evidence_scope


@dataclass(frozen=True)
class RetrievalParams:
    """The retrieval settings of a dialogue turn.

    ``candidates``: documents asked of the index before ranking; ``k``: documents kept after
    ranking; ``evidence_k``: evidence items asked of the index; ``half_life_s``: recency
    half-life of the ranking (seconds); ``weights``: the ranking's weights; ``prompt_chars``:
    the character budget of the fused documents and evidence lines.
    """

    candidates: int
    k: int
    evidence_k: int
    half_life_s: float
    weights: ranking.Weights
    prompt_chars: int

    @classmethod
    def from_settings(cls, s) -> RetrievalParams:
        """The parameters from ``settings.Settings`` (``RETRIEVAL_*``)."""
        return cls(candidates=s.retrieval_candidates, k=s.retrieval_k,
                   evidence_k=s.retrieval_evidence_k, half_life_s=s.retrieval_half_life_s,
                   weights=ranking.Weights(relevance=s.retrieval_weight_relevance,
                                           recency=s.retrieval_weight_recency,
                                           importance=s.retrieval_weight_importance),
                   prompt_chars=s.retrieval_prompt_chars)


@dataclass(frozen=True)
class DialogueContext:
    """What the prompt gets: ``retrieved`` (``(title, text)`` of each chosen document, text
    at most 400 characters, in fused rank order), ``evidence`` (the chosen evidence items'
    prompt lines, ``memory.evidence.prompt_line``) and ``note`` (the NPC's own session note
    as it may see it: '' when it folds in a turn the NPC did not witness)."""

    retrieved: list[tuple[str, str]]
    evidence: list[str]
    note: str


def fetch(r: redis.Redis, world_id: int, session_id: str, entry_ids: list[int],
          item_ids: list[int]) -> tuple[list[dict], list[dict]]:
    """Lore entries (each with its session ``note``, '' when none, and ``note_turns``, the
    turn ids the note folds in) and evidence items of the session, in the given orders, in
    one pipelined Redis round trip; ids missing from Redis are left out.

    Raises:
        redis.RedisError: Redis failed.
    """
    if not entry_ids and not item_ids:
        return [], []
    pipe = r.pipeline(transaction=False)
    for entry_id in entry_ids:
        pipe.get(rkeys.world_entry(world_id, entry_id))
        pipe.get(rkeys.note(session_id, entry_id))
        pipe.get(rkeys.note_turns(session_id, entry_id))
    if item_ids:
        pipe.hmget(rkeys.evidence(session_id), [str(i) for i in item_ids])
    raw = pipe.execute()
    n = 3 * len(entry_ids)
    docs = []
    for raw_doc, raw_note, raw_turns in zip(raw[:n:3], raw[1:n:3], raw[2:n:3]):
        if raw_doc is not None:
            docs.append({**json.loads(raw_doc), "note": raw_note.decode() if raw_note else "",
                         "note_turns": json.loads(raw_turns) if raw_turns else []})
    items = [json.loads(v) for v in raw[-1] if v is not None] if item_ids else []
    return docs, items


def npc_view(r: redis.Redis, session_id: str, npc_entry_id: int, docs: list[dict],
             items: list[dict], own: tuple[str, list[str]] | None = None
             ) -> tuple[list[dict], list[dict], str]:
    """What one NPC may see of fetched documents and evidence items (``memory.witnesses``):
    notes folding in turns it did not witness blanked to the base lore, entries created by
    such turns and items of such turns left out; ``own`` (its own session note and the
    note's turn ids) gives its own note, '' when it folds in such a turn. One Redis round
    trip when any note or creation is to check. Answers ``(docs, items, own note)``.

    Raises:
        redis.RedisError: Redis failed.
    """
    own_note, own_turns = own or ("", [])
    docs = [{**d, "note_turns": d.get("note_turns", [])} for d in docs]
    turns_of = {d["id"]: d["note_turns"] for d in docs}
    probe = docs + ([{"id": -1, "note": own_note}] if own_note else [])
    turns_of[-1] = own_turns
    seen = witnesses.scope_documents(r, session_id, npc_entry_id, probe, turns_of)
    note = next((d["note"] for d in seen if d["id"] == -1), "")
    return ([d for d in seen if d["id"] != -1],
            [it for it in items if witnesses.sees_item(it, npc_entry_id)], note)


def build_context(r: redis.Redis, index: VectorIndex, hot: HotEntry, query: np.ndarray,
                  params: RetrievalParams) -> DialogueContext:
    """The retrieved context of one dialogue turn for the NPC of ``hot`` (its target, session
    note and recent turns), ``query`` being the embedded player line (float32, the index's
    dimension).

    Documents: the session's top ``params.candidates`` index hits (the NPC's own entry left
    out), ranked for the session (``memory.ranking.rank_for_session``), the best
    ``params.k`` kept. Evidence: the ``params.evidence_k`` best items of the turns the NPC
    witnessed, except those of the recent turns the prompt already shows. Both are then
    scoped to the NPC (:func:`npc_view`) and fused within ``params.prompt_chars`` characters
    counted as the prompt shows them (``"title: text"`` lines, evidence prompt lines).

    Raises:
        redis.RedisError: Redis failed.
    """
    target = hot.target
    world_id, session_id, npc_entry_id = target.world_id, target.session_id, target.npc_entry_id
    hits = [(h.lore_entry_id, h.score)
            for h in index.search_session(world_id, session_id, query,
                                          max(params.candidates, params.k) + 1)
            if h.lore_entry_id != npc_entry_id]
    ranked = ranking.rank_for_session(r, session_id, hits, half_life_s=params.half_life_s,
                                      weights=params.weights)[: params.k]
    # the session's utterances this NPC witnessed, minus those the prompt shows as recent
    # turns; its own note's turns come in the same round trip
    pipe = r.pipeline(transaction=False)
    pipe.smembers(rkeys.witnessed(session_id, npc_entry_id))
    pipe.get(rkeys.note_turns(session_id, npc_entry_id))
    raw_seqs, raw_own_turns = pipe.execute()
    seqs = np.fromiter((int(x) for x in raw_seqs), dtype=np.int64)
    shown = {evidence.item_id(t["seq"], part) for t in hot.recent_npc_turns() for part in (0, 1)}
    ev_ids = [h.lore_entry_id for h in index.search(
        evidence_scope(session_id), query, params.evidence_k,
        include=np.concatenate([seqs * 2, seqs * 2 + 1]),
        exclude=np.fromiter(shown, dtype=np.int64, count=len(shown)))]
    docs, items = fetch(r, world_id, session_id, [h.lore_entry_id for h in ranked], ev_ids)
    docs, items, note = npc_view(r, session_id, npc_entry_id, docs, items, own=(
        hot.note, json.loads(raw_own_turns) if raw_own_turns else []))
    # (kind, id, prompt line, value): the budget counts the lines as the prompt shows them
    doc_cands = [("document", d["id"], f"{d['title']}: {(d['note'] or d['content'])[:400]}",
                  (d["title"], (d["note"] or d["content"])[:400])) for d in docs]
    ev_cands = [("evidence", evidence.item_id(it["seq"], it["part"]), evidence.prompt_line(it),
                 evidence.prompt_line(it)) for it in items]
    chosen = [f.item for f in retrieval.merge(doc_cands, ev_cands, text=lambda c: c[2],
                                              key=lambda c: c[:2],
                                              max_chars=params.prompt_chars)]
    return DialogueContext(retrieved=[c[3] for c in chosen if c[0] == "document"],
                           evidence=[c[3] for c in chosen if c[0] == "evidence"], note=note)
