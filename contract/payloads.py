"""Task payloads: the kwargs of every task name (``send_task(name, kwargs=...)``); which task
takes which model is ``contract.registry.TASKS``.

Each is validated with pydantic before the task runs; unknown fields are rejected so that a
game backend's typo is dead-lettered with a message instead of silently ignored. NaN and
infinities are rejected, ids (``SafeStr``) must not contain NUL or unpaired surrogates and
have a maximum length; in free text (``CleanStr``) those characters are replaced by U+FFFD, so
a turn queued with one is still archived (``memory.safe_input``).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from memory.cards import QuestCard, RelationshipCard
from memory.safe_input import CleanStr, SafeStr

Text = Field(min_length=1, max_length=4000)


class Payload(BaseModel):
    """Base payload: strict fields; ``target()`` names what the task acts on (for the ledger)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    def target(self) -> str:
        """A short description of the task's target."""
        return ""


TurnKind = Literal["speech", "narration", "game", "npc_exchange", "told"]
"""What a turn is: ``speech`` (someone speaks to the NPC: a played turn, or an event),
``narration`` (a game master's description, said by no character), ``game`` (a game event,
"the bridge collapses"), ``npc_exchange`` (one NPC speaks to another) and ``told`` (the world
simulation has one NPC pass on what it knows to another, ``memory.gossip``)."""

NARRATIVE_KINDS = ("narration", "game")
"""Kinds whose text no character says: their speaker is never a character of the story."""


class TurnPayload(Payload):
    """A finished turn: ``analyze_turn`` and ``archive_turn`` take it. ``npc_text`` is ""
    when the NPC did not answer (an event without a reply). Senders leave ``speaker``,
    ``event_id``, ``kind`` and ``source`` out when they are None, so a player's turn differs
    from the message before those fields existed only by ``witnesses``.

    ``npc_entry_id`` is None only for narration and game events posted without an addressed
    NPC. ``witnesses`` are the lore entry ids of the characters that witnessed the turn (the
    addressed NPC, a speaking NPC, those named present; ``memory.witnesses``); None on
    messages sent before witnesses were recorded, which count as witnessed by the addressed
    NPC alone."""

    turn_id: SafeStr = Field(min_length=1, max_length=64)
    session_id: SafeStr = Field(min_length=1, max_length=64)
    world_id: int
    seq: int = Field(ge=1)
    npc_entry_id: int | None = Field(None, description=(
        "the NPC addressed; absent for narration and game events addressed to no one"))
    player_text: CleanStr = Text
    npc_text: CleanStr = Field(max_length=8000)
    latency_ms: float = 0.0
    created_at: float = Field(description="unix seconds")
    game_minutes: int = Field(0, ge=0, description="the session's in-game clock at the turn")
    speaker: CleanStr | None = Field(None, min_length=1, max_length=200, description=(
        "who said player_text: absent for the session's player; a name (an NPC's entry key "
        "or title, or anyone) for a turn posted as an event"))
    event_id: CleanStr | None = Field(None, min_length=1, max_length=200, description=(
        "the caller's id of a turn posted as an event (absent for a played turn)"))
    kind: TurnKind | None = Field(None, description="what the turn is; absent: speech")
    witnesses: list[int] | None = Field(None, max_length=64, description=(
        "lore entry ids of the characters who witnessed the turn"))
    source: CleanStr | None = Field(None, max_length=300, description=(
        "provenance of a turn the system made itself, e.g. the world tick and turn that a "
        "'told' turn passes on"))

    def target(self) -> str:
        return f"turn:{self.turn_id}"

    @property
    def idempotency_key(self) -> str:
        """What makes the turn's tasks idempotent: the turn id."""
        return f"turn:{self.turn_id}"


class NoteUpdatePayload(Payload):
    """One session-note update: ``lore_entry_key`` names the entry within the session's world."""

    session_id: SafeStr = Field(min_length=1, max_length=64)
    lore_entry_key: SafeStr = Field(min_length=1, max_length=300)
    update_summary: CleanStr = Text
    idempotency_key: SafeStr = Field(min_length=1, max_length=200)
    turn_id: SafeStr | None = Field(None, min_length=1, max_length=64)
    cause: Literal["turn", "simulation", "creation", "api"] = "turn"
    game_minutes: int | None = Field(None, ge=0, description="in-game time of the event")

    def target(self) -> str:
        return f"note:{self.lore_entry_key}"


SOURCE_TEXT_MAX = 6000
"""Characters of a turn's text a creation message carries (``CreationPayload.source_text``)."""


