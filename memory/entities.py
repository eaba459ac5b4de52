"""Dynamic entity creation: a creation summary becomes a new LoreEntry, grounded and
conservative.

A creation is accepted only when its normalised title is name-shaped and occurs in the
source text (the turn that introduced it), and is neither a known entry nor a variant of
one (:mod:`memory.grounding`). A known entry is returned instead (the caller turns the
summary into a note update): matched across entity types by normalised exact title, name
variant, fuzzy title, then embedding similarity. Everything else is rejected with a reason
the task ledger counts. ``origin_key`` (the task's idempotency key) is unique, so a
redelivered creation returns the entry it already made.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from memory import grounding
from memory.composite import base_lore, composite_document
from memory.grounding import normalise_title
from models import LoreEntry

if TYPE_CHECKING:  # the model's answer: prompts.outputs imports memory.cards, not the reverse
    from prompts.outputs import CreatedEntity

Creator = Callable[..., "tuple[CreatedEntity, int]"]
"""``(entity_type, creation_summary, names) -> (created entity, tokens_used)``: ``names``
lists the titles the model may choose (the new names found in the source text). A creator
of two parameters ``(entity_type, creation_summary)`` is also accepted."""


@dataclass(frozen=True)
class CreationResult:
    """``status``: ``created``, ``duplicate`` (same task seen before), ``exists`` (the entity
    already exists; ``matched_by`` says how: ``exact``, ``variant``, ``fuzzy`` or
    ``embedding``) or ``rejected`` (nothing written; ``reason`` is ``no_candidate``,
    ``wrong_type``, ``not_name_shaped``, ``not_in_text`` or ``duplicate_variant``).
    ``entry_id`` the entry (None when rejected); ``title`` the entry's title (when
    rejected: the model's title, normalised); ``tokens`` model tokens; ``grounded_by``:
    ``title`` (the model's title occurs in the text) or ``candidate`` (replaced by the one
    new name of the text that fits).
    """

    status: str
    entry_id: int | None
    key: str
    title: str
    tokens: int = 0
    matched_by: str = ""
    reason: str = ""
    grounded_by: str = ""


def slug(text: str) -> str:
    """Lower-case ASCII slug (``"Old Marta's Boat" -> "old-marta-s-boat"``), <= 60 chars."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "entity"


def clean_title(title: str) -> str:
    """The title with what models wrap around a name stripped (speaker prefix, bracketed
    suffix such as ``"(character)"``, ``"(char)"``, ``"(d2"``, quotes, trailing punctuation):
    :func:`memory.grounding.normalise_title`; ``""`` when nothing is left."""
    return normalise_title(title)


FUZZY_TITLE_MIN = 90.0
"""rapidfuzz ``token_sort_ratio`` (0-100) at or above which two titles name the same entity."""
EMBEDDING_MIN = 0.90
"""Cosine similarity (MiniLM) at or above which a new entry's base-lore document matches an
existing one. Calibrated on LIGHT possibly-vampires: the closest two distinct characters score
0.881; the baker's own text under another title scores 0.909."""


def _candidates(session: Session, world_id: int, session_id: str):
    return session.execute(
        select(LoreEntry.id, LoreEntry.title, LoreEntry.entity_type).where(
            LoreEntry.world_id == world_id,
            or_(LoreEntry.is_dynamically_generated.is_(False),
                and_(LoreEntry.created_in_session_id == session_id,
                     LoreEntry.retracted_at.is_(None))),
        )
    ).all()


def find_by_title(session: Session, world_id: int, session_id: str, title: str) -> LoreEntry | None:
    """An entry of the world (canon, or created in this session) whose title has the same
    slug (case, spacing and punctuation ignored: ``"Wenni Grimbostall"`` = ``"wenni-grimbostall"``)."""
    wanted = slug(title)
    for entry_id, other, _type in _candidates(session, world_id, session_id):
        if slug(other) == wanted:
            return session.get(LoreEntry, entry_id)
    return None


