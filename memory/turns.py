"""Recording a finished turn and starting its memory pipeline: the one path shared by the
dialogue server's turn endpoint (the reply is generated there) and its event endpoint (a turn
generated elsewhere, posted without generation).

Both resolve their target with :func:`resolve_target` and record with :func:`record_turn`:
the turn is appended to the session's recent turns in Redis, then ``npc_memory.analyze_turn``
(queue ``analysis``) and ``npc_memory.archive_turn`` (queue ``archive``) are sent with the
same :class:`~contract.payloads.TurnPayload`. Nothing here touches the database: this is the
dialogue hot path (Redis and the broker only).

``send`` is ``(task_name, kwargs, task_id) -> task_id``, the caller's way to put a task on the
broker (``contract.send.Send``). The turn is recorded together with an outbox entry and its
tasks get ids derived from the turn id (``contract.send``), so a turn whose tasks never
reached the broker is sent again by the reconcile task, and never run twice.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import redis

from contract.names import TaskName
from contract.payloads import TurnPayload
from contract.send import TURN_TASKS as PIPELINE_TASKS
from contract.send import Send, request_simulation, send_turn_tasks
from memory import nearline
from memory import keys as rkeys
from settings import get_settings

SUMMARY_TASK = TaskName.SUMMARIZE_SESSION

Publish = Callable[[dict], None]
"""``(turn kwargs) -> None``: how :func:`record_turn` hands a recorded turn's pipeline tasks
over: the dialogue server's outbox relay (``workers.relay.TurnRelay.submit``), or by default
an inline ``send_turn_tasks``."""


class UnknownSession(LookupError):
    """The session is not open in the nearline tier."""


class UnknownNpc(LookupError):
    """No entry with that key in the session's world or among the session's creations."""


class NotACharacter(ValueError):
    """The target entry exists but is a location or an item."""


class NotALocation(ValueError):
    """An event's ``location`` names an entry that is a character or an item."""


@dataclass(frozen=True)
class Target:
    """Who a turn is addressed to: the session (``world_id``, ``player_name``) and the NPC
    (``npc_entry_id`` and its cached entry ``{id, key, title, content, entity_type}``; both
    None for a narration or game event addressed to no NPC, :func:`resolve_session`)."""

    session_id: str
    world_id: int
    player_name: str
    npc_entry_id: int | None
    npc: dict | None
    game_minutes: int = 0
    every_turns: int = 0


@dataclass(frozen=True)
class Recorded:
    """A recorded turn; ``duplicate`` is True when its ``event_id`` had been recorded before
    (``turn`` is then the earlier turn and nothing was written or sent)."""

    turn: TurnPayload
    duplicate: bool = False


def resolve_target(r: redis.Redis, session_id: str, npc_key: str) -> Target:
    """The session and the character ``npc_key`` it addresses, from Redis only.

    Raises:
        UnknownSession: the session is not open.
        UnknownNpc: no entry ``npc_key`` in the session's world or its creations.
        NotACharacter: the entry is a location or an item.
    """
    sess = nearline.get_session(r, session_id)
    if sess is None:
        raise UnknownSession(f"unknown session {session_id!r}")
    world_id = sess["world_id"]
    entry_id = nearline.resolve_key(r, world_id, session_id, npc_key)
    npc = nearline.get_entry(r, world_id, entry_id) if entry_id is not None else None
    if npc is None:
        raise UnknownNpc(f"unknown NPC {npc_key!r} in this session's world")
    if npc["entity_type"] != "character":
        raise NotACharacter(f"{npc_key!r} is a {npc['entity_type']}, not a character")
    return Target(session_id=session_id, world_id=world_id, player_name=sess["player_name"],
                  npc_entry_id=entry_id, npc=npc, game_minutes=sess["game_minutes"],
                  every_turns=sess["every_turns"])


def resolve_session(r: redis.Redis, session_id: str) -> Target:
    """The session alone, as the target of an event addressed to no NPC (narration, a game
    event), from Redis only.

    Raises:
        UnknownSession: the session is not open.
    """
    sess = nearline.get_session(r, session_id)
    if sess is None:
        raise UnknownSession(f"unknown session {session_id!r}")
    return Target(session_id=session_id, world_id=sess["world_id"],
                  player_name=sess["player_name"], npc_entry_id=None, npc=None,
                  game_minutes=sess["game_minutes"], every_turns=sess["every_turns"])


