"""The ledger-recording send that task bodies hand to domain functions for follow-up tasks.

Domain functions in ``memory`` send follow-up tasks as ``enqueue(task name, payload
fields)`` without knowing the payload models; :func:`follow_up` validates the fields with the
task's payload model (``contract.registry.TASKS``) and sends it through ``tasks.base.enqueue``
(ledger row ``queued`` before the send). It is the one way to send an
``npc_memory.update_note``: such an update is first announced for coalescing
(``memory.nearline.add_pending``).
"""

from __future__ import annotations

from collections.abc import Callable

from contract.names import TaskName
from contract.registry import TASKS
from contract.send import Send
from memory import nearline
from tasks.base import enqueue


def follow_up(send: Send) -> Callable[[str, dict], str]:
    """``enqueue(name, fields) -> task id`` over ``send`` (a task's ``ctx.send``, or
    ``contract.send.celery_sender(app)``): validates ``fields`` with task ``name``'s payload
    model, records the task in the ledger and sends it. An ``npc_memory.update_note`` is
    announced for coalescing (``memory.nearline.add_pending``) before its ledger row and send,
    so a rewrite of the same note running meanwhile can fold it in.

    The returned callable raises:
        ValueError: ``name`` is no task of ``contract.names.TaskName``.
        pydantic.ValidationError: ``fields`` do not fit the task's payload model.
    """

    def enqueue_fields(name: str, fields: dict) -> str:
        task = TaskName(name)
        payload = TASKS[task].payload.model_validate(fields)
        if task == TaskName.UPDATE_NOTE:
            nearline.add_pending(nearline.get_redis(), payload.session_id, payload.lore_entry_key,
                                 payload.idempotency_key, payload.update_summary, payload.turn_id,
                                 payload.cause, payload.game_minutes)
        return enqueue(send, task, payload)

    return enqueue_fields
