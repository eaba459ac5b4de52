"""Session notes: folding new events into one entry's note in one session.

``apply_note_update`` reads the note at version v, asks the rewriter for the new text, and
commits only if the note is still at v (an UPDATE ... WHERE version = v); otherwise it reads
the fresh note and rewrites again, so concurrent updates are never lost.

Conservative writes: the model adds structure, never removes evidence. A rewrite replaces the
note only if ``memory.retention.check_rewrite`` accepts it (it keeps the previous note's
names and words, states the event, echoes no prompt, invents no name); otherwise the events
are appended to the previous note as dated lines (mode ``appended``). Knowledge updates are
applied deterministically in both modes (``memory.knowledge``: the superseded fact stays,
marked "Formerly (until <time>)"). A note that would exceed ``MAX_NOTE_CHARS`` is
consolidated by the model under the same check, or else loses its oldest lines (which stay
in the session's raw turns). Every revision records the turn ids of the events it folds in
(``AppliedNoteEvent.turn_id``); ``note_turn_ids`` lists those behind the current note.

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

from memory import fencing, note_text
from memory.retention import check_rewrite
from models import AppliedNoteEvent, LoreEntry, SessionNote, SessionNoteRevision
from models.base import utcnow
from settings import get_settings

Rewriter = Callable[[str, str, str, str], tuple[str, int]]
"""``(title, lore_content, current_note, event) -> (new_note, tokens_used)``."""

Consolidator = Callable[[str, str, str, int], tuple[str, int]]
"""``(title, lore_content, note, max_chars) -> (shorter_note, tokens_used)``."""

MAX_NOTE_CHARS = 1200
_LABEL = re.compile(r"^\s*(\[[^\]]{1,40}\]|(new |the )?(session note|entity|new event|event|original lore)[^:]{0,20}):\s*", re.I)


class NoteConflict(Exception):
    """The note kept changing under us for every allowed attempt."""


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
    by this update before), ``coalesced`` (folded into another update's revision) or
    ``cancelled`` (a rollback of the session undid its turn: nothing written);
    ``version`` is the note's version after it; ``before``/``after`` the note text;
    ``tokens`` model tokens; ``folded`` the idempotency keys applied by this revision.

    For ``written``: ``mode`` is ``rewritten`` (the model's text passed the check) or
    ``appended`` (dated event lines added to the previous note), ``reason`` why a rewrite was
    refused ('' when none), ``consolidated`` whether the model shortened the note under the
    cap, ``dropped`` how many oldest lines or sentences were cut to fit it, and
    ``turn_ids`` the turns of the events this revision folded in."""

    status: str
    note_id: int
    version: int
    before: str
    after: str
    tokens: int = 0
    folded: tuple[str, ...] = ()
    mode: str = ""
    reason: str = ""
    consolidated: bool = False
    dropped: int = 0
    turn_ids: tuple[str, ...] = ()


def _applied(session: Session, key: str):
    return session.execute(
        select(AppliedNoteEvent, SessionNoteRevision)
        .join(SessionNoteRevision, SessionNoteRevision.id == AppliedNoteEvent.revision_id)
        .where(AppliedNoteEvent.idempotency_key == key)
    ).first()


def clean_note(text: str) -> str:
    """Normalise model output into a note: strip prompt labels at line starts, drop blank
    lines (the note's lines are kept), and bound the length at a sentence end."""
    lines = []
    for line in text.strip().splitlines():
        if _LABEL.match(line) and not _LABEL.sub("", line).strip():
            continue  # a bare label line such as "[Entity]: X" echoes the prompt
        if re.match(r"^\s*\[(entity|original lore)", line, re.I):
            continue
        lines.append(_LABEL.sub("", line).strip())
    text = "\n".join(x for x in lines if x)
    if len(text) > MAX_NOTE_CHARS:  # cut at a sentence end where there is one
        cut = text[:MAX_NOTE_CHARS]
        end = max(cut.rfind(". "), cut.rfind(".\n"))
        text = cut[: end + 1] if end >= 0 else cut
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
    session_id: str | None = None,
    epoch: int | None = None,
) -> bool:
    """The fenced write every note change goes through: set the note to ``after`` only if it
    is still at ``version`` (``UPDATE ... WHERE version = v``), add revision ``version + 1``
    and an ``AppliedNoteEvent`` per ``applied`` event, and commit.

    With ``session_id`` and ``epoch`` the write is also fenced on the session's epoch
    (``memory.fencing``): the session row is read ``FOR SHARE`` and the write refused if a
    rollback of the session committed since the writer read ``epoch``.

    Returns:
        True when committed; False (session rolled back) when the note moved on, the session
        was rolled back, or an idempotency key was taken concurrently, so the caller reads
        again and retries.
    """
    if epoch is not None and session_id is not None:
        if fencing.session_epoch(session, session_id, lock=True) != epoch:
            session.rollback()
            return False
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