class CreationPayload(Payload):
    """One entity creation from a summary. ``source_text`` is the text of the turn that
    introduced the entity (``analyze_turn`` fills it, at most ``SOURCE_TEXT_MAX``
    characters): the created name must occur in it. Without it (older messages) the name
    must occur in the summary."""

    session_id: SafeStr = Field(min_length=1, max_length=64)
    entity_type: Literal["character", "location", "item"]
    creation_summary: CleanStr = Text
    idempotency_key: SafeStr = Field(min_length=1, max_length=200)
    turn_id: SafeStr | None = Field(None, min_length=1, max_length=64)
    source_text: CleanStr | None = Field(None, max_length=SOURCE_TEXT_MAX, description=(
        "the turn's text (who spoke, what was said): the created name must occur in it"))

    def target(self) -> str:
        return f"create:{self.entity_type}"


class AppliedCardEvent(BaseModel):
    """An event as ``memory.cards.apply_events`` applied it; its other fields (detail,
    intensity, name, score changes) are kept as they are."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    event_id: SafeStr = Field(min_length=1, max_length=200)
    card: Literal["relationship", "quest"]
    kind: SafeStr = Field(min_length=1, max_length=30)
    turn_id: SafeStr | None = Field(None, max_length=64)
    seq: int | None = None
    applied_at: float | None = Field(None, description="unix seconds")


class CardSnapshots(BaseModel):
    """The cards of one (session, NPC) to archive (validated: a malformed card is refused)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    relationship: RelationshipCard | None = None
    quest: QuestCard | None = None


class CardArchivePayload(Payload):
    """Card snapshots of one (session, NPC) and the events applied to them, for the archive
    (``memory.archive.archive_cards``)."""

    session_id: SafeStr = Field(min_length=1, max_length=64)
    npc_entry_id: int
    turn_id: SafeStr | None = Field(None, max_length=64)
    cards: CardSnapshots
    events: list[AppliedCardEvent] = Field(default_factory=list, max_length=100)

    def target(self) -> str:
        return f"cards:{self.npc_entry_id}"


class EmbedPayload(Payload):
    """Embed one lore entry's composite document in a session (or its base lore)."""

    lore_entry_id: int
    session_id: SafeStr | None = Field(None, min_length=1, max_length=64)

    def target(self) -> str:
        return f"entry:{self.lore_entry_id}"


class EvidencePayload(Payload):
    """Embed the evidence of archived turns (``npc_memory.embed_evidence``): the archive
    sends one per batch of turns it wrote (``memory.evidence.embed_turns``)."""

    turn_ids: list[Annotated[str, StringConstraints(min_length=1, max_length=64)]] = Field(
        min_length=1, max_length=1000)

    def target(self) -> str:
        return f"evidence:{len(self.turn_ids)} turns"


class SimulationPayload(Payload):
    """One world tick for one session; ``tick_id`` makes the tick idempotent. ``max_npcs`` and
    ``max_tokens`` are this session's share of the tick's budget (defaults: the settings'
    per-session budget)."""

    session_id: SafeStr = Field(min_length=1, max_length=64)
    tick_id: SafeStr = Field(min_length=1, max_length=100)
    max_npcs: int | None = Field(None, ge=1, le=20)
    max_tokens: int | None = Field(None, ge=100, le=32000)

    def target(self) -> str:
        return f"tick:{self.tick_id}"


class TickPayload(Payload):
    """A world tick (the beat's, or an operator's): fan out to every active session, or only
    to those of world ``world_id``."""

    idle_after_s: float | None = Field(None, gt=0, description=(
        "sessions without a turn for this long are skipped (default SIMULATE_IDLE_AFTER_S)"))
    world_id: int | None = Field(None, description="only this world's sessions (default: all)")


class ReconcilePayload(Payload):
    """The beat's reconcile run: resend turns left in the outbox longer than ``older_than_s``
    seconds, flush dead letters parked during a database outage."""

    older_than_s: float = Field(30.0, ge=0)


class SummaryPayload(Payload):
    """Summarize a session's turns up to ``upto_seq`` (``npc_memory.summarize_session``)."""

    session_id: SafeStr = Field(min_length=1, max_length=64)
    upto_seq: int = Field(ge=1)

    def target(self) -> str:
        return f"summary:{self.upto_seq}"

    @property
    def idempotency_key(self) -> str:
        return f"summary:{self.session_id}:{self.upto_seq}"
