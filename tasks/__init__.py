"""Celery tasks, one module per queue; each task is a thin wrapper over ``memory/`` and
``inference/``. Importing this package registers every task."""

from tasks import analysis, archive, embed, entity_creation, note_update, simulate_world  # noqa: F401