def resolve_witnesses(r: redis.Redis, target: Target, keys: list[str] | None,
                      speaker: str | None = None, location: str | None = None) -> list[int]:
    """The entry ids of the characters who witness a turn: the addressed NPC, the speaker
    when it is a character's entry key, ``keys`` (entry keys of the characters present) and,
    with ``location`` (a location's entry key), the characters the world's relations place
    there (``memory.nearline.location_occupants``), from Redis only; sorted, without repeats.
    A speaker that is no entry key (a name, the player) adds nothing.

    Raises:
        UnknownNpc: a key of ``keys``, or ``location``, is no entry of the session's world or
            creations.
        NotACharacter: a key of ``keys`` names a location or an item.
        NotALocation: ``location`` names a character or an item.
    """
    out = set() if target.npc_entry_id is None else {target.npc_entry_id}
    for key in keys or []:
        entry_id, doc = _entry(r, target, key)
        if doc is None:
            raise UnknownNpc(f"unknown witness {key!r} in this session's world")
        if doc["entity_type"] != "character":
            raise NotACharacter(f"witness {key!r} is a {doc['entity_type']}, not a character")
        out.add(entry_id)
    if speaker:
        entry_id, doc = _entry(r, target, speaker)
        if doc is not None and doc["entity_type"] == "character":
            out.add(entry_id)
    if location:
        entry_id, doc = _entry(r, target, location)
        if doc is None:
            raise UnknownNpc(f"unknown location {location!r} in this session's world")
        if doc["entity_type"] != "location":
            raise NotALocation(f"location {location!r} is a {doc['entity_type']}, "
                               "not a location")
        out.update(int(m) for m in r.smembers(
            rkeys.occupants(target.world_id, entry_id)))
    return sorted(out)


def _entry(r: redis.Redis, target: Target, key: str) -> tuple[int | None, dict | None]:
    """``(entry id, cached entry)`` of an entry key in the session's world or creations;
    ``(None, None)`` when there is none."""
    entry_id = nearline.resolve_key(r, target.world_id, target.session_id, key)
    doc = nearline.get_entry(r, target.world_id, entry_id) if entry_id is not None else None
    return (entry_id, doc) if doc is not None else (None, None)


def event_turn_id(session_id: str, event_id: str) -> str:
    """The turn id of an event: 32 hex chars of SHA-256 over session and event id, so a
    re-posted event names the same turn (and the pipeline's idempotency keys hold). An event
    whose turn a rollback undid (``memory.timeline``) and that is posted again gets the first
    id of ``event_turn_id(session_id, f"{event_id}\\n{n}")``, n = 1, 2, ... not undone
    (``record_turn``)."""
    return hashlib.sha256(f"{session_id}\n{event_id}".encode()).hexdigest()[:32]


def turn_kwargs(turn: TurnPayload) -> dict:
    """The task kwargs of a turn (JSON-ready; ``speaker`` left out when None)."""
    return turn.model_dump(mode="json", exclude_none=True)


