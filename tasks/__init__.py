"""Celery tasks, one module per queue; each task is a thin wrapper over ``memory/`` and
``inference/``. Importing this package imports no task: the Celery app registers them
(``workers.celery_app``, ``include=TASK_MODULES``)."""

TASK_MODULES = (
    "tasks.analysis", "tasks.archive", "tasks.embed", "tasks.entity_creation",
    "tasks.note_update", "tasks.reconcile", "tasks.simulate_world", "tasks.summaries",
)
"""The modules that define the public tasks (``contract.registry.TASKS``)."""
