"""The Celery application: ``celery -A workers.celery_app worker -Q ...``.

Configuration comes from ``celeryconfig``; the app registers every task by importing the task
modules it includes (``tasks.TASK_MODULES``). Start-up fails if a task of
``contract.registry.TASKS`` has no task, or a registered task is not in that table. A worker
that has started gives back, in a thread of its own, the broker messages a dead worker left
unacknowledged (``tasks.unacked.restore_orphans``); beat's scheduler is ``workers.beat``'s.
"""

from __future__ import annotations

import logging
import threading

from celery import Celery
from celery.signals import worker_ready

import celeryconfig
import workers.beat  # noqa: F401  (beat's start-up lock handler; the scheduler class)
from contract.registry import TASKS
from tasks import TASK_MODULES
from workers.logging_setup import install_celery_signals

install_celery_signals()  # JSON logs with the task's ids (workers/logging_setup.py)
app = Celery("npc_memory", include=list(TASK_MODULES))
app.config_from_object(celeryconfig)
app.loader.import_default_modules()  # the included task modules: checked below, not at fork


def check_topology(celery_app: Celery) -> None:
    """Raise RuntimeError unless the app's ``npc_memory.*`` tasks and
    ``contract.registry.TASKS`` match exactly, each task on its table queue."""
    ours = {n for n in celery_app.tasks if n.startswith("npc_memory.")}
    declared = {str(name) for name in TASKS}
    if ours != declared:
        raise RuntimeError(f"task/queue mismatch: without queue {sorted(ours - declared)}, "
                           f"without task {sorted(declared - ours)}")
    for name, spec in TASKS.items():
        queue = getattr(celery_app.tasks[str(name)], "queue_name", None)
        if queue != spec.queue.value:
            raise RuntimeError(f"task {name} runs on queue {queue!r}, "
                               f"the table says {spec.queue.value!r}")


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