def find_existing(session: Session, world_id: int, session_id: str, made: CreatedEntity,
                  entity_type: str, embedder=None) -> tuple[LoreEntry | None, str]:
    """Look for the entity before creating it: normalised exact title, then fuzzy title
    (rapidfuzz token_sort_ratio >= ``FUZZY_TITLE_MIN`` among entries of the same type), then
    embedding similarity of its base-lore document against the stored vectors of the world and
    the session (cosine >= ``EMBEDDING_MIN``, same type).

    Returns:
        ``(entry, how)`` with ``how`` in ``exact``/``fuzzy``/``embedding``, or ``(None, "")``.
    """
    from rapidfuzz import fuzz, process, utils

    found = find_by_title(session, world_id, session_id, made.title)
    if found is not None:
        return found, "exact"
    rows = [r for r in _candidates(session, world_id, session_id) if r[2] == entity_type]
    if rows:
        best = process.extractOne(made.title, {r[0]: r[1] for r in rows}, scorer=fuzz.token_sort_ratio,
                                  processor=utils.default_process, score_cutoff=FUZZY_TITLE_MIN)
        if best is not None:
            return session.get(LoreEntry, best[2]), "fuzzy"
    if embedder is not None and rows:
        hit = _nearest_stored(session, world_id, session_id, {r[0] for r in rows},
                              embedder, composite_document(base_lore(made.title, made.content), None))
        if hit is not None and hit[1] >= EMBEDDING_MIN:
            return session.get(LoreEntry, hit[0]), "embedding"
    return None, ""


def _nearest_stored(session: Session, world_id: int, session_id: str, allowed: set[int],
                    embedder, text: str) -> tuple[int, float] | None:
    """The stored vector (world or session scope) nearest to ``text``: ``(entry id, cosine)``."""
    import numpy as np

    from memory.vector_index import session_scope, world_scope
    from models import StoredVector

    rows = session.execute(select(StoredVector.lore_entry_id, StoredVector.vector).where(
        StoredVector.world_id == world_id, StoredVector.dim == embedder.dim,
        StoredVector.embedder == embedder.name,
        StoredVector.scope.in_([world_scope(world_id), session_scope(session_id)]))).all()
    rows = [r for r in rows if r[0] in allowed]
    if not rows:
        return None
    matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
    scores = matrix @ embedder.embed([text])[0]
    best = int(np.argmax(scores))
    return rows[best][0], float(scores[best])


def _call_creator(create: Creator, entity_type: str, summary: str,
                  names: list[str]) -> tuple[CreatedEntity, int]:
    """Call ``create``, passing the allowed ``names`` when it takes a third parameter (a
    two-argument creator, as older callers pass, is called without them)."""
    try:
        params = inspect.signature(create).parameters.values()
    except (TypeError, ValueError):
        params = ()
    takes_names = sum(p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params) >= 3 \
        or any(p.kind == p.VAR_POSITIONAL for p in params)
    return create(entity_type, summary, names) if takes_names else create(entity_type, summary)


