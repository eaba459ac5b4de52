"""Dead letters: list them, show one whole, send one's task again.

A task is re-sent by name through the caller's ``send`` and only if the caller's routing
table ``routes`` (task name -> queue name, e.g. built from ``contract.registry.TASKS``) gives
it a queue."""

from __future__ import annotations

import json
from collections.abc import Mapping

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory.ops.errors import NotFound, NotReplayable, Send, iso
from models import DeadLetter
from models.base import utcnow


def _dead_letter_dict(d: DeadLetter) -> dict:
    return {"id": d.id, "task_id": d.task_id, "task_name": d.task_name, "queue": d.queue,
            "payload": dict(d.payload or {}), "error": d.error, "created_at": iso(d.created_at),
            "replayed_at": iso(d.replayed_at)}


def list_dead_letters(session: Session, *, limit: int = 50, task_name: str | None = None,
                      replayed: bool | None = None, payload_chars: int | None = None
                      ) -> list[dict]:
    """Dead letters, newest first; optionally only one task name, and only replayed
    (``replayed=True``) or never replayed (``False``) ones. With ``payload_chars``, a payload
    longer than that as JSON is replaced by ``{"truncated": True, "chars": n, "preview":
    <its first payload_chars characters of JSON>}`` (:func:`get_dead_letter` has it whole).

    Returns:
        ``[{id, task_id, task_name, queue, payload, error, created_at, replayed_at}]``

    Raises:
        ValueError: ``limit`` < 1.
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")
    q = select(DeadLetter)
    if task_name:
        q = q.where(DeadLetter.task_name == task_name)
    if replayed is not None:
        q = q.where(DeadLetter.replayed_at.is_not(None) if replayed
                    else DeadLetter.replayed_at.is_(None))
    rows = session.scalars(q.order_by(DeadLetter.id.desc()).limit(limit))
    out = [_dead_letter_dict(d) for d in rows]
    if payload_chars is not None:
        for d in out:
            text = json.dumps(d["payload"], ensure_ascii=False)
            if len(text) > payload_chars:
                d["payload"] = {"truncated": True, "chars": len(text),
                                "preview": text[:payload_chars]}
    return out


def get_dead_letter(session: Session, dead_letter_id: int) -> dict:
    """One dead letter, whole (same shape as an item of ``list_dead_letters``).

    Raises:
        NotFound: no dead letter with that id.
    """
    d = session.get(DeadLetter, dead_letter_id)
    if d is None:
        raise NotFound(f"unknown dead letter {dead_letter_id}")
    return _dead_letter_dict(d)


def resend(name: str, payload: dict | None, send: Send, routes: Mapping[str, str]) -> str:
    """Send task ``name`` with ``payload`` as kwargs; returns the new task id.

    Raises:
        NotReplayable: ``name`` has no queue in ``routes``.
    """
    if name not in routes:
        raise NotReplayable(f"task {name!r} has no queue in the task table")
    return send(name, dict(payload or {}))


def replay_dead_letter(session: Session, dead_letter_id: int, send: Send,
                       routes: Mapping[str, str]) -> dict:
    """Send a dead letter's task again, by name, with its stored payload (kwargs), and record
    ``replayed_at``. The caller commits (after the send, so a failed send records nothing).
    ``routes`` maps task names to queue names.

    Replaying again re-sends again: the effects stay single because every task is idempotent
    (a turn id is archived once, a note revision's idempotency key is unique, ...). A payload
    that was invalid is dead-lettered again under the new task id.

    Returns:
        ``{"dead_letter_id", "task_name", "queue", "replayed_task_id" (the dead one),
        "task_id" (the new one), "replayed_at"}``

    Raises:
        NotFound: no dead letter with that id.
        NotReplayable: its task name has no queue.
        Whatever ``send`` raises (broker down); nothing is recorded then.
    """
    d = session.get(DeadLetter, dead_letter_id)
    if d is None:
        raise NotFound(f"unknown dead letter {dead_letter_id}")
    new_id = resend(d.task_name, d.payload, send, routes)
    d.replayed_at = utcnow()
    session.flush()
    return {"dead_letter_id": d.id, "task_name": d.task_name,
            "queue": routes[d.task_name], "replayed_task_id": d.task_id,
            "task_id": new_id, "replayed_at": iso(d.replayed_at)}
