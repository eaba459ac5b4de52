"""Operator actions, one function each, shared by the command line (``workers.cli``) and the
HTTP routes (``workers.ops_api``, ``workers.web``): the broker's Redis client and queue
status, a world tick for one session or for every active session now, re-analysing a
recorded turn, re-sending a dead letter or a ledger task, and rolling a note back with its
publication (nearline tier, re-embedding).

They bind ``memory.ops`` to the task names, payloads and queues of ``contract``. ``send`` is
``contract.send.Send``: ``(task_name, kwargs, task_id=None, **options) -> task_id`` over the
caller's Celery app (``contract.send.celery_sender``). Errors
are ``memory.ops``' (``NotFound``, ``TaskBusy``, ``NotReplayable``), ``NoteConflict``, and
:class:`NotPublished`; each caller maps them to its own output (exit status, HTTP status).
"""

from __future__ import annotations

import uuid

from kombu.exceptions import OperationalError as BrokerError
from redis.exceptions import RedisError
from sqlalchemy import select
from sqlalchemy.orm import Session

from contract.names import TaskName
from contract.payloads import EmbedPayload, TickPayload, TurnPayload
from contract.registry import TASKS
from contract.send import TURN_TASKS, Send, request_simulation, simulation_task_id, turn_task_id
from memory import nearline, ops
from models import World
from settings import get_settings
from workers.queues import queue_status

ANALYZE_TASK = TaskName.ANALYZE_TURN
WORLD_TICK_TASK = TaskName.WORLD_TICK
EMBED_TASK = TaskName.EMBED

TASK_ROUTES: dict[str, str] = {name.value: spec.queue.value for name, spec in TASKS.items()}
"""Task name -> queue name: the tasks a dead letter or ledger row may be re-sent as."""

BROKER_REDIS_SCHEMES = ("redis://", "rediss://", "redis+socket://", "unix://")
"""Broker URL schemes whose queues :func:`broker_redis` can read."""


def broker_redis(url: str | None = None):
    """A Redis client of the broker at ``url`` (default ``effective_broker_url``), or None
    when the broker is not Redis (its queue lengths cannot be read then)."""
    url = url or get_settings().effective_broker_url
    if url.startswith(BROKER_REDIS_SCHEMES):
        return nearline.get_redis(url)
    return None


def queues(app) -> dict:
    """Messages waiting per queue and the workers of ``app`` (a Celery app) that answer
    within 1 s, with their queues: ``workers.queues.queue_status``'s
    ``{"queues", "workers", "errors"}``. Never raises."""
    return queue_status(broker_redis(),
                        lambda: app.control.inspect(timeout=1.0).active_queues())


def tick_session(r, send: Send, session_id: str) -> dict:
    """Send one session's world tick now (``npc_memory.simulate_world``), even if one is
    pending, under tick id ``manual-{32 hex}``.

    Returns:
        ``{"tick_id", "task_id"}``: the task whose ledger result is the tick's trace.

    Raises:
        memory.ops.NotFound: the session is not in the nearline tier.
    """
    if nearline.get_session(r, session_id) is None:
        raise ops.NotFound(f"unknown session {session_id!r}")
    tick_id = f"manual-{uuid.uuid4().hex}"
    request_simulation(send, r, session_id, tick_id, force=True)
    return {"tick_id": tick_id, "task_id": simulation_task_id(tick_id, session_id)}


def reanalyze_turn(session: Session, r, session_id: str, turn_id: str, send: Send) -> dict:
    """Send ``npc_memory.analyze_turn`` again for a recorded turn (``memory.ops.find_turn``,
    the ledger searched for the turn's own tasks).

    The task id is new (``npc_memory.analyze_turn:{turn_id}:re-{12 hex}``): the turn's own id
    ``npc_memory.analyze_turn:{turn_id}`` is skipped by ``tasks.base`` once it succeeded, so
    re-sending it would run nothing. The analysis model is asked again, but the effects keep
    the turn's idempotency keys: note updates ``{turn_id}:u{i}``, creations ``{turn_id}:c{i}``
    and card events ``{turn_id}:r{i}``/``{turn_id}:q{i}`` that the first analysis applied are
    not applied again; only positions it did not produce (it failed, was dead-lettered, or
    produced fewer) take effect now.

    Returns:
        ``{"session_id", "turn_id", "source": "redis"|"ledger"|"archive", "task_name",
        "task_id"}``.

    Raises:
        memory.ops.NotFound: unknown session or turn.
        pydantic.ValidationError: the stored turn does not fit ``TurnPayload`` any more.
    """
    doc, source = ops.find_turn(session, r, session_id, turn_id, ledger_task_ids=[
        turn_task_id(name, turn_id) for name in TURN_TASKS])
    kwargs = TurnPayload.model_validate(doc).model_dump(mode="json", exclude_none=True)
    task_id = f"{turn_task_id(ANALYZE_TASK, turn_id)}:re-{uuid.uuid4().hex[:12]}"
    send(ANALYZE_TASK, kwargs, task_id)
    return {"session_id": session_id, "turn_id": turn_id, "source": source,
            "task_name": ANALYZE_TASK, "task_id": task_id}


