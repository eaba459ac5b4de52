"""Every queue and every public task name of the pipeline.

The values are the wire names: game backends ``send_task`` them and workers consume them, so
they never change. ``contract.registry.TASKS`` says which queue runs which task.
"""

from __future__ import annotations

from enum import StrEnum


class Queues(StrEnum):
    """Every queue of the system (one worker kind per group: ``contract.registry``, the
    Procfile)."""

    ANALYSIS = "analysis"
    NOTE_UPDATE = "note_update"
    ENTITY_CREATION = "entity_creation"
    SIMULATE_WORLD = "simulate_world"
    EMBED = "embed"
    ARCHIVE = "archive"


class TaskName(StrEnum):
    """Every public task name (``send_task(name, kwargs=...)``)."""

    ANALYZE_TURN = "npc_memory.analyze_turn"
    UPDATE_NOTE = "npc_memory.update_note"
    SUMMARIZE_SESSION = "npc_memory.summarize_session"
    CREATE_ENTITY = "npc_memory.create_entity"
    SIMULATE_WORLD = "npc_memory.simulate_world"
    WORLD_TICK = "npc_memory.world_tick"
    EMBED = "npc_memory.embed"
    EMBED_EVIDENCE = "npc_memory.embed_evidence"
    ARCHIVE_TURN = "npc_memory.archive_turn"
    RECONCILE = "npc_memory.reconcile"
    ARCHIVE_CARDS = "npc_memory.archive_cards"
