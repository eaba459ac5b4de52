"""The ledger-recording send that task bodies hand to domain functions for follow-up tasks.

Domain functions in ``memory`` send follow-up tasks as ``enqueue(task name, payload
fields)`` without knowing the payload models; :func:`follow_up` validates the fields with the
task's payload model (``contract.registry.TASKS``) and sends it through ``tasks.base.enqueue``
(ledger row ``queued`` before the send). An ``npc_memory.update_note`` goes through
``tasks.note_update.enqueue_note_update``, which announces it for coalescing first.
"""

from __future__ import annotations

from collections.abc import Callable

from contract.names import TaskName
from contract.registry import TASKS
from contract.send import Send
from tasks.base import enqueue


def follow_up(send: Send) -> Callable[[str, dict], str]:
    """``enqueue(name, fields) -> task id`` over ``send`` (a task's ``ctx.send``): validates
    ``fields`` with task ``name``'s payload model, records the task in the ledger and sends
    it.

    The returned callable raises:
        ValueError: ``name`` is no task of ``contract.names.TaskName``.
        pydantic.ValidationError: ``fields`` do not fit the task's payload model.
    """

    def enqueue_fields(name: str, fields: dict) -> str:
        task = TaskName(name)
        payload = TASKS[task].payload.model_validate(fields)
        if task == TaskName.UPDATE_NOTE:
            from tasks.note_update import enqueue_note_update  # which imports this module

            return enqueue_note_update(send, payload)
        return enqueue(send, task, payload)

    return enqueue_fields
