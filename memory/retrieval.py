"""Merging retrieved composite documents and evidence under one budget.

The dialogue path and ``GET /v1/sessions/{id}/search`` rank two lists independently (the
composite documents, ranked by ``memory.ranking``; the session's evidence items, by cosine
similarity) and merge them here with reciprocal rank fusion (Cormack, Clarke & Buettcher,
"Reciprocal rank fusion outperforms Condorcet and individual rank learning methods", SIGIR
2009): an item's fused score is ``sum over the lists it appears in of 1 / (RRF_K + rank)``
with ranks from 1 and ``RRF_K = 60``. RRF needs no score calibration between the lists, so
cosine scores of documents and of short utterances need not be comparable.

The fused list is then cut to the budget by :func:`merge`, evidence first: the evidence
items claim the budget in fused order (which among them is their own order), then the
documents fill what is left, in fused order; the result keeps the fused order. An item that
does not fit is skipped and later, smaller ones may still fit.

Why evidence first: the evidence is what was said, the documents are what the models wrote on
top of it (notes, created entries). Given the evidence candidates in plain similarity order,
the evidence taken is exactly what plain retrieval over the raw utterances would put in the
same budget, so the merged context never holds less of what was said than that baseline,
however weak or wrong the model's notes are; documents add to it wherever the evidence leaves
room (on the dialogue path the evidence candidates are limited to ``RETRIEVAL_EVIDENCE_K``, so
documents always get a share there). Without a character budget (``k`` only) the fused order
alone decides, so a short search shows both kinds interleaved.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

RRF_K = 60
"""The constant of reciprocal rank fusion (60 in Cormack et al. 2009)."""


@dataclass(frozen=True)
class Fused:
    """One fused item: ``item`` as given, its fused ``score`` and 1-based ``rank``."""

    item: Any
    score: float
    rank: int


def fuse(ranked_lists: Sequence[Sequence[Any]], key: Callable[[Any], Hashable],
         k: int = RRF_K) -> list[Fused]:
    """Reciprocal rank fusion of ranked lists (best first each).

    Args:
        ranked_lists: the lists to merge; an item may appear in several (same ``key``), its
            contributions add up and its first occurrence is the one returned.
        key: an item's identity, e.g. ``("evidence", item_id)``.
        k: the RRF constant (> 0).

    Returns:
        Every distinct item, highest fused score first; ties keep the order of first
        appearance (lists in the given order, then rank).

    Raises:
        ValueError: ``k`` <= 0.
    """
    if k <= 0:
        raise ValueError("the RRF constant must be positive")
    scores: dict[Hashable, float] = {}
    first: dict[Hashable, tuple[int, Any]] = {}
    order = 0
    for ranked in ranked_lists:
        for rank, item in enumerate(ranked, start=1):
            ident = key(item)
            scores[ident] = scores.get(ident, 0.0) + 1.0 / (k + rank)
            if ident not in first:
                first[ident] = (order, item)
                order += 1
    idents = sorted(scores, key=lambda i: (-scores[i], first[i][0]))
    return [Fused(first[i][1], scores[i], n) for n, i in enumerate(idents, start=1)]


def take_within(items: Sequence[Any], text: Callable[[Any], str], *, k: int | None = None,
                max_chars: int | None = None) -> list[Any]:
    """Items in the given order while the sum of their ``text`` lengths stays <= ``max_chars``
    (None: no budget) and at most ``k`` of them (None: no limit); an item that does not fit
    is skipped, later smaller ones may still fit.

    Raises:
        ValueError: a negative ``k`` or ``max_chars``.
    """
    if (k is not None and k < 0) or (max_chars is not None and max_chars < 0):
        raise ValueError("k and max_chars must be >= 0")
    out: list[Any] = []
    used = 0
    for item in items:
        if k is not None and len(out) >= k:
            break
        n = len(text(item))
        if max_chars is not None and used + n > max_chars:
            continue
        out.append(item)
        used += n
    return out


def merge(documents: Sequence[Any], evidence: Sequence[Any], text: Callable[[Any], str],
          key: Callable[[Any], Hashable], *, k: int | None = None,
          max_chars: int | None = None) -> list[Fused]:
    """The one retrieval rule of the dialogue path and ``/search``: fuse the ranked
    ``documents`` and ``evidence`` (:func:`fuse`); without ``max_chars`` take the first
    ``k`` fused items; with it, let the evidence claim the budget first (at most ``k``
    items, :func:`take_within`), then the documents fill what is left (up to ``k`` items in
    all). The result is in fused order, ranks renumbered 1..n; scores are the fused scores.

    Raises:
        ValueError: as :func:`fuse` and :func:`take_within`.
    """
    fused = fuse([documents, evidence], key)
    if max_chars is None:
        taken = take_within(fused, lambda f: text(f.item), k=k)
    else:
        ev_keys = {key(e) for e in evidence}
        is_ev = [key(f.item) in ev_keys for f in fused]
        first = take_within([f for f, e in zip(fused, is_ev) if e], lambda f: text(f.item),
                            k=k, max_chars=max_chars)
        left = max_chars - sum(len(text(f.item)) for f in first)
        rest = take_within([f for f, e in zip(fused, is_ev) if not e], lambda f: text(f.item),
                           k=None if k is None else k - len(first), max_chars=left)
        chosen = {id(f) for f in first + rest}
        taken = [f for f in fused if id(f) in chosen]
    return [Fused(f.item, f.score, n) for n, f in enumerate(taken, start=1)]


def note_turn_ids(session, session_id: str, entry_ids: Sequence[int]) -> dict[int, list[str]]:
    """The turns each session note of ``entry_ids`` folds in: the turn ids of the events
    applied to the note (``applied_note_events``), oldest first, without repeats; an entry
    without a note or without turn events is left out. A rollback does not remove the turns
    of the revisions it undid.

    Raises:
        sqlalchemy.exc.OperationalError: the database is unreachable.
    """
    from sqlalchemy import select

    from models import AppliedNoteEvent, SessionNote, SessionNoteRevision

    if not entry_ids:
        return {}
    rows = session.execute(
        select(SessionNote.lore_entry_id, AppliedNoteEvent.turn_id)
        .join(SessionNoteRevision, SessionNoteRevision.note_id == SessionNote.id)
        .join(AppliedNoteEvent, AppliedNoteEvent.revision_id == SessionNoteRevision.id)
        .where(SessionNote.session_id == session_id,
               SessionNote.lore_entry_id.in_(list(entry_ids)),
               AppliedNoteEvent.turn_id.is_not(None))
        .order_by(AppliedNoteEvent.created_at, AppliedNoteEvent.id)).all()
    out: dict[int, list[str]] = {}
    for entry_id, turn_id in rows:
        ids = out.setdefault(entry_id, [])
        if turn_id not in ids:
            ids.append(turn_id)
    return out
