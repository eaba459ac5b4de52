"""The one task table: every public task with its queue and payload model, grouped by the
worker process that consumes it.

Everything else is derived from :data:`TASKS`: Celery's routes (``celeryconfig.task_routes``,
:func:`task_routes`), the payload model each task validates with (``tasks.base.npc_task``),
the worker's start-up check (``workers.celery_app.check_topology``) and the published task
contract (:func:`task_contract`, ``npc_memory_client/task_contract.json``). The Procfile's
``-Q`` lists must match :data:`WORKER_GROUPS` (a test checks it).

Declared queue by queue, in the style of ``CeleryQueue(name, worker).add_task_type(...)``::

    CeleryQueue(Queues.EMBED, worker="embedder").add_task_type(TaskName.EMBED, EmbedPayload)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from contract.names import Queues, TaskName
from contract.payloads import (
    CardArchivePayload,
    CreationPayload,
    EmbedPayload,
    EvidencePayload,
    NoteUpdatePayload,
    Payload,
    ReconcilePayload,
    SimulationPayload,
    SummaryPayload,
    TickPayload,
    TurnPayload,
)

EXCHANGE = "npc_memory"
"""The direct exchange every queue is bound to (routing key = queue name)."""


@dataclass(frozen=True)
class TaskSpec:
    """One public task: its name, the queue it runs on and the model of its kwargs."""

    name: TaskName
    queue: Queues
    payload: type[Payload]


@dataclass
class CeleryQueue:
    """A queue, the Procfile process (``worker``) that consumes it and the tasks it runs."""

    name: Queues
    worker: str
    tasks: list[TaskSpec] = field(default_factory=list)

    def add_task_type(self, name: TaskName, payload: type[Payload]) -> CeleryQueue:
        """Declare task ``name`` (kwargs validated by ``payload``) on this queue; returns the
        queue, so declarations chain."""
        self.tasks.append(TaskSpec(name, self.name, payload))
        return self


QUEUES: tuple[CeleryQueue, ...] = (
    CeleryQueue(Queues.ANALYSIS, worker="worker")
    .add_task_type(TaskName.ANALYZE_TURN, TurnPayload),
    CeleryQueue(Queues.NOTE_UPDATE, worker="worker")
    .add_task_type(TaskName.UPDATE_NOTE, NoteUpdatePayload)
    # maintenance-model work on session memory, like the note rewrites
    .add_task_type(TaskName.SUMMARIZE_SESSION, SummaryPayload),
    CeleryQueue(Queues.ENTITY_CREATION, worker="worker")
    .add_task_type(TaskName.CREATE_ENTITY, CreationPayload),
    CeleryQueue(Queues.SIMULATE_WORLD, worker="worker")
    .add_task_type(TaskName.SIMULATE_WORLD, SimulationPayload)
    .add_task_type(TaskName.WORLD_TICK, TickPayload),
    CeleryQueue(Queues.EMBED, worker="embedder")
    .add_task_type(TaskName.EMBED, EmbedPayload)
    # one per archived batch of turns: their evidence items -> vectors -> index
    .add_task_type(TaskName.EMBED_EVIDENCE, EvidencePayload),
    CeleryQueue(Queues.ARCHIVE, worker="archiver")
    .add_task_type(TaskName.ARCHIVE_TURN, TurnPayload)
    .add_task_type(TaskName.RECONCILE, ReconcilePayload)
    .add_task_type(TaskName.ARCHIVE_CARDS, CardArchivePayload),
)
"""Every queue, in ``Queues`` order, with its tasks."""

TASKS: dict[TaskName, TaskSpec] = {spec.name: spec for q in QUEUES for spec in q.tasks}
"""Every public task name -> its spec (queue, payload model)."""

WORKER_GROUPS: dict[str, tuple[Queues, ...]] = {}
"""Procfile process name -> the queues it consumes (``-Q``): ``worker``, ``embedder``,
``archiver``."""
for _q in QUEUES:
    WORKER_GROUPS[_q.worker] = WORKER_GROUPS.get(_q.worker, ()) + (_q.name,)
del _q


def spec(name: str) -> TaskSpec:
    """The spec of task ``name`` (a ``TaskName`` or its string value).

    Raises:
        KeyError: ``name`` is not a public task.
    """
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"task {name!r} has no queue in contract.registry.TASKS") from None


def task_routes() -> dict[str, dict[str, str]]:
    """Celery's ``task_routes``: ``{task name: {"queue", "routing_key"}}`` (both the queue
    name)."""
    return {s.name.value: {"queue": s.queue.value, "routing_key": s.queue.value}
            for s in TASKS.values()}


CONTRACT_FORMAT = "npc-memory.task-contract"


def task_contract() -> dict:
    """The public task contract as JSON: every task name with its queue and the JSON Schema
    of its kwargs (pydantic's, validation mode). ``npc-memory task-contract`` writes it to
    ``npc_memory_client/task_contract.json``, which the game-backend client validates
    against; a test checks that file equals this.

    Returns:
        ``{"format", "version", "exchange", "queues": [...], "tasks": {name: {"queue",
        "payload"}}}``
    """
    return {
        "format": CONTRACT_FORMAT,
        "version": 1,
        "exchange": EXCHANGE,
        "queues": [q.value for q in Queues],
        "tasks": {name.value: {"queue": s.queue.value,
                               "payload": s.payload.model_json_schema(mode="validation")}
                  for name, s in sorted(TASKS.items())},
    }