def create_entity(
    session: Session,
    *,
    world_id: int,
    session_id: str,
    entity_type: str,
    creation_summary: str,
    idempotency_key: str,
    create: Creator,
    turn_id: str | None = None,
    embedder=None,
    source_text: str | None = None,
) -> CreationResult:
    """Create a dynamically generated LoreEntry from a summary, at most once per key, only
    under the grounding rule: its name occurs in the source text.

    ``source_text`` is the turn that introduced the entity (player and NPC text); without it
    (older messages) the ``creation_summary`` is the text the name must occur in. Steps:

    1. the key already made an entry: ``duplicate``;
    2. no new name in the text (:func:`memory.grounding.new_candidates`: capitalised
       name-shaped spans that are not a known entry or a variant of one): ``rejected``
       ``no_candidate``, and the model is not called; new names, but none that can be of
       ``entity_type`` (:func:`memory.grounding.fits_type`: a character only ever named
       after "in"/"at", a place or item called "Lord ..."): ``rejected`` ``wrong_type``,
       no model call either;
    3. ``create(entity_type, summary, names)`` with ``names`` the new names that fit the
       summary (or all new names when none occurs in it): the creation model must choose
       one as the title (an ``enum`` in its JSON schema);
    4. the normalised title (:func:`clean_title`) must be name-shaped (else ``rejected``
       ``not_name_shaped``) unless it is exactly a known title (titles of imported worlds
       need not look like names);
    5. it matches a known entry across entity types (exact, variant, fuzzy; see
       :func:`memory.grounding.match_known`) and it or the entry's name occurs in the text:
       ``exists`` (the caller turns the summary into a note update; neither occurs:
       ``rejected`` ``not_in_text``); a match that is ambiguous or a spelling variant:
       ``rejected`` ``duplicate_variant``;
    6. a new title must occur in the text (else ``not_in_text``), except that a title that
       does not is replaced by the one new name of the text that fits it, when exactly one
       does ("Jonathan Harker" -> "Harker" when the text says only "Harker";
       ``grounded_by="candidate"``); a title that is not name-shaped never falls back, so a
       sentence never becomes a name it happens to contain ("The Narrator left Munich");
       the title must fit ``entity_type`` as in step 2 (else ``wrong_type``);
    7. a stored vector of the same type whose base lore embeds next to the new one:
       ``exists`` (``embedding``); else ``created``.

    Raises:
        Whatever ``create`` raises (model errors, invalid output); nothing is written then.
    """
    done = session.scalar(select(LoreEntry).where(LoreEntry.origin_key == idempotency_key))
    if done is not None:
        return CreationResult("duplicate", done.id, done.key, done.title)
    text = source_text if source_text and source_text.strip() else creation_summary
    known = [tuple(r) for r in _candidates(session, world_id, session_id)]
    names = grounding.new_candidates(text, entity_type, known)
    if not names:
        return CreationResult("rejected", None, "", "", reason="no_candidate")
    names = [n for n in names if grounding.fits_type(n, entity_type, text)]
    if not names:
        return CreationResult("rejected", None, "", "", reason="wrong_type")
    offered = [n for n in names if grounding.occurs_in(n, creation_summary)] or names
    made, tokens = _call_creator(create, entity_type, creation_summary, offered)
    title = clean_title(made.title)

    def rejected(reason: str) -> CreationResult:
        return CreationResult("rejected", None, "", title, tokens, reason=reason)

    how, ids = grounding.match_known(title, entity_type, known) if title else ("", [])
    if how != "exact" and grounding.shape_problem(title) is not None:
        return rejected("not_name_shaped")  # only a known title may be shaped otherwise
    if how in ("exact", "variant", "fuzzy"):
        same = session.get(LoreEntry, ids[0])
        forms = [same.title, *grounding.aliases(same.title, same.entity_type)]
        if any(grounding.occurs_in(f, text) for f in [title, *forms]):
            return CreationResult("exists", same.id, same.key, same.title, tokens, how)
        return rejected("not_in_text")
    if how:
        return rejected("duplicate_variant")
    grounded_by = "title"
    if not grounding.occurs_in(title, text):
        fits = grounding.fitting(names, title, creation_summary)
        if len(fits) != 1:
            return rejected("not_in_text")
        title, grounded_by = fits[0], "candidate"
    if not grounding.fits_type(title, entity_type, text):
        return rejected("wrong_type")
    made = made.model_copy(update={"title": title})
    same, how = find_existing(session, world_id, session_id, made, entity_type, embedder)
    if same is not None:
        return CreationResult("exists", same.id, same.key, same.title, tokens, how)
    key = f"{slug(made.title)}-{hashlib.sha1(idempotency_key.encode()).hexdigest()[:8]}"
    entry = LoreEntry(
        world_id=world_id, key=key, entity_type=entity_type, title=made.title,
        content=made.content, tags=list(dict.fromkeys(t for t in made.tags if t)),
        relations={}, is_dynamically_generated=True, created_in_session_id=session_id,
        created_by_turn_id=turn_id, origin_key=idempotency_key,
    )
    session.add(entry)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        done = session.scalar(select(LoreEntry).where(LoreEntry.origin_key == idempotency_key))
        if done is None:
            raise
        return CreationResult("duplicate", done.id, done.key, done.title, tokens)
    return CreationResult("created", entry.id, entry.key, entry.title, tokens,
                          grounded_by=grounded_by)
