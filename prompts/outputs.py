"""Pydantic models validating what the models return under ``schemas/*.json``.

The bounds mirror the schemas' ``maxLength``/``maxItems`` (a test checks they agree).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from memory.cards import QuestKind, RelationshipKind

Summary = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=300)]
EntityType = Literal["character", "location", "item"]


class NoteUpdate(BaseModel):
    """One update intention: which entry (by key) and what happened to it."""

    model_config = ConfigDict(extra="ignore")
    lore_entry_id: str = Field(min_length=1, max_length=300)
    update_summary: Summary


class EntityCreation(BaseModel):
    """One creation intention: a new entity introduced in the turn."""

    model_config = ConfigDict(extra="ignore")
    entity_type: EntityType
    creation_summary: Summary


class RelationshipChange(BaseModel):
    """How the player treated the NPC in the turn (an event for the relationship card): the
    kind, one sentence, and an intensity 1 (slight) .. 10 (extreme)."""

    model_config = ConfigDict(extra="ignore")
    kind: RelationshipKind
    detail: Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=120)]
    intensity: int = Field(ge=1, le=10)


class QuestChange(BaseModel):
    """A quest or story-flag change in the turn (an event for the quest card): the kind, the
    quest or flag name, and a short detail (the goal, step, outcome or flag value)."""

    model_config = ConfigDict(extra="ignore")
    kind: QuestKind
    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=60)]
    detail: Annotated[str, StringConstraints(strip_whitespace=True, min_length=2, max_length=120)]


class AnalysisOutput(BaseModel):
    """The analysis model's answer: ``{"updates": [...], "creations": [...]}`` and, optional
    and empty by default, ``"relationship": [...]`` and ``"quests": [...]`` (card events)."""

    model_config = ConfigDict(extra="ignore")
    updates: list[NoteUpdate] = Field(max_length=2)
    creations: list[EntityCreation] = Field(max_length=1)
    relationship: list[RelationshipChange] = Field(default_factory=list, max_length=2)
    quests: list[QuestChange] = Field(default_factory=list, max_length=1)


class CreatedEntity(BaseModel):
    """The creation model's answer: a new lore entry."""

    model_config = ConfigDict(extra="ignore")
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
    content: Annotated[str, StringConstraints(strip_whitespace=True, min_length=10, max_length=800)]
    tags: list[Annotated[str, StringConstraints(strip_whitespace=True, max_length=40)]] = Field(
        default_factory=list, max_length=6
    )


class SimulationOutput(BaseModel):
    """The simulation model's answer: a list of off-screen updates."""

    updates: list[NoteUpdate] = Field(max_length=4)


class SessionSummary(BaseModel):
    """The maintenance model's rolling session summary (kept in Redis), 300-600 chars."""

    model_config = ConfigDict(extra="ignore")
    summary: Annotated[str, StringConstraints(min_length=300, max_length=600)]


Reason = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=120)]
Tone = Literal["hostile", "cold", "neutral", "courteous", "warm", "cheerful"]


class ReplyVerdict(BaseModel):
    """The evaluation judge's verdict on one NPC reply (evaluation/judge.py): whether it
    contradicts the NPC's lore entry, its tone, and a one-sentence reason."""

    model_config = ConfigDict(extra="ignore")
    lore: Literal["consistent", "contradicts"]
    tone: Tone
    reason: Reason


class ConsistencyVerdict(BaseModel):
    """The evaluation judge's verdict on two replies to the same question: ``agree`` is
    ``no`` when they contradict each other on a fact."""

    model_config = ConfigDict(extra="ignore")
    agree: Literal["yes", "no"]
    reason: Reason
