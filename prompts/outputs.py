"""Pydantic models validating what the models return under ``schemas/*.json``.

The bounds mirror the schemas' ``maxLength``/``maxItems`` (a test checks they agree).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Summary = Annotated[str, StringConstraints(strip_whitespace=True, min_length=3, max_length=300)]
EntityType = Literal["character", "location", "item"]


class NoteUpdate(BaseModel):
    """One update intention: which entry (by key) and what happened to it (seed 003)."""

    model_config = ConfigDict(extra="ignore")
    lore_entry_id: str = Field(min_length=1, max_length=300)
    update_summary: Summary


class EntityCreation(BaseModel):
    """One creation intention: a new entity introduced in the turn (seed 003)."""

    model_config = ConfigDict(extra="ignore")
    entity_type: EntityType
    creation_summary: Summary


class AnalysisOutput(BaseModel):
    """The analysis model's answer: ``{"updates": [...], "creations": [...]}``."""

    model_config = ConfigDict(extra="ignore")
    updates: list[NoteUpdate] = Field(max_length=2)
    creations: list[EntityCreation] = Field(max_length=1)


class CreatedEntity(BaseModel):
    """The creation model's answer: a new lore entry (seed 003)."""

    model_config = ConfigDict(extra="ignore")
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=80)]
    content: Annotated[str, StringConstraints(strip_whitespace=True, min_length=10, max_length=800)]
    tags: list[Annotated[str, StringConstraints(strip_whitespace=True, max_length=40)]] = Field(
        default_factory=list, max_length=6
    )


class SimulationOutput(BaseModel):
    """The simulation model's answer: a list of off-screen updates (seed 004)."""

    updates: list[NoteUpdate] = Field(max_length=4)