def request_world_tick(session: Session, send: Send, *, world_key: str | None = None,
                       idle_after_s: float | None = None) -> dict:
    """Send ``npc_memory.world_tick`` now: every session active within ``idle_after_s``
    seconds (default ``SIMULATE_IDLE_AFTER_S``), or only those of world ``world_key``, gets
    one ``simulate_world`` within the tick's budget (sessions whose simulation is still queued
    or running are skipped, as on the beat's ticks). The tick id is the task id
    (``manual-world-{32 hex}``); the tick's counts are its ledger result.

    Returns:
        ``{"world": key or None, "world_id", "task_name", "task_id", "tick_id"}``.

    Raises:
        memory.ops.NotFound: unknown world key.
    """
    world_id = None
    if world_key is not None:
        world = session.scalar(select(World).where(World.key == world_key))
        if world is None:
            raise ops.NotFound(f"unknown world {world_key!r}")
        world_id = world.id
    payload = TickPayload(idle_after_s=idle_after_s, world_id=world_id)
    task_id = f"manual-world-{uuid.uuid4().hex}"
    send(WORLD_TICK_TASK, payload.model_dump(mode="json", exclude_none=True), task_id)
    return {"world": world_key, "world_id": world_id, "task_name": WORLD_TICK_TASK,
            "task_id": task_id, "tick_id": task_id}


def replay_dead_letter(session: Session, dead_letter_id: int, send: Send) -> dict:
    """``memory.ops.replay_dead_letter`` over this project's queues (same result and errors);
    the caller commits."""
    return ops.replay_dead_letter(session, dead_letter_id, send, TASK_ROUTES)


def retry_task(session: Session, task_id: str, send: Send, *, force: bool = False) -> dict:
    """``memory.ops.retry_task`` over this project's queues (same result and errors)."""
    return ops.retry_task(session, task_id, send, TASK_ROUTES, force=force)


class NotPublished(Exception):
    """The note was rolled back in the database, but publishing it (nearline tier, embed
    task) failed: ``result`` is the rollback's result, ``cause`` the broker or Redis error.
    Repeating the same rollback writes nothing and publishes again."""

    def __init__(self, result: dict, cause: Exception) -> None:
        super().__init__(f"note rolled back (now version {result['version']}) but not "
                         f"published: {cause}")
        self.result = result
        self.cause = cause


def rollback_note(session: Session, session_id: str, lore_entry_key: str, version: int,
                  send: Send) -> dict:
    """Roll a session note back to revision ``version`` (``memory.ops.rollback_note``), then
    publish the note's text to the nearline tier and send ``npc_memory.embed`` for it.

    A repeated identical rollback writes nothing (``status: unchanged``) but publishes and
    sends the embedding again (harmless: unchanged documents are skipped). Nothing is
    published when the session never had a note. The embed task goes through ``send``, not
    ``tasks.base.enqueue``: Celery's current app is per thread (in the dialogue server's
    handler threads it is Celery's fallback default app), so no ``queued`` ledger row is
    written for it; the worker records its run.

    Returns:
        ``memory.ops.rollback_note``'s result, plus ``"embed_task_id"`` when published.

    Raises:
        ValueError, memory.ops.NotFound, memory.notes.NoteConflict: as
        ``memory.ops.rollback_note`` (nothing written).
        NotPublished: written, but Redis or the broker failed while publishing.
    """
    res = ops.rollback_note(session, session_id, lore_entry_key, version)
    if res["note_id"] is None:
        return res
    try:
        nearline.set_note(nearline.get_redis(), session_id, res["lore_entry_id"],
                          res["content"], turn_ids=res["turn_ids"])
        payload = EmbedPayload(lore_entry_id=res["lore_entry_id"], session_id=session_id)
        res["embed_task_id"] = send(EMBED_TASK, payload.model_dump(mode="json"))
    except (BrokerError, RedisError, ConnectionError) as exc:
        raise NotPublished(res, exc) from exc
    return res
