"""Batch tasks (celery-batches): many messages of one task name written in one transaction.

``npc_batch_task(name, flush_every=100, flush_interval_s=0.1)`` registers
``fn(db_session, payloads) -> [result dict per payload]`` as a ``celery_batches.Batches`` task.
The worker buffers the task's messages and calls the function with up to ``flush_every`` of
them at once, or with what it has after ``flush_interval_s`` seconds. Each message keeps the
contract of a plain ``npc_task`` (``tasks.base``):

- every message is acknowledged after the batch ran (``task_acks_late``; celery-batches acks
  each request on return); a worker that dies mid-batch gives all of them back;
- delivery counting per task id (a poison message is dead-lettered after ``MAX_REDELIVERIES``
  redeliveries, alone);
- an invalid payload, or a task id over 200 characters, is dead-lettered alone, the rest of
  the batch is written;
- a task id that already succeeded is not written again (``{"status": "duplicate"}``);
- Redis unreachable when the batch starts: nothing is written and the messages come back
  (their acknowledgement cannot reach Redis either; ``tasks.unacked`` restores them);
- a database outage (``OperationalError``) re-sends every message of the batch with its own
  task id, ``retries + 1`` and a capped exponential backoff with full jitter (60 s at most), up
  to ``DB_OUTAGE_MAX_RETRIES`` times; after that each is dead-lettered (parked in Redis while
  the database is down);
- any other error of the batch statement (one bad row fails a multi-row INSERT) writes the
  messages one by one, so only the offending ones are dead-lettered;
- the ledger shows a batch's messages ``running`` from the moment the batch starts (one
  multi-row upsert; a row that already succeeded is left as it is), so messages a killed
  worker held are visible; the final rows are written with one multi-row upsert in the same
  transaction as the batch's effect (status ``succeeded``, ``result`` carries ``batch_id``
  and ``batch_size``).

celery-batches needs prefetched messages to form a batch: a worker consuming a batch queue
must run with ``--prefetch-multiplier`` of at least the batch size (the Procfile's
``archiver`` uses ``2 * ARCHIVE_BATCH_SIZE``); with the project-wide multiplier of 1 batches
still run, each holding about ``concurrency`` messages.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from itertools import count
from queue import Empty

from celery import Celery, shared_task
from celery.utils.time import get_exponential_backoff_interval
from celery_batches import Batches
from pydantic import ValidationError
from sqlalchemy import select, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from contract.names import TaskName
from contract.payloads import Payload
from contract.send import celery_sender
from memory import keys as rkeys
from memory.db import dialect_insert, session_scope
from memory.safe_input import storable
from models import TaskRecord
from models.base import utcnow
from tasks.base import (
    DB_OUTAGE_MAX_BACKOFF_S,
    DB_OUTAGE_MAX_RETRIES,
    DELIVERY_TTL_S,
    MAX_REDELIVERIES,
    REDIS_DOWN,
    TASK_ID_MAX_CHARS,
    dead_letter,
    declare_task,
    storable_id,
)

log = logging.getLogger(__name__)

BatchFn = Callable[[Session, list[Payload]], list[dict]]


class NpcBatchTask(Batches):
    """Base class of the project's batch tasks (see the module docstring).

    It survives a broker reconnection, which plain celery-batches does not: when the
    connection breaks, Celery's event loop clears the worker's timer, which held the batch's
    periodic flush, while celery-batches still believes it is scheduled, so messages received
    afterwards waited in the buffer forever (until ``flush_every`` of them arrived). Celery
    builds every task's strategy again when the consumer restarts; here that also cancels the
    stale flush timer (the next message starts a new one) and drops the requests buffered on
    the broken connection, as Celery's consumer does with its reserved requests: they cannot
    be acknowledged any more, and their messages are delivered again (``tasks.unacked``).
    """

    abstract = True
    queue_name = ""

    def Strategy(self, task, app, consumer):  # noqa: N802 (celery's name)
        if self._tref is not None:
            self._tref.cancel()
            self._tref = None
        self._count = count(1)
        dropped = 0
        for q in (self._buffer, self._pending):
            while True:
                try:
                    q.get_nowait()
                except Empty:
                    break
                dropped += 1
        if dropped:
            log.warning("%s: consumer restarted; %d buffered message(s) left to redelivery",
                        self.name, dropped)
        return super().Strategy(task, app, consumer)


def _retries(req) -> int:
    return int((req.request_dict or {}).get("retries") or 0)


def count_deliveries(task_ids: list[str]) -> list[int]:
    """Count one more delivery of each task id (one pipelined Redis round trip, same keys as
    ``tasks.base.count_delivery``); returns the counts in order."""
    from memory.nearline import get_redis

    pipe = get_redis().pipeline(transaction=False)
    for task_id in task_ids:
        pipe.incr(rkeys.deliveries(task_id))
        pipe.expire(rkeys.deliveries(task_id), DELIVERY_TTL_S)
    return [int(x) for x in pipe.execute()[::2]]


def _ledger_rows(s: Session, name: str, queue: str, items: list[tuple], results: list[dict],
                 started) -> None:
    """One multi-row upsert of the ledger rows of ``items`` (``(req, payload, deliveries)``)."""
    rows = {}
    for (req, payload, deliveries), result in zip(items, results):
        rows[req.id] = {"task_id": storable_id(req.id), "task_name": name, "queue": queue,
                        "payload": storable(dict(req.kwargs)), "status": "succeeded",
                        "attempts": deliveries, "error": None, "result": result,
                        "idempotency_key": getattr(payload, "idempotency_key", None),
                        "session_id": getattr(payload, "session_id", None),
                        "target": payload.target()[:300], "tokens_used": 0,
                        "started_at": started, "finished_at": utcnow()}
    if not rows:
        return
    ins = dialect_insert(s, TaskRecord).values(list(rows.values()))
    cols = [c for c in next(iter(rows.values())) if c != "task_id"]
    s.execute(ins.on_conflict_do_update(index_elements=["task_id"],
                                        set_={c: getattr(ins.excluded, c) for c in cols}))


def _running_rows(name: str, queue: str, items: list[tuple], started) -> None:
    """One multi-row upsert marking ``items`` (``(req, payload, deliveries)``) ``running``;
    rows that already succeeded keep their status (a redelivered duplicate).

    Raises:
        OperationalError: the database is unreachable.
    """
    rows = {req.id: {"task_id": storable_id(req.id), "task_name": name, "queue": queue,
                     "payload": storable(dict(req.kwargs)), "status": "running",
                     "attempts": deliveries,
                     "idempotency_key": getattr(payload, "idempotency_key", None),
                     "session_id": getattr(payload, "session_id", None),
                     "target": payload.target()[:300], "started_at": started}
            for req, payload, deliveries in items}
    with session_scope() as s:
        ins = dialect_insert(s, TaskRecord).values(list(rows.values()))
        s.execute(ins.on_conflict_do_update(
            index_elements=["task_id"],
            set_={c: getattr(ins.excluded, c) for c in ("status", "attempts", "started_at")},
            where=TaskRecord.status != "succeeded"))


def npc_batch_task(name: TaskName | str, *, flush_every: int,
                   flush_interval_s: float, soft_time_limit: int = 60,
                   time_limit: int = 120,
                   after_commit: Callable[[Celery, list[Payload]], None] | None = None,
                   ) -> Callable:
    """Register ``fn(db_session, payloads) -> [result per payload]`` as batch task ``name``
    (payloads validated with the name's model in ``contract.registry.TASKS``).

    ``fn`` runs inside one transaction with the validated payloads of a batch, in arrival
    order, and must be idempotent (a message may be delivered again). ``after_commit(app,
    payloads)``, if given, runs once the transaction of those payloads is committed (e.g. to
    send follow-up tasks that read what was written); an error it raises is logged and
    does not undo the batch.

    Raises:
        RuntimeError: ``name`` has no queue in ``contract.registry.TASKS``.
    """
    spec = declare_task(name)
    name, queue, payload_model = spec.name.value, spec.queue.value, spec.payload

    def decorate(fn: BatchFn):
        @shared_task(name=name, bind=True, base=NpcBatchTask, queue_name=queue,
                     flush_every=flush_every, flush_interval=flush_interval_s,
                     soft_time_limit=soft_time_limit, time_limit=time_limit)
        def run(self, requests) -> dict:
            return _run_batch(self, requests)

        def _retry_later(self, req, exc: Exception) -> None:
            retries = _retries(req)
            if retries >= DB_OUTAGE_MAX_RETRIES:
                dead_letter(req.id, name, queue, dict(req.kwargs), f"{type(exc).__name__}: {exc}")
                return
            countdown = get_exponential_backoff_interval(2, retries, DB_OUTAGE_MAX_BACKOFF_S,
                                                         full_jitter=True)
            celery_sender(self.app)(name, dict(req.kwargs), req.id, countdown=countdown,
                                    retries=retries + 1)

        def _write(items: list[tuple], batch_id: str, started) -> None:
            with session_scope() as s:
                results = fn(s, [p for _, p, _ in items])
                results = [{**r, "batch_id": batch_id, "batch_size": len(items)} for r in results]
                _ledger_rows(s, name, queue, items, results, started)
            if after_commit is not None:
                try:
                    after_commit(run.app, [p for _, p, _ in items])
                except Exception:  # the batch is durable; only the follow-up is missing
                    log.exception("%s: after-commit step failed for batch %s", name, batch_id)

        def _run_batch(self, requests) -> dict:
            started = utcnow()
            batch_id = uuid.uuid4().hex
            try:
                counts = count_deliveries([r.id for r in requests])
            except REDIS_DOWN as exc:  # the acknowledgement fails too: they come back
                log.warning("%s: redis unavailable (%s): batch of %d left for redelivery",
                            name, type(exc).__name__, len(requests))
                return {"redelivery": len(requests), "batch_id": batch_id}
            items: list[tuple] = []
            dead = 0
            for req, deliveries in zip(requests, counts):
                if len(req.id) > TASK_ID_MAX_CHARS:
                    dead_letter(req.id, name, queue, dict(req.kwargs),
                                f"invalid task id: {len(req.id)} characters "
                                f"(at most {TASK_ID_MAX_CHARS})")
                    dead += 1
                    continue
                redeliveries = deliveries - _retries(req) - 1
                if redeliveries > MAX_REDELIVERIES:
                    dead_letter(req.id, name, queue, dict(req.kwargs),
                                f"poison message: delivered {deliveries} times "
                                f"({_retries(req)} retries)")
                    dead += 1
                    continue
                try:
                    payload = payload_model.model_validate(req.kwargs)
                except ValidationError as exc:
                    dead_letter(req.id, name, queue, dict(req.kwargs), f"invalid payload: {exc}")
                    dead += 1
                    continue
                items.append((req, payload, deliveries))
            if not items:
                return {"written": 0, "dead": dead, "batch_id": batch_id}
            try:
                _running_rows(name, queue, items, started)
                again = [i for i in items if i[2] > 1]
                if again:  # only messages seen before can be duplicates of a success
                    with session_scope() as s:
                        done = set(s.scalars(select(TaskRecord.task_id).where(
                            TaskRecord.task_id.in_([i[0].id for i in again]),
                            TaskRecord.status == "succeeded")))
                        for req, _, deliveries in again:  # rare: one UPDATE each
                            if req.id in done:
                                s.execute(update(TaskRecord).where(TaskRecord.task_id == req.id)
                                          .values(attempts=deliveries))
                    items = [i for i in items if i[0].id not in done]
                if items:
                    _write(items, batch_id, started)
            except OperationalError as exc:  # the database is down: every message waits it out
                log.warning("%s: database unavailable, retry %d messages with backoff: %s",
                            name, len(items), exc)
                for req, _, _ in items:
                    _retry_later(self, req, exc)
                return {"retried": len(items), "dead": dead, "batch_id": batch_id}
            except Exception as exc:  # one bad row fails the statement: write one by one
                log.warning("%s batch of %d failed (%s): writing one by one", name, len(items), exc)
                for item in items:
                    try:
                        _write([item], batch_id, started)
                    except OperationalError as one_exc:
                        _retry_later(self, item[0], one_exc)
                    except Exception as one_exc:
                        dead_letter(item[0].id, name, queue, dict(item[0].kwargs),
                                    f"{type(one_exc).__name__}: {one_exc}")
                        dead += 1
            return {"batch": len(items), "dead": dead, "batch_id": batch_id}

        run.plain = fn
        return run

    return decorate
