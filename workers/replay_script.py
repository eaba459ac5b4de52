"""Session scripts replayed against a running dialogue server (``npc-memory replay-script``).

A script is a JSON or YAML file (format ``npc-memory.replay-script``, version 1)::

    format: npc-memory.replay-script   # optional
    version: 1                         # optional
    world: saltmere                    # the world key to open a session on
    player_name: Ann                   # optional, default "replay"
    steps:
      - npc: marta_vell                # a player turn: the server's model answers
        text: "Any rooms free tonight?"
      - kind: event                    # an event: a turn generated elsewhere, no model call
        npc: wenna_pike
        speaker: dorin_haske           # optional: who spoke (default the player)
        text: "Wenna, the boat is late again."
        npc_text: "Then the tide will wait for no one."   # optional: the NPC's answer
        event_id: late-boat            # optional, default "<script name>:<step index>"
        created_at: 1700000000         # optional, unix seconds

A step without ``kind`` is a player turn (``POST /v1/sessions/{id}/turns``); ``kind: event``
posts ``POST /v1/sessions/{id}/events``. Only events take ``speaker``, ``npc_text``,
``event_id`` and ``created_at``. The older session format ``npc-memory.session``
(``world_key`` and ``turns: [{npc_key, player_text}]``, :func:`memory.importers.spec.
load_session_script`, e.g. the bundled example session) is read as a script of player turns.

Replaying again into the same session records no event twice (their ids), but player turns
are new turns each time (the model answers again). The replay goes through
``npc_memory_client.NpcMemoryClient``, as a game backend would, and events through
:mod:`workers.replay_events`'s :func:`~workers.replay_events.replay_events`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from memory.importers.spec import YAML_SUFFIXES, load_session_script, read_data_file
from workers.replay_events import Event, ReplayError, replay_events

SCRIPT_FORMAT = "npc-memory.replay-script"
EVENT_ONLY = ("speaker", "npc_text", "event_id", "created_at")


class ScriptStep(BaseModel):
    """One step: a player turn (``kind`` ``turn``) or an event (``kind`` ``event``)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["turn", "event"] = "turn"
    npc: str = Field(min_length=1, max_length=200, description="the NPC's entry key")
    text: str = Field(min_length=1, max_length=4000, description="what is said to the NPC")
    speaker: str | None = Field(None, min_length=1, max_length=200)
    npc_text: str | None = Field(None, max_length=8000)
    event_id: str | None = Field(None, min_length=1, max_length=200)
    created_at: float | None = None

    @model_validator(mode="after")
    def _event_fields(self) -> ScriptStep:
        if self.kind == "turn":
            given = [f for f in EVENT_ONLY if getattr(self, f) is not None]
            if given:
                raise ValueError(f"{', '.join(given)}: only steps with kind 'event' take these")
        return self


class ReplayScript(BaseModel):
    """A whole script: the world, the player's name and the steps, in order."""

    model_config = ConfigDict(extra="forbid")
    format: Literal["npc-memory.replay-script"] = SCRIPT_FORMAT
    version: Literal[1] = 1
    world: str = Field(min_length=1, max_length=200)
    player_name: str = Field("replay", min_length=1, max_length=200)
    steps: list[ScriptStep] = Field(min_length=1)


def load_replay_script(path: str | Path) -> ReplayScript:
    """Read a replay script (``.yaml``/``.yml`` as YAML, anything else as JSON), or an
    ``npc-memory.session`` script as player turns.

    Raises:
        ValueError: unreadable or malformed file; the message names the file and the field.
    """
    path = Path(path)
    try:
        data = read_data_file(path)  # ValueError naming the file: not UTF-8, JSON or YAML
    except OSError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if isinstance(data, dict) and ("world_key" in data or data.get("format") == "npc-memory.session"):
        if path.suffix.lower() in YAML_SUFFIXES:
            raise ValueError(f"{path}: an npc-memory.session script must be JSON")
        session = load_session_script(path)  # ValueError naming the file
        return ReplayScript(world=session.world_key, steps=[
            ScriptStep(npc=t.npc_key, text=t.player_text) for t in session.turns])
    try:
        return ReplayScript.model_validate(data)
    except ValidationError as exc:
        raise ValueError(f"{path}: {exc}") from exc


