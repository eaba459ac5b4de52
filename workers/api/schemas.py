"""Request and response bodies of the dialogue server's own routes (the operator routes'
are in ``workers.ops_api``, the archetype routes' in ``workers.archetypes_api``).

Request bodies are ``memory.safe_input.RequestModel``: unknown fields are refused and text
fields refuse NUL and unpaired surrogates. :data:`SSE_EVENT` is the OpenAPI schema of one
event of a streamed turn.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from memory.safe_input import FiniteFloat, NonBlankStr, RequestModel, SafeStr


class SessionIn(RequestModel):
    """``POST /v1/sessions`` body."""

    world: SafeStr = Field(min_length=1, max_length=200,
                           description="world key, e.g. possibly-vampires")
    player_name: NonBlankStr = Field("player", min_length=1, max_length=200)


class SessionOut(BaseModel):
    session_id: str
    world: str
    world_id: int
    characters: list[dict]


class TurnIn(RequestModel):
    """``POST /v1/sessions/{id}/turns`` body: the NPC's entry key and what the player says
    (not blank); ``stream`` asks for the reply as Server-Sent Events (as
    ``Accept: text/event-stream`` does)."""

    npc_id: SafeStr = Field(min_length=1, max_length=300)
    player_text: NonBlankStr = Field(min_length=1, max_length=2000)
    stream: bool = Field(False, description="answer with Server-Sent Events as the model "
                                            "generates (token events, then done)")


class EventIn(RequestModel):
    """``POST /v1/sessions/{id}/events`` body: a turn generated elsewhere.

    ``kind`` says what it is: ``speech`` (default: ``speaker`` said ``text`` to the NPC
    ``npc_id``; ``npc_text`` the NPC's reply if it answered), ``npc_exchange`` (the same
    between two NPCs: ``speaker``, an NPC's entry key, to the listener ``npc_id``),
    ``narration`` (a game master's description) or ``game`` (a game event, "the bridge
    collapses"); the last two need no ``npc_id`` and their ``speaker``, if any, is never a
    character. ``witnesses``: entry keys of the characters present, who witness it besides
    the addressed NPC and a speaking NPC (``memory.witnesses``); ``location``: the entry key of
    the location where it happens, whose occupants in the world's relations witness it too.
    ``event_id`` makes the post
    idempotent within the session (use it when a client may retry); ``created_at`` is when it
    happened (unix seconds, default now). Texts must not be blank.
    """

    kind: Literal["speech", "narration", "game", "npc_exchange"] = Field(
        "speech", description="speech, narration, game or npc_exchange")
    npc_id: SafeStr | None = Field(None, min_length=1, max_length=300, validate_default=True,
                                   description=("the NPC's entry key: who was spoken to; "
                                                "optional for narration and game events"))
    text: NonBlankStr = Field(min_length=1, max_length=2000,
                              description="what was said to the NPC, narrated or happened")
    speaker: NonBlankStr | None = Field(None, min_length=1, max_length=200,
                                        validate_default=True, description=(
        "who said it: an NPC's entry key or name, or anyone; default the session's player "
        "(narration: the narrator, game: none)"))
    npc_text: NonBlankStr | None = Field(None, min_length=1, max_length=8000,
                                         description="the NPC's reply; absent if it did not answer")
    witnesses: list[SafeStr] = Field(default_factory=list, max_length=50, description=(
        "entry keys of the characters present who witness it"))
    location: SafeStr | None = Field(None, min_length=1, max_length=300, description=(
        "entry key of the location where it happens: the characters the world's relations "
        "place there witness it too"))
    event_id: NonBlankStr | None = Field(None, min_length=1, max_length=200,
                                         description="idempotency key of this event in the session")
    created_at: FiniteFloat | None = Field(None, ge=0, le=4102444800,
                                           description="when it happened, unix seconds")

    @field_validator("npc_id")
    @classmethod
    def _npc_for_speech(cls, v, info: ValidationInfo):
        kind = info.data.get("kind", "speech")
        if v is None and kind in ("speech", "npc_exchange"):
            raise ValueError(f"a {kind} event needs npc_id (who was spoken to)")
        return v

    @field_validator("speaker")
    @classmethod
    def _speaker_for_exchange(cls, v, info: ValidationInfo):
        if v is None and info.data.get("kind") == "npc_exchange":
            raise ValueError("an npc_exchange event needs speaker (the speaking NPC's key)")
        return v

    @field_validator("npc_text")
    @classmethod
    def _reply_needs_npc(cls, v, info: ValidationInfo):
        if v is not None and info.data.get("npc_id") is None:
            raise ValueError("npc_text needs npc_id (the NPC who answered)")
        return v


class EventOut(BaseModel):
    turn_id: str
    seq: int
    kind: str = Field("speech", description="speech, narration, game or npc_exchange")
    npc_id: str | None
    npc_name: str | None
    speaker: str = Field(description=(
        "who spoke: the body's speaker, else the player (speech), Narrator or Game"))
    text: str
    npc_text: str | None
    witnesses: list[int] = Field(default_factory=list, description=(
        "lore entry ids of the characters who witnessed it"))
    created_at: float
    duplicate: bool = Field(description="true when event_id had been recorded before")


class TurnOut(BaseModel):
    turn_id: str
    seq: int
    npc_id: str
    npc_name: str
    npc_text: str
    retrieved: list[str] = Field(description="titles of the documents in the prompt")
    evidence: list[str] = Field(default_factory=list, description=(
        "earlier utterances of the session in the prompt: \"[in-game time] Speaker: text\""))
    model: str
    latency_ms: float
    adapter: str | None = Field(None, description="the archetype's LoRA adapter, null: base")
    route: str = Field("", description="why this model (inference.lora.routing)")
    canon: dict | None = Field(None, description=(
        "the lore guard's check (workers.lore_guard, LORE_GUARD): {checked, contradiction, by, "
        "regenerated, resolved}; null when the guard is off"))


class TurnStreamDone(TurnOut):
    """The ``done`` event of a streamed turn: the non-streamed reply plus ``ttft_ms``."""

    ttft_ms: float = Field(description="ms from the model call's start to the first token")


class ReadyOut(BaseModel):
    """``/readyz`` body (200 and 503)."""

    ready: bool
    failed: list[str] = Field(description="names of the checks that failed")
    checks: dict[str, dict] = Field(description="each check: ok and its detail")


SSE_EVENT = {"type": "object", "required": ["event", "data"], "description": (
    "one Server-Sent Event of a streamed turn: `token` events, then `done` or `error`"),
    "properties": {
        "event": {"type": "string", "enum": ["token", "done", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json", "description": (
            "token: {text}; done: the reply (TurnStreamDone); error: {status, detail}")}}}
"""The OpenAPI schema of each event of a streamed turn (OpenAPI 3.1: a ``text/event-stream``
schema describes one event)."""