def combine_events(events: list[PendingEvent], stamped: bool = False) -> str:
    """One event text: the event itself, or a numbered list in order. ``stamped``: each event
    prefixed with its in-game time where known (``"[Day 2, 14:05] ..."``, the prompt's form)."""
    texts = [note_text.event_line(e.event, e.game_minutes) if stamped else e.event for e in events]
    if len(texts) == 1:
        return texts[0]
    return "\n".join(f"{n}. {t}" for n, t in enumerate(texts, 1))


@dataclass(frozen=True)
class Composed:
    """The next text of a note and how it was made (fields as in ``NoteUpdateResult``)."""

    text: str
    mode: str
    reason: str
    consolidated: bool
    dropped: int
    tokens: int


def compose_note(*, title: str, lore: str, before: str, events: list[PendingEvent],
                 rewrite: Rewriter, consolidate: Consolidator | None = None,
                 retention_min: float, event_min: float,
                 max_chars: int = MAX_NOTE_CHARS) -> Composed:
    """The note after ``events``: the model's rewrite if ``check_rewrite`` accepts it (and it
    is within ``max_chars``), else the previous note with the events appended as dated lines;
    knowledge updates applied either way; then kept under ``max_chars`` by ``consolidate``
    (accepted under the same check) or by dropping the oldest lines.

    Raises:
        Whatever ``rewrite`` raises (model errors). A refused or failing ``consolidate`` (any
        exception) is not an error: the oldest lines are dropped instead, and ``reason`` says
        why.
    """
    evs = [(e.event, e.game_minutes) for e in events]
    texts = [e.event for e in events]
    raw, tokens = rewrite(title, lore, before, combine_events(events, stamped=True))
    raw = (raw or "").strip()
    if len(raw) > max_chars:
        ok, reason = False, f"rewrite of {len(raw)} characters over the {max_chars}-character cap"
    else:
        candidate = clean_note(raw)
        verdict = check_rewrite(before, candidate, texts, title=title, lore=lore,
                                retention_min=retention_min, event_min=event_min,
                                must_keep=note_text.superseded_by(before, evs, title),
                                event_times=[t for _, m in evs if (t := note_text.game_time(m))])
        ok, reason = verdict.ok, verdict.reason
    if ok:
        mode, text = "rewritten", note_text.date_new_facts(candidate, evs, title)
    else:
        mode, text = "appended", note_text.append_events(before, evs, title)[0]
    consolidated, dropped = False, 0
    if len(text) > max_chars:
        refused, short = "no consolidator", None
        if consolidate is not None:
            try:
                short, used = consolidate(title, lore, text, max_chars)
                tokens += used
            except Exception as exc:  # a failed model call: the note still fits by dropping lines
                refused = f"{type(exc).__name__}: {exc}"[:200]
        if short is not None:
            short = short.strip()
            if len(short) > max_chars:
                refused = f"{len(short)} characters over the {max_chars}-character cap"
            else:
                cut = clean_note(short)
                v = check_rewrite(text, cut, texts, title=title, lore=lore,
                                  retention_min=retention_min, event_min=event_min,
                                  keep_times=False)
                text, consolidated, refused = (cut, True, "") if v.ok else (text, False, v.reason)
        if not consolidated:
            text, dropped = note_text.drop_oldest(
                text, len(events) if mode == "appended" else 1, max_chars)
            reason = "; ".join(x for x in (reason, f"consolidation refused: {refused}") if x)
    return Composed(text, mode, reason, consolidated, dropped, tokens)


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
    consolidate: Consolidator | None = None,
    retention_min: float | None = None,
    event_min: float | None = None,
) -> NoteUpdateResult:
    """Fold ``event`` (and, with ``pending``, every other queued event of that note not
    applied yet) into the session note of one entry and record one revision
    (``compose_note`` decides the text: a checked rewrite, or the events appended). The
    revision carries the in-game time of its latest event (``game_minutes``) besides its
    wall-clock ``created_at``, and one ``AppliedNoteEvent`` (with its turn id) per event.

    ``retention_min``/``event_min`` default to the settings ``NOTE_RETENTION_MIN`` and
    ``NOTE_EVENT_MIN``. Epoch fencing (``memory.fencing``): each attempt reads the session's
    epoch and the turns its rollbacks undid before the model call; an update whose turn was
    undone returns ``cancelled``, pending events of undone turns are left out, and the write
    is refused (and read again) if a rollback committed meanwhile. Commits its own transactions (the model call happens outside any
    open write).

    Raises:
        LookupError: the lore entry does not exist.
        NoteConflict: the note changed under every one of ``max_attempts`` rewrites.
        Whatever ``rewrite`` raises (model errors); the note is then left unchanged.
    """
    cfg = get_settings()
    retention_min = cfg.note_retention_min if retention_min is None else retention_min
    event_min = cfg.note_event_min if event_min is None else event_min
    entry = session.get(LoreEntry, lore_entry_id)
    if entry is None:
        raise LookupError(f"lore entry {lore_entry_id} does not exist")
    title, lore = entry.title, entry.content
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
        epoch = fencing.session_epoch(session, session_id)
        undone = fencing.undone_turn_ids(session, session_id) if epoch else set()
        if turn_id is not None and turn_id in undone:
            session.rollback()
            return NoteUpdateResult("cancelled", note.id, note.version, "", "", tokens)
        events = [own]
        if pending is not None:
            others = [e for e in pending() if e.idempotency_key != idempotency_key
                      and e.turn_id not in undone]
            taken = set(session.scalars(select(AppliedNoteEvent.idempotency_key).where(
                AppliedNoteEvent.idempotency_key.in_([e.idempotency_key for e in others]))))
            events += sorted((e for e in others if e.idempotency_key not in taken),
                             key=lambda e: e.order)
        session.refresh(note)
        version, before = note.version, note.content
        session.rollback()  # end the read transaction before the model call and the write
        out = compose_note(title=title, lore=lore, before=before, events=events,
                           rewrite=rewrite, consolidate=consolidate,
                           retention_min=retention_min, event_min=event_min)
        tokens += out.tokens
        causes = {e.cause for e in events}
        if not commit_revision(
            session, note_id=note.id, version=version, before=before, after=out.text,
            turn_id=turn_id, task_id=task_id, event_summary=combine_events(events),
            cause=cause if len(causes) == 1 else "coalesced", idempotency_key=idempotency_key,
            applied=events, game_minutes=max((e.game_minutes for e in events
                                              if e.game_minutes is not None), default=None),
            session_id=session_id, epoch=epoch,
        ):
            continue  # the note moved on, or one of these events was applied meanwhile
        return NoteUpdateResult(
            "written", note.id, version + 1, before, out.text, tokens,
            tuple(e.idempotency_key for e in events), out.mode, out.reason, out.consolidated,
            out.dropped, tuple(dict.fromkeys(e.turn_id for e in events if e.turn_id)))
    raise NoteConflict(f"session note {note.id} changed during {max_attempts} rewrites")