@dataclass
class StepResult:
    """What one step did: ``kind``, the NPC, the turn id, the NPC's reply (a turn's generated
    text, an event's ``npc_text``) and whether an event was a duplicate."""

    index: int
    kind: str
    npc_id: str
    npc_name: str
    turn_id: str
    reply: str | None
    duplicate: bool = False

    def as_dict(self) -> dict:
        return self.__dict__.copy()


@dataclass
class ScriptResult:
    """A replay's outcome: the session, counts and each step's result."""

    session_id: str
    world: str
    turns: int = 0
    events: int = 0
    duplicates: int = 0
    steps: list[StepResult] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"session_id": self.session_id, "world": self.world, "turns": self.turns,
                "events": self.events, "duplicates": self.duplicates,
                "steps": [s.as_dict() for s in self.steps]}


def _client_poster(client, session_id: str):
    """A :data:`workers.replay_events.Post` over ``NpcMemoryClient.post_event`` (its ``ApiError``
    becomes :class:`~workers.replay_events.ReplayError`)."""
    from npc_memory_client import ApiError

    def post(body: dict) -> tuple[int, dict]:
        try:
            ev = client.post_event(session_id, body["npc_id"], body["text"],
                                   speaker=body.get("speaker"), npc_text=body.get("npc_text"),
                                   event_id=body["event_id"], created_at=body.get("created_at"))
        except ApiError as exc:
            raise ReplayError(f"event {body['event_id']!r}: HTTP {exc.status}: {exc.detail}",
                              exc.status) from exc
        return (200 if ev.duplicate else 201), ev.model_dump()

    return post


def run_script(client, script: ReplayScript, *, name: str = "script",
               session_id: str | None = None, world: str | None = None,
               on_step: Callable[[StepResult], None] | None = None) -> ScriptResult:
    """Play ``script`` through ``client`` (an ``npc_memory_client.NpcMemoryClient``), step by
    step; ``on_step(result)`` after each (progress and printing).

    Args:
        name: the default event id prefix (``"{name}:{step index}"``): the script file's
            name, so a script replayed again into the same session records no event twice.
        session_id: replay into this session; default open a new one on the world.
        world: the world to open the session on instead of the script's.

    Raises:
        ReplayError: the server refused a step (the message names the step and the HTTP
            status); the steps before it stay recorded.
        httpx.HTTPError: the server could not be reached.
    """
    from npc_memory_client import ApiError

    world = world or script.world
    try:
        if session_id is None:
            session_id = client.open_session(world, player_name=script.player_name).session_id
    except ApiError as exc:
        raise ReplayError(f"opening a session on {world!r}: HTTP {exc.status}: {exc.detail}",
                          exc.status) from exc
    result = ScriptResult(session_id=session_id, world=world)
    post = _client_poster(client, session_id)

    def done(step: StepResult) -> None:
        result.steps.append(step)
        if on_step is not None:
            on_step(step)

    for i, step in enumerate(script.steps):
        if step.kind == "turn":
            try:
                reply = client.turn(session_id, step.npc, step.text)
            except ApiError as exc:
                raise ReplayError(f"step {i} (turn to {step.npc!r}): HTTP {exc.status}: "
                                  f"{exc.detail}", exc.status) from exc
            result.turns += 1
            done(StepResult(i, "turn", reply.npc_id, reply.npc_name, reply.turn_id,
                            reply.npc_text))
            continue
        event = Event(npc_id=step.npc, speaker=step.speaker, text=step.text,
                      npc_text=step.npc_text, event_id=step.event_id or f"{name}:{i}",
                      created_at=step.created_at)
        try:
            replay_events(post, [event], on_event=lambda e, out, i=i: done(StepResult(
                i, "event", out["npc_id"], out["npc_name"], out["turn_id"], out.get("npc_text"),
                duplicate=bool(out.get("duplicate")))))
        except ReplayError as exc:
            raise ReplayError(f"step {i}: {exc}", exc.status) from exc
        if result.steps[-1].duplicate:
            result.duplicates += 1
        else:
            result.events += 1
    return result


__all__ = ["ReplayScript", "ScriptResult", "ScriptStep", "StepResult", "load_replay_script",
           "run_script"]
