"""Export of what one session added to its world: its session notes (with their revision
history on request) and the entities created during it, as one JSON document.

Format (``npc-memory.session-export``, version 1; times ISO 8601 UTC)::

    {"format": "npc-memory.session-export", "version": 1, "exported_at": str,
     "session": {"id", "world_key", "world_title", "player_name", "status", "created_at"},
     "notes": [{"lore_entry_key", "title", "entity_type", "is_dynamically_generated",
                "content", "version", "last_updated_turn_id", "updated_at",
                "revisions"?: [{version, cause, event_summary, previous_content, content,
                                turn_id, task_id, created_at}]}],
     "created_entities": [{"key", "entity_type", "title", "content", "tags", "archetype",
                           "relations", "created_by_turn_id", "created_at"}],
     "counts": {"notes", "revisions", "created_entities"}}

Notes are ordered by entry key; only notes that were written (version > 0) are listed. A
created entity's first seven fields are an entry of our world format
(:mod:`memory.importers.spec`), so the created entities can be loaded into another world.
Reads the database only (an operator's tool, not on the dialogue hot path).
"""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from memory.ops.entries import get_game, revision_dict
from memory.ops.errors import NotFound, iso
from models import LoreEntry, SessionNote, SessionNoteRevision, World
from models.base import utcnow

EXPORT_FORMAT = "npc-memory.session-export"
EXPORT_VERSION = 1


def export_session(session: Session, session_id: str, *, revisions: bool = False) -> dict:
    """The session's notes and created entities as a JSON-ready dict (format above).

    Args:
        revisions: include each note's revisions, oldest first.

    Raises:
        memory.ops.NotFound: unknown session.
    """
    game = get_game(session, session_id)
    world = session.get(World, game.world_id)
    if world is None:  # the session row outlived its world (cascade off)
        raise NotFound(f"session {session_id!r} has no world")
    rows = session.execute(
        select(SessionNote, LoreEntry)
        .join(LoreEntry, LoreEntry.id == SessionNote.lore_entry_id)
        .where(SessionNote.session_id == session_id, SessionNote.version > 0)
        .order_by(LoreEntry.key)
    ).all()
    history: dict[int, list[dict]] = {}
    if revisions and rows:
        for rev in session.scalars(
                select(SessionNoteRevision)
                .where(SessionNoteRevision.note_id.in_([n.id for n, _ in rows]))
                .order_by(SessionNoteRevision.note_id, SessionNoteRevision.version)):
            history.setdefault(rev.note_id, []).append(revision_dict(rev))
    notes = []
    for note, entry in rows:
        item = {
            "lore_entry_key": entry.key, "title": entry.title, "entity_type": entry.entity_type,
            "is_dynamically_generated": bool(entry.is_dynamically_generated),
            "content": note.content, "version": note.version,
            "last_updated_turn_id": note.last_updated_turn_id, "updated_at": iso(note.updated_at),
        }
        if revisions:
            item["revisions"] = history.get(note.id, [])
        notes.append(item)
    created = session.scalars(
        select(LoreEntry).where(LoreEntry.created_in_session_id == session_id,
                                LoreEntry.is_dynamically_generated.is_(True))
        .order_by(LoreEntry.id)).all()
    n_revisions = session.scalar(
        select(func.count()).select_from(SessionNoteRevision)
        .join(SessionNote, SessionNote.id == SessionNoteRevision.note_id)
        .where(SessionNote.session_id == session_id)) or 0
    return {
        "format": EXPORT_FORMAT,
        "version": EXPORT_VERSION,
        "exported_at": iso(utcnow()),
        "session": {"id": game.id, "world_key": world.key, "world_title": world.title,
                    "player_name": game.player_name, "status": game.status,
                    "created_at": iso(game.created_at)},
        "notes": notes,
        "created_entities": [
            {"key": e.key, "entity_type": e.entity_type, "title": e.title, "content": e.content,
             "tags": list(e.tags or []), "archetype": e.archetype,
             "relations": dict(e.relations or {}), "created_by_turn_id": e.created_by_turn_id,
             "created_at": iso(e.created_at)}
            for e in created
        ],
        "counts": {"notes": len(notes), "revisions": int(n_revisions),
                   "created_entities": len(created)},
    }


__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "export_session"]
