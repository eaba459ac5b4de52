"""The thin base Task and the ``npc_task`` decorator every task of the system uses.

What it adds to a plain Celery task:

- a stable explicit name that must be declared in ``contract.registry.TASKS`` (registration
  fails otherwise), so routes, queues and payload models have one source of truth;
- payload validation with pydantic (the name's model in ``contract.registry.TASKS``): a payload that fails validation is recorded and
  dead-lettered, never retried and never dropped;
- the task ledger (``task_records``): one row per task id with status, attempts, error,
  timings and model tokens;
- retries with exponential backoff and jitter for model errors (``max_retries``); a database
  outage has a budget of its own (``DB_OUTAGE_MAX_RETRIES``, backoff capped at 60 s, about 3 h)
  so that stopping PostgreSQL for a while delays the archive instead of dead-lettering it; a
  task that exhausts its retries lands in the dead-letter store (parked in Redis while the
  database is down, written later by ``flush_parked_dead_letters``);
- a task whose turn a rollback of its session undid (``memory.fencing``), or that a rollback
  cancelled while it was queued, does not run; its ledger status is ``cancelled``;
- a task id that already succeeded is not run again (the dialogue server derives its task ids
  from the turn id, so a turn's tasks sent twice run once);
- delivery counting: every start of a task id is counted in Redis; a message delivered more
  than ``MAX_REDELIVERIES`` times beyond its retries (a poison message that keeps killing its
  worker, or a redelivery loop) is dead-lettered instead of run again.

The wrapped function is a plain ``fn(payload, ctx) -> dict`` that tests can call directly;
``ctx.send`` sends follow-up tasks through the task's own app.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import kombu.exceptions
import redis.exceptions
from celery import Celery, Task, shared_task
from celery.exceptions import Reject
from celery.utils.time import get_exponential_backoff_interval
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from contract.names import TaskName
from contract.payloads import Payload
from contract.registry import TASKS, TaskSpec
from contract.send import Send, celery_sender
from inference.llm import InvalidModelOutput, ModelError
from memory.cards import CardConflict
from memory import fencing
from memory import keys as rkeys
from memory.db import autocommit, dialect_insert, session_scope
from memory.notes import NoteConflict
from memory.safe_input import clean_text, storable
from models import DeadLetter, TaskRecord
from models.base import utcnow
from settings import get_settings

log = logging.getLogger(__name__)

MAX_REDELIVERIES = 3
REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError,
              kombu.exceptions.OperationalError)
"""What a task sees while Redis (broker, nearline tier) is unreachable."""
"""Redeliveries tolerated beyond the retries (worker lost, visibility timeout)."""
DB_OUTAGE_MAX_RETRIES = get_settings().db_outage_max_retries
DB_OUTAGE_MAX_BACKOFF_S = 60
DELIVERY_TTL_S = 7 * 24 * 3600


def count_delivery(task_id: str) -> int:
    """Count one more delivery of ``task_id`` (Redis, kept 7 days); returns the count."""
    from memory.nearline import get_redis

    r = get_redis()
    key = rkeys.deliveries(task_id)
    pipe = r.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, DELIVERY_TTL_S)
    return int(pipe.execute()[0])


@dataclass(frozen=True)
class TaskContext:
    """What a task function knows about its own execution."""

    task_id: str
    name: str
    retries: int
    app: Celery
    """The app the task runs on (its ``self.app``)."""

    @property
    def send(self) -> Send:
        """Send a follow-up task through the task's own app (``contract.send.Send``)."""
        return celery_sender(self.app)


TASK_ID_MAX_CHARS = 200
"""The longest task id the ledger keeps (``task_records.task_id``); a longer one is
dead-lettered as invalid (under its first 200 characters)."""


def storable_id(task_id: str) -> str:
    """``task_id`` as the ledger and the dead-letter store keep it: NUL and unpaired
    surrogates replaced, cut to :data:`TASK_ID_MAX_CHARS`."""
    return clean_text(str(task_id))[:TASK_ID_MAX_CHARS]


