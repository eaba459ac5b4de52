"""Session notes: rewriting one entry's note in one session from a new event (seed 003).

``apply_note_update`` reads the note at version v, asks the rewriter for the new text, and
commits only if the note is still at v (an UPDATE ... WHERE version = v); otherwise it reads
the fresh note and rewrites again, so concurrent updates are never lost.

Coalescing: the caller may pass the other updates queued for the same (session, entry); the
rewrite folds every one not yet applied into one model call, in turn order, and records
each as an ``AppliedNoteEvent`` of the new revision. Their own tasks then find their key
applied and finish without a model call. The unique idempotency key of each applied event
makes a redelivered or folded update a no-op. Base lore is never written here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from models import AppliedNoteEvent, LoreEntry, SessionNote, SessionNoteRevision
from models.base import utcnow

Rewriter = Callable[[str, str, str, str], tuple[str, int]]
"""``(title, lore_content, current_note, event) -> (new_note, tokens_used)``."""

MAX_NOTE_CHARS = 1200
_LABEL = re.compile(r"^\s*(\[[^\]]{1,40}\]|(new |the )?(session note|entity|new event|event|original lore)[^:]{0,20}):\s*", re.I)


class NoteConflict(Exception):
    """The note kept changing under us for every allowed attempt."""


class RejectedRewrite(ValueError):
    """The rewrite came back empty or longer than ``MAX_NOTE_CHARS``; the note is unchanged."""


@dataclass(frozen=True)
class PendingEvent:
    """An update waiting for the same note: its idempotency key, event text, turn, cause,
    ``order`` (turn order: enqueue time in unix seconds) and in-game time (minutes)."""

    idempotency_key: str
    event: str
    turn_id: str | None = None
    cause: str = "turn"
    order: float = 0.0
    game_minutes: int | None = None


@dataclass(frozen=True)
class NoteUpdateResult:
    """Outcome of one update: ``status`` is ``written``, ``duplicate`` (this key was applied
    by this update before) or ``coalesced`` (folded into another update's revision);
    ``version`` is the note's version after it; ``before``/``after`` the note text;
    ``tokens`` model tokens; ``folded`` the idempotency keys applied by this revision."""

    status: str
    note_id: int
    version: int
    before: str
    after: str
    tokens: int = 0
    folded: tuple[str, ...] = ()


def combine_events(events: list[PendingEvent]) -> str:
    """One event text for the rewrite prompt: the event itself, or a numbered list in order."""
    if len(events) == 1:
        return events[0].event
    return "\n".join(f"{n}. {e.event}" for n, e in enumerate(events, 1))


def _applied(session: Session, key: str):
    return session.execute(
        select(AppliedNoteEvent, SessionNoteRevision)
        .join(SessionNoteRevision, SessionNoteRevision.id == AppliedNoteEvent.revision_id)
        .where(AppliedNoteEvent.idempotency_key == key)
    ).first()


def clean_note(text: str) -> str:
    """Normalise model output into a note: strip a leading label and bound its length."""
    lines = []
    for line in text.strip().splitlines():
        if _LABEL.match(line) and not _LABEL.sub("", line).strip():
            continue  # a bare label line such as "[Entity]: X" echoes the prompt
        if re.match(r"^\s*\[(entity|original lore)", line, re.I):
            continue
        lines.append(_LABEL.sub("", line).strip())
    text = " ".join(x for x in lines if x)
    if len(text) > MAX_NOTE_CHARS:  # cut at a sentence end where there is one
        cut = text[:MAX_NOTE_CHARS]
        text = cut[: cut.rfind(". ") + 1] if ". " in cut else cut
    return text


def _get_or_create_note(session: Session, session_id: str, entry_id: int) -> SessionNote:
    note = session.scalar(select(SessionNote).where(
        SessionNote.session_id == session_id, SessionNote.lore_entry_id == entry_id))
    if note is not None:
        return note
    try:
        with session.begin_nested():
            note = SessionNote(session_id=session_id, lore_entry_id=entry_id, content="", version=0)
            session.add(note)
    except IntegrityError:  # another worker created it first
        note = session.scalar(select(SessionNote).where(
            SessionNote.session_id == session_id, SessionNote.lore_entry_id == entry_id))
    return note


def commit_revision(
    session: Session,
    *,
    note_id: int,
    version: int,
    before: str,
    after: str,
    event_summary: str,
    cause: str,
    idempotency_key: str,
    turn_id: str | None = None,
    task_id: str | None = None,
    applied: list[PendingEvent] | tuple = (),
    game_minutes: int | None = None,
) -> bool:
    """The fenced write every note change goes through: set the note to ``after`` only if it
    is still at ``version`` (``UPDATE ... WHERE version = v``), add revision ``version + 1``
    and an ``AppliedNoteEvent`` per ``applied`` event, and commit.

    Returns:
        True when committed; False (session rolled back) when the note moved on or an
        idempotency key was taken concurrently, so the caller reads again and retries.
    """
    result = session.execute(
        update(SessionNote)
        .where(SessionNote.id == note_id, SessionNote.version == version)
        .values(content=after, version=version + 1, last_updated_turn_id=turn_id,
                updated_at=utcnow())
    )
    if result.rowcount != 1:
        session.rollback()
        return False
    revision = SessionNoteRevision(
        note_id=note_id, version=version + 1, previous_content=before, content=after,
        event_summary=event_summary, cause=cause, turn_id=turn_id, task_id=task_id,
        idempotency_key=idempotency_key, game_minutes=game_minutes,
    )
    session.add(revision)
    try:
        session.flush()
        for e in applied:
            session.add(AppliedNoteEvent(revision_id=revision.id, idempotency_key=e.idempotency_key,
                                         event_summary=e.event, turn_id=e.turn_id, cause=e.cause))
        session.commit()
    except IntegrityError:
        session.rollback()
        return False
    return True


def apply_note_update(
    session: Session,
    *,
    session_id: str,
    lore_entry_id: int,
    event: str,
    idempotency_key: str,
    rewrite: Rewriter,
    turn_id: str | None = None,
    task_id: str | None = None,
    cause: str = "turn",
    max_attempts: int = 3,
    pending: Callable[[], list[PendingEvent]] | None = None,
    game_minutes: int | None = None,
) -> NoteUpdateResult:
    """Rewrite the session note of one entry with ``event`` (and, with ``pending``, every
    other queued event of that note not applied yet) and record one revision. The revision
    carries the in-game time of its latest event (``game_minutes``) besides its wall-clock
    ``created_at``.

    Commits its own transactions (the model call happens outside any open write).

    Raises:
        LookupError: the lore entry does not exist.
        NoteConflict: the note changed under every one of ``max_attempts`` rewrites.
        RejectedRewrite: the rewrite is empty or over the cap; the note stays as it was.
        Whatever ``rewrite`` raises (model errors); the note is then left unchanged.
    """
    entry = session.get(LoreEntry, lore_entry_id)
    if entry is None:
        raise LookupError(f"lore entry {lore_entry_id} does not exist")
    own = PendingEvent(idempotency_key, event, turn_id, cause, game_minutes=game_minutes)
    note = _get_or_create_note(session, session_id, lore_entry_id)
    session.commit()
    tokens = 0
    for _ in range(max_attempts):
        found = _applied(session, idempotency_key)
        if found is not None:
            applied, rev = found
            status = "duplicate" if rev.idempotency_key == idempotency_key else "coalesced"
            return NoteUpdateResult(status, rev.note_id, rev.version, rev.previous_content,
                                    rev.content, tokens)
        events = [own]
        if pending is not None:
            others = [e for e in pending() if e.idempotency_key != idempotency_key]
            taken = set(session.scalars(select(AppliedNoteEvent.idempotency_key).where(
                AppliedNoteEvent.idempotency_key.in_([e.idempotency_key for e in others]))))
            events += sorted((e for e in others if e.idempotency_key not in taken),
                             key=lambda e: e.order)
        session.refresh(note)
        version, before = note.version, note.content
        combined = combine_events(events)
        text, used = rewrite(entry.title, entry.content, before, combined)
        tokens += used
        if len(text.strip()) > MAX_NOTE_CHARS:
            raise RejectedRewrite(f"rewrite of {len(text.strip())} characters exceeds the "
                                  f"{MAX_NOTE_CHARS}-character note cap; note {note.id} unchanged")
        after = clean_note(text)
        if not after:
            raise RejectedRewrite(f"rewrite came back empty; note {note.id} unchanged")
        session.rollback()  # end the read transaction before writing
        causes = {e.cause for e in events}
        if not commit_revision(
            session, note_id=note.id, version=version, before=before, after=after,
            turn_id=turn_id, task_id=task_id, event_summary=combined,
            cause=cause if len(causes) == 1 else "coalesced", idempotency_key=idempotency_key,
            applied=events, game_minutes=max((e.game_minutes for e in events
                                              if e.game_minutes is not None), default=None),
        ):
            continue  # the note moved on, or one of these events was applied meanwhile
        return NoteUpdateResult("written", note.id, version + 1, before, after, tokens,
                                tuple(e.idempotency_key for e in events))
    raise NoteConflict(f"session note {note.id} changed during {max_attempts} rewrites")
