"""The ledger-recording send that task bodies hand to domain functions for follow-up tasks.

Domain functions in ``memory`` send follow-up tasks as ``enqueue(task name, payload
fields)`` without knowing the payload models; :func:`enqueue_fields` validates the fields
with the task's payload model (``tasks.base.REGISTERED_PAYLOADS``) and sends it through
``tasks.base.enqueue`` (ledger row ``queued`` before the send). An ``npc_memory.update_note``
goes through ``tasks.note_update.enqueue_note_update``, which announces it for coalescing
first.
"""

from __future__ import annotations

from tasks.base import REGISTERED_PAYLOADS, enqueue

UPDATE_NOTE = "npc_memory.update_note"


def enqueue_fields(name: str, fields: dict) -> str:
    """Send task ``name`` with the payload ``fields`` (recorded in the ledger); returns the
    task id.

    Raises:
        KeyError: no task ``name`` is registered.
        pydantic.ValidationError: ``fields`` do not fit the task's payload model.
        RuntimeError: ``name`` has no queue in ``celeryconfig.TASK_QUEUES``.
    """
    payload = REGISTERED_PAYLOADS[name].model_validate(fields)
    if name == UPDATE_NOTE:
        from tasks.note_update import enqueue_note_update  # which sends through this module

        return enqueue_note_update(payload)
    return enqueue(name, payload)
