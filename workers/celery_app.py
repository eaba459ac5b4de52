"""The Celery application: ``celery -A workers.celery_app worker -Q ...``.

Configuration comes from ``celeryconfig``; every task is registered by importing ``tasks``.
Start-up fails if a queue-mapped task name has no task, or a task has no queue. A worker that
has started gives back, in a thread of its own, the broker messages a dead worker left
unacknowledged (``tasks.unacked.restore_orphans``); beat's scheduler is ``workers.beat``'s.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery
from celery.signals import worker_ready

import celeryconfig
import workers.beat  # noqa: F401  (beat's start-up lock handler; the scheduler class)
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


def _restore_orphans_in_background(sender=None, **kwargs) -> None:
    """``worker_ready``: restore the messages no live worker holds (a node killed before this
    one started), off the worker's event loop; a failure is logged, never fatal."""
    from settings import get_settings
    from tasks.unacked import restore_orphans

    def run() -> None:
        try:
            restore_orphans(sender.app, get_settings().unacked_restore_after_s)
        except Exception:
            logging.getLogger(__name__).exception("start-up restore of unacked messages failed")

    threading.Thread(target=run, name="restore-unacked", daemon=True).start()


worker_ready.connect(_restore_orphans_in_background, weak=False)