_ROLLBACK = re.compile(r"rollback to version (\d+)")


def note_turn_ids(session: Session, session_id: str, entry_id: int) -> list[str]:
    """The turn ids whose events the current session note of ``entry_id`` folds in, oldest
    first, without repeats ([] when there is no note or no event carried a turn id).

    Walks the note's revisions in version order, adding the turn ids of each revision's
    ``AppliedNoteEvent`` rows; a rollback revision (cause ``rollback``, event summary
    ``"rollback to version N"``) restores the list of version N. Turns whose lines were later
    dropped to fit the cap stay listed: the note's history folded them in, and the turns
    themselves remain in the session's evidence.
    """
    note_id = session.scalar(select(SessionNote.id).where(
        SessionNote.session_id == session_id, SessionNote.lore_entry_id == entry_id))
    if note_id is None:
        return []
    revs = session.execute(select(SessionNoteRevision.id, SessionNoteRevision.version,
                                  SessionNoteRevision.cause, SessionNoteRevision.event_summary)
                           .where(SessionNoteRevision.note_id == note_id)
                           .order_by(SessionNoteRevision.version)).all()
    turns: dict[int, list[str]] = {}
    for rev_id, turn in session.execute(
            select(AppliedNoteEvent.revision_id, AppliedNoteEvent.turn_id)
            .where(AppliedNoteEvent.revision_id.in_([r.id for r in revs]))
            .order_by(AppliedNoteEvent.id)):
        if turn:
            turns.setdefault(rev_id, []).append(turn)
    state: dict[int, list[str]] = {0: []}
    current: list[str] = []
    for rev in revs:
        m = _ROLLBACK.fullmatch(rev.event_summary or "") if rev.cause == "rollback" else None
        if m is not None:
            current = list(state.get(int(m.group(1)), current))
        else:
            current = current + [t for t in turns.get(rev.id, []) if t not in current]
        state[rev.version] = current
    return current