def _storable_values(values: dict) -> dict:
    """Ledger column values made storable: JSON columns through ``storable`` (no NaN, no
    NUL), text columns without NUL."""
    out = dict(values)
    for key in ("payload", "result"):
        if out.get(key) is not None:
            out[key] = storable(out[key])
    if isinstance(out.get("error"), str):
        out["error"] = clean_text(out["error"])[:4000]
    for key in ("session_id", "idempotency_key", "target"):
        if isinstance(out.get(key), str):
            out[key] = clean_text(out[key])
    return out


def _ledger(task_id: str, name: str, **values) -> None:
    """Upsert the ledger row of ``task_id`` (safe when the same id runs twice at once).
    Payload and result are stored JSON-safe (``memory.safe_input.storable``)."""
    task_id = storable_id(task_id)
    values = _storable_values(values)
    # one statement, no transaction around it; asynchronous commit unless LEDGER_ASYNC_COMMIT
    # is off. The ledger is bookkeeping: a database-server crash may lose its last writes (a
    # row then shows its previous status); the tasks' own effects commit synchronously and
    # are idempotent, so a task run again after such a loss applies nothing twice.
    with autocommit(async_commit=get_settings().ledger_async_commit) as conn:
        ins = dialect_insert(conn, TaskRecord).values(task_id=task_id, task_name=name, **values)
        conn.execute(ins.on_conflict_do_update(index_elements=["task_id"],
                                               set_=values or {"task_name": name}))


def dead_letter(task_id: str, name: str, queue: str, payload: dict, error: str) -> None:
    """Store a task in the dead-letter store and mark its ledger row ``dead``.

    While the database is unreachable the dead letter is parked in Redis (list
    ``dead_letters:parked``) instead, never dropped; ``flush_parked_dead_letters`` writes it
    once the database is back.

    Any payload can be dead-lettered: it is stored JSON-safe (``memory.safe_input.storable``:
    NaN and infinities as strings, NUL removed, a ``repr`` if it still does not serialise),
    the task id and the error without NUL and bounded. If the database still refuses the row
    (not an outage), the payload is replaced by its ``repr`` and the row written again.
    """
    task_id, error = storable_id(task_id), clean_text(str(error))[:4000]
    payload = storable(payload)
    try:
        _store_safely(task_id, name, queue, payload, error)
    except OperationalError as exc:
        from memory.nearline import get_redis

        get_redis().rpush(rkeys.DEAD_LETTERS_PARKED, json.dumps(
            {"task_id": task_id, "name": name, "queue": queue, "payload": payload,
             "error": error, "parked_at": time.time()}))
        log.warning("database down (%s): dead letter %s %s parked in redis", exc, name, task_id)
        return
    log.warning("dead-lettered %s %s: %s", name, task_id, error[:200])


def _store_safely(task_id: str, name: str, queue: str, payload: dict, error: str) -> None:
    """:func:`_store_dead_letter`; if the database refuses the row for any reason but an
    outage, store it again with the payload's ``repr``.

    Raises:
        OperationalError: the database is unreachable.
    """
    try:
        _store_dead_letter(task_id, name, queue, payload, error)
    except OperationalError:
        raise
    except Exception as exc:  # a value the database refuses: keep the repr instead
        log.warning("dead letter %s %s refused (%s): storing its payload as repr", name,
                    task_id, type(exc).__name__)
        _store_dead_letter(task_id, name, queue, storable(repr(payload)),
                           f"{error}; payload stored as repr: {type(exc).__name__}")


def _store_dead_letter(task_id: str, name: str, queue: str, payload: dict, error: str) -> None:
    payload, error = storable(payload), clean_text(error)[:4000]
    with session_scope() as s:
        s.add(DeadLetter(task_id=storable_id(task_id), task_name=name, queue=queue,
                         payload=payload, error=error))
    _ledger(task_id, name, queue=queue, payload=payload, status="dead",
            error=error, finished_at=utcnow())


