"""Worlds in the database: import from a ``WorldSpec``, look up, and embed base lore."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.importers.spec import WorldSpec
from models import LoreEntry, World


def import_world(session: Session, spec: WorldSpec) -> tuple[World, bool]:
    """Insert a world and its lore entries; an already imported world key is left as it is.

    Returns:
        ``(world, created)``; ``created`` is False when the key existed.
    """
    existing = session.scalar(select(World).where(World.key == spec.key))
    if existing is not None:
        return existing, False
    world = World(key=spec.key, title=spec.title[:500], description=spec.description,
                  source=spec.source)
    session.add(world)
    session.flush()
    for e in spec.entries:
        session.add(LoreEntry(
            world_id=world.id, key=e.key, entity_type=e.entity_type, title=e.title,
            content=e.content, tags=list(e.tags),
            relations={k: list(v) for k, v in e.relations.items()}, archetype=e.archetype,
        ))
    session.flush()
    return world, True


def world_by_key(session: Session, key: str) -> World | None:
    """The world with this key, or None."""
    return session.scalar(select(World).where(World.key == key))


def base_entries(session: Session, world_id: int) -> list[LoreEntry]:
    """The world's canonical (not dynamically generated) entries, by id."""
    return list(session.scalars(
        select(LoreEntry).where(LoreEntry.world_id == world_id,
                                LoreEntry.is_dynamically_generated.is_(False))
        .order_by(LoreEntry.id)
    ))