def record_turn(
    r: redis.Redis,
    send: Send,
    target: Target,
    *,
    player_text: str,
    npc_text: str,
    speaker: str | None = None,
    latency_ms: float = 0.0,
    created_at: float | None = None,
    event_id: str | None = None,
    publish: Publish | None = None,
    kind: str | None = None,
    witnesses: list[int] | None = None,
    source: str | None = None,
) -> Recorded:
    """Record one finished turn in the nearline tier and send it to the pipeline.

    Allocates the session's next ``seq``, appends the turn to its recent turns, then sends
    :data:`PIPELINE_TASKS` with the turn as kwargs; every ``every_turns`` turns of the session
    (the world's setting) it also requests a world tick for the session (tick id
    ``turn-{seq}``), unless one is already queued or running, and every
    ``SUMMARIZE_EVERY_TURNS`` turns it sends ``npc_memory.summarize_session`` (task id
    ``npc_memory.summarize_session:{session_id}:{seq}``).

    Args:
        player_text: what was said to the NPC (1-4000 chars).
        npc_text: the NPC's reply, "" when it did not answer (<= 8000 chars).
        speaker: who said ``player_text``; None for the session's player.
        latency_ms: generation time (0 for events).
        created_at: when the turn happened, unix seconds; default now.
        event_id: the caller's idempotency key, kept with the turn (its evidence items carry
            it). The turn id is derived from it and the first recording wins: posting the
            same ``event_id`` to the same session again returns the earlier turn with
            ``duplicate=True`` and writes/sends nothing.
        publish: hands the turn's pipeline tasks over once the turn is recorded; default
            sends them inline (``send_turn_tasks`` over ``send``). The dialogue server passes
            its outbox relay, which sends them off the request path.
        kind: what the turn is (``contract.payloads.TurnKind``); None: speech.
        witnesses: entry ids of the characters who witnessed it (:func:`resolve_witnesses`);
            the addressed NPC is always one of them.
        source: provenance of a turn the system made (a ``told`` turn of the simulation).

    Raises:
        pydantic.ValidationError: a field out of :class:`TurnPayload`'s bounds.
        redis.exceptions.RedisError, kombu.exceptions.OperationalError: Redis or the broker
            failed. A failed event is forgotten again (best effort), so posting it again
            records it; its turn may then appear twice in the recent turns, with one id.
    """
    turn_id = event_turn_id(target.session_id, event_id) if event_id else uuid.uuid4().hex
    if event_id:
        pipe = r.pipeline(transaction=False)
        pipe.hget(rkeys.events(target.session_id), event_id)
        pipe.sismember(rkeys.undone(target.session_id), turn_id)
        earlier, undone = pipe.execute()
        if earlier is not None:
            return Recorded(TurnPayload.model_validate_json(earlier), duplicate=True)
        n = 0
        while undone:  # a rollback undid the event's turn: posted again, it is a new turn
            n += 1
            turn_id = event_turn_id(target.session_id, f"{event_id}\n{n}")
            undone = r.sismember(rkeys.undone(target.session_id), turn_id)
    turn = TurnPayload(
        turn_id=turn_id, session_id=target.session_id, world_id=target.world_id,
        seq=nearline.next_turn_seq(r, target.session_id), npc_entry_id=target.npc_entry_id,
        player_text=player_text, npc_text=npc_text, speaker=speaker, latency_ms=latency_ms,
        created_at=time.time() if created_at is None else created_at,
        game_minutes=target.game_minutes, event_id=event_id,
        kind=None if kind in (None, "speech") else kind, source=source,
        witnesses=sorted(set(witnesses or []) | ({target.npc_entry_id}
                                                  if target.npc_entry_id is not None else set())),
    )
    kwargs = turn_kwargs(turn)
    if event_id and not r.hsetnx(rkeys.events(target.session_id), event_id, json.dumps(kwargs)):
        earlier = r.hget(rkeys.events(target.session_id), event_id)  # a concurrent twin won
        return Recorded(TurnPayload.model_validate_json(earlier), duplicate=True)
    try:
        nearline.record_turn(r, target.session_id, kwargs)
    except Exception:
        if event_id:
            try:
                r.hdel(rkeys.events(target.session_id), event_id)
            except redis.RedisError:
                pass
        raise
    # once recorded, the turn is in the outbox: if sending fails here the reconcile task
    # sends it later, and posting the event again answers "duplicate"
    if publish is None:
        send_turn_tasks(send, r, kwargs)
    else:
        publish(kwargs)
    if target.every_turns and turn.seq % target.every_turns == 0:  # the every-N-turns tick
        request_simulation(send, r, target.session_id, f"turn-{turn.seq}")
    every = get_settings().summarize_every_turns
    if every and turn.seq % every == 0:  # the rolling session summary (memory.summaries)
        send(SUMMARY_TASK, {"session_id": target.session_id, "upto_seq": turn.seq},
             f"{SUMMARY_TASK}:{target.session_id}:{turn.seq}")
    return Recorded(turn)


__all__ = ["NotACharacter", "NotALocation", "PIPELINE_TASKS", "Recorded", "Send", "Target", "UnknownNpc",
           "UnknownSession", "event_turn_id", "record_turn", "resolve_session", "resolve_target",
           "resolve_witnesses", "turn_kwargs"]
