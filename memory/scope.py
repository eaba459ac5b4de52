"""Which lore entries a turn or a world tick is about (the ``enum`` the model may name)."""

from __future__ import annotations

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from memory import grounding
from models import LoreEntry

MAX_SCOPE = 12


def turn_scope(session: Session, npc: LoreEntry | None, session_id: str, limit: int = MAX_SCOPE,
               speaker: str | None = None, text: str | None = None,
               world_id: int | None = None) -> list[LoreEntry]:
    """Entries a turn with ``npc`` can affect, the NPC first: the speaker when it names an
    entry (a turn posted as an event by another character), the entries named in the turn's
    ``text`` (:func:`named_in`), the NPC's location, what it carries, characters in the same
    place, what the place holds, then the 4 newest entries created in this session. At most
    ``limit`` entries, no duplicates.

    An entry named in the turn must be in scope: the analysis model can only update entries
    in scope, so one it cannot see it can only ask to create again. Named entries come before
    the surroundings, which a busy room would otherwise fill up to the limit.

    ``npc`` None (an event addressed to no one and witnessed by no character): the entries
    named in the text and the newest creations, in world ``world_id``.
    """
    if npc is None and world_id is None:
        raise ValueError("turn_scope needs an npc or a world_id")
    world_id = npc.world_id if npc is not None else world_id
    rel = (npc.relations or {}) if npc is not None else {}
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
    out = [npc] if npc is not None else []
    if speaker:
        said_by = speaker_entry(session, world_id, session_id, speaker)
        if said_by is not None:
            out.append(said_by)
    if text:
        named = [i for i in named_in(session, world_id, session_id, text)
                 if i not in {e.id for e in out}][:max(0, limit - len(out))]
        if named:
            rows = {e.id: e for e in session.scalars(
                select(LoreEntry).where(LoreEntry.id.in_(named)))}
            out += [rows[i] for i in named if i in rows]
    out += [by_key[k] for k in wanted if k in by_key]
    if place and place in by_key:
        room = by_key[place]
        room_keys = list((room.relations or {}).get("contains") or [])
        for e in session.scalars(select(LoreEntry).where(
                LoreEntry.world_id == world_id, LoreEntry.key.in_(room_keys))
                .order_by(LoreEntry.entity_type, LoreEntry.id)):
            out.append(e)
    out += list(session.scalars(select(LoreEntry).where(
        LoreEntry.created_in_session_id == session_id, LoreEntry.retracted_at.is_(None))
        .order_by(LoreEntry.id.desc()).limit(4)))
    seen: set[int] = set()
    unique = []
    for e in out:
        if e.id not in seen:
            seen.add(e.id)
            unique.append(e)
    return unique[:limit]


def named_in(session: Session, world_id: int, session_id: str, text: str) -> list[int]:
    """Ids of the entries (canon, or created in this session) named in ``text``: the title
    or an alias (``memory.grounding.aliases``: a character's first name or surname, a title
    without its descriptive tail) occurs as whole words, case ignored. Ordered by where the
    name first occurs in ``text``. One query of the world's titles.
    """
    folded = f" {grounding.fold(text)} "
    hits: list[tuple[int, int]] = []
    for entry_id, title, entity_type in session.execute(select(
            LoreEntry.id, LoreEntry.title, LoreEntry.entity_type).where(
            LoreEntry.world_id == world_id,
            or_(LoreEntry.is_dynamically_generated.is_(False),
                and_(LoreEntry.created_in_session_id == session_id,
                     LoreEntry.retracted_at.is_(None)))).order_by(LoreEntry.id)):
        where = [folded.find(f" {f} ") for f in grounding.name_forms(title, entity_type)]
        where = [w for w in where if w >= 0]
        if where:
            hits.append((min(where), entry_id))
    return [entry_id for _, entry_id in sorted(hits)]


def speaker_entry(session: Session, world_id: int, session_id: str, speaker: str) -> LoreEntry | None:
    """The entry a speaker's name denotes: a canonical entry or one created in this session,
    matched by key, else by exact title (lowest id first); None for anyone else."""
    visible = or_(LoreEntry.is_dynamically_generated.is_(False),
                  and_(LoreEntry.created_in_session_id == session_id,
                       LoreEntry.retracted_at.is_(None)))
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
            and (not e.is_dynamically_generated
                 or (e.created_in_session_id == session_id and e.retracted_at is None))]
