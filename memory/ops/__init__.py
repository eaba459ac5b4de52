"""Operations on the memory pipeline (the operator's surface for monitoring and repair): roll
a session note back (``rollback``), inspect an entity's composite document and revision
history (``entries``), show an NPC's memory cards (``cards``), list/inspect/replay dead
letters (``dead_letters``), list and retry a session's tasks from the ledger (``ledger``),
count task outcomes for metrics (``counts``), and find a recorded turn (``turns``).

Plain functions over a SQLAlchemy ``Session`` (and a Redis client, a ``send`` callable or a
routing table where they need one): no Celery app, no task definitions and no HTTP here. The
operator actions that need those (queue lengths, re-analysing a turn, a world tick now,
publishing a rollback) are in ``workers.operations`` and ``workers.queues``, which the
dialogue server and the CLI both call. Every returned value is JSON-ready (ISO 8601 strings
for times). These functions are for operators: none of them is on the dialogue hot path.

``send`` is ``contract.send.Send`` (``(task_name, kwargs, task_id=None) -> task_id``): the
caller's way to put a task on the broker (``contract.send.celery_sender(app)``). Re-sending a task is safe because every
task of the system is idempotent (turn ids, idempotency keys, content hashes, tick ids).
``routes`` maps task names to queue names (``contract.registry.TASKS``' queues as strings).

Errors: ``NotFound`` (a ``LookupError``) for an unknown session, entry, version, dead letter
or task; ``TaskBusy`` for a task that is still running; ``NotReplayable`` for a task name that
has no queue; ``memory.notes.NoteConflict`` when a rollback keeps losing the version race.
"""

from memory.ops.cards import session_cards
from memory.ops.counts import dead_letter_counts, task_outcome_counts, task_token_sums
from memory.ops.dead_letters import get_dead_letter, list_dead_letters, replay_dead_letter
from memory.ops.entries import entry_with_history
from memory.ops.errors import NotFound, NotReplayable, Send, TaskBusy
from memory.ops.ledger import TASK_STATUSES, retry_task, session_tasks
from memory.ops.rollback import rollback_note
from memory.ops.turns import find_turn

__all__ = [
    "NotFound", "NotReplayable", "Send", "TASK_STATUSES", "TaskBusy",
    "dead_letter_counts", "entry_with_history", "find_turn", "get_dead_letter",
    "list_dead_letters", "replay_dead_letter", "retry_task", "rollback_note", "session_cards",
    "session_tasks", "task_outcome_counts", "task_token_sums",
]
