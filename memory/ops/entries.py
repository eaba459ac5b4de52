"""Sessions and lore entries as one session sees them: the lookups the other operations
share, and an entity's composite document with its note's revision history."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.composite import base_lore, composite_document
from memory.ops.errors import NotFound, iso
from models import GameSession, LoreEntry, SessionNote, SessionNoteRevision


def get_game(session: Session, session_id: str) -> GameSession:
    """The session row.

    Raises:
        NotFound: unknown session.
    """
    game = session.get(GameSession, session_id)
    if game is None:
        raise NotFound(f"unknown session {session_id!r}")
    return game


def note_of(session: Session, session_id: str, entry_id: int) -> SessionNote | None:
    """The session's note about entry ``entry_id``, or None when it has none."""
    return session.scalar(select(SessionNote).where(
        SessionNote.session_id == session_id, SessionNote.lore_entry_id == entry_id))


def visible_entry(session: Session, game: GameSession, key: str) -> LoreEntry:
    """The entry ``key`` as the session sees it: base lore of the session's world, or an entity
    created in this session (or one this session holds a note about).

    Raises:
        NotFound: no such entry in the world, or it was created in another session.
    """
    entry = session.scalar(select(LoreEntry).where(
        LoreEntry.world_id == game.world_id, LoreEntry.key == key))
    if entry is None:
        raise NotFound(f"unknown lore entry {key!r} in session {game.id!r}")
    if (entry.is_dynamically_generated and entry.created_in_session_id != game.id
            and note_of(session, game.id, entry.id) is None):
        raise NotFound(f"lore entry {key!r} belongs to another session")
    return entry


def revision_dict(rev: SessionNoteRevision) -> dict:
    """A note revision as ``{version, cause, event_summary, previous_content, content,
    turn_id, task_id, created_at}`` (``created_at`` in ISO 8601)."""
    return {"version": rev.version, "cause": rev.cause, "event_summary": rev.event_summary,
            "previous_content": rev.previous_content, "content": rev.content,
            "turn_id": rev.turn_id, "task_id": rev.task_id, "created_at": iso(rev.created_at)}


def entry_with_history(session: Session, session_id: str, lore_entry_key: str) -> dict:
    """An entity as one session sees it: its lore, its session note, the composite document
    the embedder indexes for it, and the note's revisions (oldest first).

    Returns:
        ``{"lore_entry": {id, key, title, content, entity_type, tags, archetype,
        is_dynamically_generated, created_in_session_id, created_by_turn_id},
        "note": {"content": str, "version": int} ("" and 0 when the session has no note),
        "composite_document": str,
        "revisions": [{version, cause, event_summary, previous_content, content, turn_id,
        task_id, created_at}]}``

    Raises:
        NotFound: unknown session, or no such entry in the session's world.
    """
    game = get_game(session, session_id)
    entry = visible_entry(session, game, lore_entry_key)
    note = note_of(session, session_id, entry.id)
    revisions = [] if note is None else session.scalars(
        select(SessionNoteRevision).where(SessionNoteRevision.note_id == note.id)
        .order_by(SessionNoteRevision.version)).all()
    content = note.content if note is not None else ""
    return {
        "lore_entry": {
            "id": entry.id, "key": entry.key, "title": entry.title, "content": entry.content,
            "entity_type": entry.entity_type, "tags": list(entry.tags or []),
            "archetype": entry.archetype,
            "is_dynamically_generated": bool(entry.is_dynamically_generated),
            "created_in_session_id": entry.created_in_session_id,
            "created_by_turn_id": entry.created_by_turn_id,
        },
        "note": {"content": content, "version": note.version if note is not None else 0},
        "composite_document": composite_document(base_lore(entry.title, entry.content), content),
        "revisions": [revision_dict(r) for r in revisions],
    }