def flush_parked_dead_letters(limit: int = 1000) -> int:
    """Write dead letters parked in Redis during a database outage into the dead-letter store;
    returns how many were written. Stops (leaving the rest parked) if the database is still
    down.
    """
    from memory.nearline import get_redis

    r = get_redis()
    written = 0
    for _ in range(limit):
        raw = r.lpop(rkeys.DEAD_LETTERS_PARKED)
        if raw is None:
            break
        d = json.loads(raw)
        try:
            _store_safely(d["task_id"], d["name"], d["queue"], d["payload"], d["error"])
        except OperationalError:
            r.lpush(rkeys.DEAD_LETTERS_PARKED, raw)
            break
        written += 1
    return written


def _status(task_id: str) -> str | None:
    with session_scope() as s:
        return s.scalar(select(TaskRecord.status).where(TaskRecord.task_id == task_id))


class TaskCancelled(Exception):
    """The task's turn was undone by a rollback of its session (``memory.fencing``): it
    must not apply. ``npc_task`` records the task as ``cancelled`` with this message."""


class NpcTask(Task):
    """Base class: ledger bookkeeping on retry/failure, dead-lettering on final failure."""

    abstract = True
    queue_name = ""

    def on_retry(self, exc, task_id, args, kwargs, einfo):
        try:
            _ledger(task_id, self.name, status="retrying", error=str(exc)[:4000])
        except OperationalError:  # the database is what is down; the retry is already sent
            log.warning("retrying %s %s; ledger not updated: database down", self.name, task_id)

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        dead_letter(task_id, self.name, self.queue_name, dict(kwargs or {}),
                    f"{type(exc).__name__}: {exc}")


def declare_task(name: TaskName | str) -> TaskSpec:
    """The spec of task ``name`` in ``contract.registry.TASKS`` (its queue and payload
    model): the one check every task decorator makes.

    Raises:
        RuntimeError: ``name`` has no queue in ``contract.registry.TASKS``.
    """
    if name not in TASKS:
        raise RuntimeError(f"task {name!r} has no queue in contract.registry.TASKS")
    return TASKS[name]


