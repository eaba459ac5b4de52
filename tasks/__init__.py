"""Celery tasks, one module per queue; each task is a thin wrapper over ``memory/`` and
``inference/``. Importing this package registers every task."""

from tasks import (  # noqa: F401
    analysis, archive, embed, entity_creation, note_update, reconcile, simulate_world, summaries,
)
