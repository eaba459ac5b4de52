"""The Celery application: ``celery -A workers.celery_app worker -Q ...``.

Configuration comes from ``celeryconfig``; every task is registered by importing ``tasks``.
Start-up fails if a queue-mapped task name has no task, or a task has no queue.
"""

from __future__ import annotations

from celery import Celery

import celeryconfig
from workers.logging_setup import install_celery_signals

install_celery_signals()  # JSON logs with the task's ids (workers/logging_setup.py)
app = Celery("npc_memory")
app.config_from_object(celeryconfig)

import tasks  # noqa: E402,F401  (registers the tasks on the shared app)


def check_topology(celery_app: Celery) -> None:
    """Raise RuntimeError unless the registered tasks and ``TASK_QUEUES`` match exactly."""
    ours = {n for n in celery_app.tasks if n.startswith("npc_memory.")}
    declared = set(celeryconfig.TASK_QUEUES)
    if ours != declared:
        raise RuntimeError(f"task/queue mismatch: without queue {sorted(ours - declared)}, "
                           f"without task {sorted(declared - ours)}")


check_topology(app)
