"""The task ledger: a session's tasks, and sending a recorded task again."""

from __future__ import annotations

from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.ops.dead_letters import resend
from memory.ops.entries import get_game
from memory.ops.errors import NotFound, Send, TaskBusy, iso
from memory.report import PENDING
from models import TaskRecord

TASK_STATUSES = ("queued", "running", "succeeded", "retrying", "dead", "cancelled")


def _task_dict(t: TaskRecord) -> dict:
    return {"task_id": t.task_id, "task_name": t.task_name, "queue": t.queue, "status": t.status,
            "attempts": t.attempts, "error": t.error, "tokens_used": t.tokens_used,
            "started_at": iso(t.started_at), "finished_at": iso(t.finished_at),
            "target": t.target}


def session_tasks(session: Session, session_id: str, *, status: str | None = None,
                  limit: int = 50) -> list[dict]:
    """The ledger's tasks of one session, newest first (by start time).

    Returns:
        ``[{task_id, task_name, queue, status, attempts, error, tokens_used, started_at,
        finished_at, target}]``

    Raises:
        NotFound: unknown session.
        ValueError: ``status`` not one of ``TASK_STATUSES``, or ``limit`` < 1.
    """
    if status is not None and status not in TASK_STATUSES:
        raise ValueError(f"status must be one of {', '.join(TASK_STATUSES)}")
    if limit < 1:
        raise ValueError("limit must be >= 1")
    get_game(session, session_id)
    q = select(TaskRecord).where(TaskRecord.session_id == session_id)
    if status is not None:
        q = q.where(TaskRecord.status == status)
    rows = session.scalars(q.order_by(TaskRecord.started_at.desc(), TaskRecord.id.desc())
                           .limit(limit))
    return [_task_dict(t) for t in rows]


def retry_task(session: Session, task_id: str, send: Send, routes: Mapping[str, str], *,
               force: bool = False) -> dict:
    """Send a ledger task again, by name, with its recorded payload; returns the new task id.
    ``routes`` maps task names to queue names.

    A task still ``running`` or ``retrying`` is refused unless ``force`` (for a row left
    ``running`` by a worker that died without the broker redelivering). Effects stay single
    because tasks are idempotent. The new execution gets its own ledger row.

    Returns:
        ``{"retry_of": task_id, "task_name", "queue", "previous_status", "task_id" (new)}``

    Raises:
        NotFound: no ledger row for ``task_id``.
        TaskBusy: the task is running or retrying and ``force`` is False.
        NotReplayable: its task name has no queue.
    """
    t = session.scalar(select(TaskRecord).where(TaskRecord.task_id == task_id))
    if t is None:
        raise NotFound(f"unknown task {task_id!r}")
    if t.status in PENDING and not force:
        raise TaskBusy(f"task {task_id!r} is {t.status}; wait for it to finish")
    new_id = resend(t.task_name, t.payload, send, routes)
    return {"retry_of": t.task_id, "task_name": t.task_name,
            "queue": routes[t.task_name], "previous_status": t.status,
            "task_id": new_id}
