"""SQLAlchemy 2 models: the canon (worlds, lore entries), the sessions and their archive, the
session-note overlay with its revisions, the task ledger and dead letters, stored vectors, and
the archived memory cards with their events, the archetype adapter registry.

Import ``Base`` from here so that Alembic sees every table.
"""

from models.archetypes import Adapter, Archetype
from models.base import Base
from models.cards import CardEvent, NpcCard
from models.ledger import DeadLetter, TaskRecord
from models.notes import AppliedNoteEvent, SessionNote, SessionNoteRevision
from models.sessions import GameSession, SessionRollback, Turn
from models.vectors import EvidenceVector, StoredVector
from models.world import LoreEntry, World

__all__ = [
    "Adapter",
    "Archetype",
    "AppliedNoteEvent",
    "Base",
    "CardEvent",
    "DeadLetter",
    "EvidenceVector",
    "GameSession",
    "LoreEntry",
    "NpcCard",
    "SessionNote",
    "SessionNoteRevision",
    "SessionRollback",
    "StoredVector",
    "TaskRecord",
    "Turn",
    "World",
]
