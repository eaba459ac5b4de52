"""Roll a session note back to an earlier revision, as a new revision."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.notes import NoteConflict, commit_revision, note_turn_ids
from memory.ops.entries import get_game, note_of, visible_entry
from memory.ops.errors import NotFound
from models import SessionNoteRevision

def rollback_note(session: Session, session_id: str, lore_entry_key: str, version: int,
                  *, max_attempts: int = 3) -> dict:
    """Give a session note the content it had at revision ``version``, as a NEW revision.

    The new revision has version current+1, cause ``rollback``, event summary
    ``"rollback to version N"``, the previous text as ``previous_content`` and idempotency key
    ``"rollback:{note_id}:{current}->{N}"``. Version 0 is the empty note. The write is fenced
    like ``memory.notes.apply_note_update`` (``UPDATE ... WHERE version = current``): if another
    writer moved the note meanwhile, the note is read again and the rollback re-applied on top,
    so no concurrent update is lost and history stays linear.

    Nothing is written (status ``unchanged``) when the note already has that revision's text:
    a repeated identical rollback, or a rollback to the current version, is a no-op.

    Commits its own transactions (reads are ended before the fenced write, as in
    ``memory.notes``). The caller then publishes the note to the nearline tier
    (``memory.nearline.set_note``) and enqueues ``npc_memory.embed`` for
    ``(lore_entry_id, session_id)``; doing so again after ``unchanged`` is harmless and repairs
    a publication that was interrupted.

    Returns:
        ``{"status": "written" | "unchanged", "session_id", "lore_entry_id",
        "lore_entry_key", "note_id" (None when the session never had a note),
        "version" (the note's version now), "previous_version", "rolled_back_to",
        "content" (the note's text now), "turn_ids" (the turns that text folds in:
        ``memory.notes.note_turn_ids``)}``

    Raises:
        ValueError: ``version`` is negative.
        NotFound: unknown session, entry, or a version the note never had.
        NoteConflict: the note changed under every one of ``max_attempts`` writes.
    """
    if version < 0:
        raise ValueError("version must be >= 0")
    game = get_game(session, session_id)
    entry = visible_entry(session, game, lore_entry_key)
    entry_id, entry_key = entry.id, entry.key
    out = {"session_id": session_id, "lore_entry_id": entry_id, "lore_entry_key": entry_key,
           "rolled_back_to": version}
    for _ in range(max_attempts):
        note = note_of(session, session_id, entry_id)
        if note is None:
            session.rollback()
            if version != 0:
                raise NotFound(f"{entry_key!r} has no note in session {session_id!r}, "
                                  f"so no version {version}")
            return {**out, "status": "unchanged", "note_id": None, "version": 0,
                    "previous_version": 0, "content": "", "turn_ids": []}
        note_id, current, before = note.id, note.version, note.content
        if version > current:
            session.rollback()
            raise NotFound(f"note of {entry_key!r} has no version {version} "
                              f"(current version is {current})")
        if version == 0:
            target, target_turn = "", None
        else:
            rev = session.scalar(select(SessionNoteRevision).where(
                SessionNoteRevision.note_id == note_id, SessionNoteRevision.version == version))
            if rev is None:
                session.rollback()
                raise NotFound(f"note of {entry_key!r} has no revision {version}")
            target, target_turn = rev.content, rev.turn_id
        session.rollback()  # end the read transaction before the fenced write
        if target == before:
            return {**out, "status": "unchanged", "note_id": note_id, "version": current,
                    "previous_version": current, "content": before,
                    "turn_ids": note_turn_ids(session, session_id, entry_id)}
        if not commit_revision(
            session, note_id=note_id, version=current, before=before, after=target,
            turn_id=target_turn, event_summary=f"rollback to version {version}",
            cause="rollback", idempotency_key=f"rollback:{note_id}:{current}->{version}",
        ):
            continue  # another writer got there first, or the same rollback did: read again
        return {**out, "status": "written", "note_id": note_id, "version": current + 1,
                "previous_version": current, "content": target,
                "turn_ids": note_turn_ids(session, session_id, entry_id)}
    raise NoteConflict(f"note of {entry_key!r} in session {session_id!r} changed during "
                       f"{max_attempts} rollback attempts")