def npc_task(name: TaskName | str, *, max_retries: int = 5,
             soft_time_limit: int = 240, time_limit: int = 300) -> Callable:
    """Register ``fn(payload, ctx) -> dict`` as the Celery task ``name``; the payload is
    validated with the name's model in ``contract.registry.TASKS``.

    The task takes keyword arguments only (the payload's fields), so game backends can
    ``send_task(name, kwargs={...})``. Model errors are retried with exponential backoff and
    jitter (at most ``max_retries`` times); database outages (``OperationalError``) with
    backoff capped at 60 s, up to ``DB_OUTAGE_MAX_RETRIES`` times; invalid model output and
    invalid payloads are dead-lettered at once. A note that kept changing under its writer
    (``NoteConflict``) is retried like a model error; so is a card transaction that kept
    losing the race (``CardConflict``).

    Raises:
        RuntimeError: ``name`` has no queue in ``contract.registry.TASKS``.
    """
    spec = declare_task(name)
    name, queue, payload_model = spec.name.value, spec.queue.value, spec.payload

    def decorate(fn: Callable[[Payload, TaskContext], dict]):
        @shared_task(
            name=name, bind=True, base=NpcTask, queue_name=queue,
            autoretry_for=(ModelError, NoteConflict, CardConflict),
            dont_autoretry_for=(InvalidModelOutput,),
            retry_backoff=2, retry_backoff_max=120, retry_jitter=True, max_retries=max_retries,
            soft_time_limit=soft_time_limit, time_limit=time_limit,
        )
        def run(self, **kwargs):
            try:
                return _run(self, kwargs)
            except REDIS_DOWN as exc:  # give the message back; never fail it for an outage
                log.warning("%s %s: redis unavailable (%s): message given back", name,
                            self.request.id, type(exc).__name__)
                try:
                    _ledger(self.request.id or "local", name, status="retrying",
                            error=f"redis unavailable, redelivered: {type(exc).__name__}")
                except OperationalError:
                    pass
                raise Reject(f"redis unavailable: {exc}", requeue=True) from exc
            except OperationalError as exc:  # the database is down: wait it out
                if self.request.retries >= DB_OUTAGE_MAX_RETRIES:
                    raise
                countdown = get_exponential_backoff_interval(
                    2, self.request.retries, DB_OUTAGE_MAX_BACKOFF_S, full_jitter=True)
                log.warning("%s %s: database unavailable, retry in %d s", name, self.request.id,
                            countdown)
                raise self.retry(exc=exc, countdown=countdown,
                                 max_retries=DB_OUTAGE_MAX_RETRIES) from exc

        def _run(self, kwargs: dict) -> dict:
            task_id = self.request.id or "local"
            if len(task_id) > TASK_ID_MAX_CHARS:  # before it reaches a log line or the ledger
                dead_letter(task_id, name, queue, kwargs,
                            f"invalid task id: {len(task_id)} characters "
                            f"(at most {TASK_ID_MAX_CHARS})")
                return {"status": "dead"}
            deliveries = count_delivery(task_id)
            redeliveries = deliveries - self.request.retries - 1
            if redeliveries > MAX_REDELIVERIES:
                dead_letter(task_id, name, queue, kwargs,
                            f"poison message: delivered {deliveries} times "
                            f"({self.request.retries} retries)")
                return {"status": "dead"}
            try:
                payload = payload_model.model_validate(kwargs)
            except ValidationError as exc:
                dead_letter(task_id, name, queue, kwargs, f"invalid payload: {exc}")
                return {"status": "dead"}
            status = _status(task_id)
            if status == "cancelled":  # a rollback cancelled it while it was queued
                return {"status": "cancelled"}
            if deliveries > 1 and status == "succeeded":  # the same task id sent again
                _ledger(task_id, name, attempts=deliveries)
                return {"status": "duplicate"}
            _ledger(task_id, name, queue=queue, payload=kwargs, status="running",
                    attempts=deliveries, idempotency_key=getattr(payload, "idempotency_key", None),
                    session_id=getattr(payload, "session_id", None),
                    target=payload.target()[:300],
                    started_at=utcnow())
            try:
                from memory.nearline import get_redis

                if fencing.turn_undone(get_redis(), getattr(payload, "session_id", None),
                                       getattr(payload, "turn_id", None)):
                    raise TaskCancelled("its turn was undone by a rollback of the session")
                result = fn(payload, TaskContext(task_id, name, self.request.retries,
                                                 self.app)) or {}
            except TaskCancelled as exc:
                _ledger(task_id, name, status="cancelled", error=str(exc)[:4000],
                        finished_at=utcnow())
                return {"status": "cancelled"}
            _ledger(task_id, name, status="succeeded", result=result, error=None,
                    tokens_used=int(result.get("tokens", 0)), finished_at=utcnow())
            return result

        run.plain = fn
        return run

    return decorate


def enqueue(send: Send, name: TaskName | str, payload: Payload, **options) -> str:
    """Send task ``name`` with a validated payload through ``send`` (a task's ``ctx.send``,
    or ``contract.send.celery_sender(app)``) and record it as ``queued`` in the ledger
    (unless it may expire unrun); returns its id.

    Raises:
        RuntimeError: ``name`` has no queue in ``contract.registry.TASKS``.
    """
    queue = declare_task(name).queue.value
    kwargs = payload.model_dump(mode="json")
    task_id = options.pop("task_id", None) or str(uuid.uuid4())
    record = "expires" not in options  # an expired message never runs: it would stay "queued"
    if record:  # before sending, so the worker's "running" always comes after it
        _ledger(task_id, str(name), queue=queue, payload=kwargs, status="queued",
                session_id=getattr(payload, "session_id", None), target=payload.target()[:300],
                idempotency_key=getattr(payload, "idempotency_key", None))
    try:
        send(name, kwargs, task_id, **options)
    except Exception as exc:
        if record:
            _ledger(task_id, str(name), status="dead", error=f"could not enqueue: {exc}"[:4000])
        raise
    return task_id
