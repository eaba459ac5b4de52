"""Giving back the broker messages of dead workers (Redis transport) within minutes.

A worker takes a message off its queue into kombu's ``unacked`` hash (index ``unacked_index``,
scored by the time it was taken) and removes it when the task is acknowledged
(``task_acks_late``: after it ran). A worker killed with ``kill -9``, or one whose broker
connection broke (a Redis restart: the worker drops what it had reserved and takes it again
from a new connection), leaves its messages there; kombu itself restores them only once they
are older than the visibility timeout (``BROKER_VISIBILITY_TIMEOUT_S``).

:func:`restore_orphans` restores sooner, with kombu's own ``QoS.restore_by_tag`` (the message
goes back to the head of its queue, marked redelivered): every message taken more than
``min_age_s`` seconds ago that no live worker reports holding (one broadcast of the remote
control command :func:`held_tasks` registered here: running, reserved or waiting for its ETA,
such as a retry's countdown). It runs when a worker starts
(``workers.celery_app``) and in every ``npc_memory.reconcile``. A worker that does not answer
the broadcast within ``inspect_timeout_s`` has its messages restored too: they may then run
twice, which the tasks tolerate (idempotent effects, the ledger skips a task id that
succeeded). Messages in a celery-batches buffer are not reported; they are flushed within
``ARCHIVE_FLUSH_MS``, far below ``min_age_s``.
"""

from __future__ import annotations

import json
import logging
import time

from celery import Celery
from celery.worker import state as worker_state
from celery.worker.control import inspect_command
from celery.worker.request import Request

log = logging.getLogger(__name__)


@inspect_command(args=[("ids", list)], signature="<ids>")
def held_tasks(state, ids=None, **kwargs) -> list[str]:
    """Remote control command (runs in each worker): the ids among ``ids`` this worker holds,
    i.e. running, reserved, or waiting in its timer for an ETA or a retry's countdown."""
    wanted = set(ids or ())
    held = {tid for tid in wanted if tid in worker_state.requests}
    timer = getattr(state.consumer, "timer", None)
    for waiting in list(getattr(getattr(timer, "schedule", None), "queue", ()) or ()):
        args = getattr(getattr(waiting, "entry", None), "args", None) or ()
        if args and isinstance(args[0], Request) and args[0].id in wanted:
            held.add(args[0].id)
    return sorted(held)


def held_task_ids(app: Celery, task_ids: list[str], timeout_s: float = 1.0) -> set[str]:
    """The ids among ``task_ids`` that some live worker of ``app``'s broker holds (one
    :func:`held_tasks` broadcast, collecting replies for ``timeout_s`` seconds)."""
    replies = app.control.broadcast("held_tasks", arguments={"ids": list(task_ids)},
                                    reply=True, timeout=timeout_s) or []
    return {tid for reply in replies for held in reply.values() if isinstance(held, list)
            for tid in held}


def restore_orphans(app: Celery, min_age_s: float, inspect_timeout_s: float = 1.0,
                    limit: int = 10000) -> int:
    """Put back on their queues the unacknowledged messages older than ``min_age_s`` seconds
    that no live worker holds; returns how many were restored (0 when none is that old, in
    which case no broadcast is made). At most ``limit`` of the oldest are looked at.

    Raises:
        kombu / redis connection errors: the broker is unreachable.
    """
    with app.connection_for_write() as conn:
        channel = conn.default_channel
        if not hasattr(channel, "unacked_index_key"):  # not the Redis transport
            return 0
        client = channel.client
        cutoff = time.time() - min_age_s
        tags = client.zrangebyscore(channel.unacked_index_key, 0, cutoff, start=0, num=limit)
        if not tags:
            return 0
        by_task: dict[str, list] = {}
        for tag, raw in zip(tags, client.hmget(channel.unacked_key, tags)):
            if raw is None:  # acknowledged meanwhile
                continue
            try:
                message = json.loads(raw)[0]
                task_id = str(message["headers"]["id"])
            except (ValueError, KeyError, IndexError, TypeError):
                task_id = ""  # not a task message of ours: restore it like the rest
            by_task.setdefault(task_id, []).append(tag)
        if not by_task:
            return 0
        held = held_task_ids(app, [t for t in by_task if t], inspect_timeout_s)
        restored = 0
        for task_id, task_tags in by_task.items():
            if task_id in held:
                continue
            for tag in task_tags:
                channel.qos.restore_by_tag(tag, client)
                restored += 1
        if restored:
            log.warning("restored %d unacknowledged message(s) no live worker held "
                        "(taken over %.0f s ago)", restored, min_age_s)
        return restored
