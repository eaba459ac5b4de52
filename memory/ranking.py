"""Ranking of retrieved memories on the dialogue hot path: recency x importance x relevance,
the retrieval function of Generative Agents (Park et al. 2023, section 4.1):

    score = w_relevance * relevance + w_recency * recency + w_importance * importance

each component min-max normalised to [0, 1] over the candidates (as in the paper; a component
equal for all candidates contributes 0).

- relevance: the vector index's cosine similarity of the composite document to the player's
  line;
- recency: exponential decay since the entry was last touched in the session (its note
  rewritten, or a turn addressed to it): ``0.5 ** (age_s / RETRIEVAL_HALF_LIFE_S)``; the paper
  uses 0.995 per sandbox hour, a half-life states the same thing in real seconds; an entry
  never touched in the session has recency 0;
- importance: how much happened to the entry in the session: ``log2(1 + memory version)``
  (the counter ``session:{id}:mver`` that every note and card write bumps), so the paper's
  model-rated poignancy is replaced by a count of memory writes that costs no model call.

Everything is read with one pipelined round trip (``HMGET`` of the touch times and the memory
versions of the candidates).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import redis

from memory import keys as rkeys


@dataclass(frozen=True)
class Weights:
    """Weights of the three components (any non-negative floats; all 1 in the paper)."""

    relevance: float = 1.0
    recency: float = 1.0
    importance: float = 1.0


@dataclass(frozen=True)
class Ranked:
    """One ranked candidate: ``lore_entry_id``, the combined ``score`` and its normalised
    components (each 0..1)."""

    lore_entry_id: int
    score: float
    relevance: float
    recency: float
    importance: float


def _norm(values: list[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if hi - lo <= 1e-12:
        return [0.0] * len(values)
    return [(v - lo) / (hi - lo) for v in values]


def rank(candidates: list[tuple[int, float]], touched: list[float | None], versions: list[int],
         *, now: float, half_life_s: float, weights: Weights) -> list[Ranked]:
    """Rank ``candidates`` (``[(lore_entry_id, relevance)]``) given, per candidate, the unix
    time it was last touched (None: never) and its memory version. Highest score first; ties
    keep the candidates' order."""
    if not candidates:
        return []
    rel = _norm([c[1] for c in candidates])
    rec = _norm([0.0 if t is None else 0.5 ** (max(0.0, now - t) / half_life_s) for t in touched])
    imp = _norm([math.log2(1 + max(0, v)) for v in versions])
    out = [Ranked(c[0], weights.relevance * a + weights.recency * b + weights.importance * d, a, b, d)
           for c, a, b, d in zip(candidates, rel, rec, imp)]
    return sorted(out, key=lambda x: -x.score)  # sorted() is stable


def rank_for_session(r: redis.Redis, session_id: str, candidates: list[tuple[int, float]], *,
                     half_life_s: float, weights: Weights,
                     now: float | None = None) -> list[Ranked]:
    """``rank`` with the touch times and memory versions read from Redis in one round trip."""
    if not candidates:
        return []
    ids = [str(c[0]) for c in candidates]
    pipe = r.pipeline(transaction=False)
    pipe.hmget(rkeys.touched(session_id), ids)
    pipe.hmget(rkeys.memory_versions(session_id), ids)
    raw_touched, raw_versions = pipe.execute()
    touched = [float(t) if t is not None else None for t in raw_touched]
    versions = [int(v) if v is not None else 0 for v in raw_versions]
    return rank(candidates, touched, versions, now=time.time() if now is None else now,
                half_life_s=half_life_s, weights=weights)
