"""Which lore entries a turn or a world tick is about (the ``enum`` the model may name)."""

from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from models import LoreEntry

MAX_SCOPE = 12


def turn_scope(session: Session, npc: LoreEntry, session_id: str, limit: int = MAX_SCOPE,
               speaker: str | None = None) -> list[LoreEntry]:
    """Entries a turn with ``npc`` can affect, the NPC first: the speaker when it names an
    entry (a turn posted as an event by another character), the NPC's location, what it
    carries, characters in the same place, what the place holds, and entries created in this
    session. At most ``limit`` entries, no duplicates.
    """
    world_id = npc.world_id
    rel = npc.relations or {}
    wanted: list[str] = []
    place = (rel.get("located_in") or [None])[0]
    if place:
        wanted.append(place)
    wanted += list(rel.get("contains") or [])
    by_key: dict[str, LoreEntry] = {}
    if wanted:
        for e in session.scalars(select(LoreEntry).where(
                LoreEntry.world_id == world_id, LoreEntry.key.in_(wanted))):
            by_key[e.key] = e
    out = [npc]
    if speaker:
        said_by = speaker_entry(session, world_id, session_id, speaker)
        if said_by is not None:
            out.append(said_by)
    out += [by_key[k] for k in wanted if k in by_key]
    if place and place in by_key:
        room = by_key[place]
        room_keys = list((room.relations or {}).get("contains") or [])
        for e in session.scalars(select(LoreEntry).where(
                LoreEntry.world_id == world_id, LoreEntry.key.in_(room_keys))
                .order_by(LoreEntry.entity_type, LoreEntry.id)):
            out.append(e)
    out += list(session.scalars(select(LoreEntry).where(
        LoreEntry.created_in_session_id == session_id).order_by(LoreEntry.id.desc()).limit(4)))
    seen: set[int] = set()
    unique = []
    for e in out:
        if e.id not in seen:
            seen.add(e.id)
            unique.append(e)
    return unique[:limit]


def speaker_entry(session: Session, world_id: int, session_id: str, speaker: str) -> LoreEntry | None:
    """The entry a speaker's name denotes: a canonical entry or one created in this session,
    matched by key, else by exact title (lowest id first); None for anyone else."""
    visible = or_(LoreEntry.is_dynamically_generated.is_(False),
                  LoreEntry.created_in_session_id == session_id)
    for column in (LoreEntry.key, LoreEntry.title):
        found = session.scalar(select(LoreEntry).where(
            LoreEntry.world_id == world_id, column == speaker, visible)
            .order_by(LoreEntry.id).limit(1))
        if found is not None:
            return found
    return None


def offscreen_characters(session: Session, world_id: int, session_id: str,
                         recent_npc_ids: set[int]) -> list[LoreEntry]:
    """The world's characters (canon or created in this session) not in the recent turns."""
    rows = session.scalars(select(LoreEntry).where(
        LoreEntry.world_id == world_id, LoreEntry.entity_type == "character",
    ).order_by(LoreEntry.id))
    return [e for e in rows if e.id not in recent_npc_ids
            and (not e.is_dynamically_generated or e.created_in_session_id == session_id)]
