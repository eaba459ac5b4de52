"""The one way to send a task: the :class:`Send` protocol and its Celery adapter, and the
sends of a recorded turn and of a session's simulation (the dialogue server, the CLI and the
tasks share them).

Each turn causes ``npc_memory.analyze_turn`` and ``npc_memory.archive_turn``. Their task ids
are derived from the turn id (``{task name}:{turn id}``), so sending them again, after a crash
between recording the turn and sending, or by the reconcile task, runs nothing twice: a task
id that already succeeded is skipped by ``tasks.base`` and both tasks are idempotent on the
turn id anyway.

Inside a task, send with the task's own app (``TaskContext.send``), never Celery's
per-thread ``current_app``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from contract.names import TaskName
from memory import keys as rkeys
from memory import nearline

if TYPE_CHECKING:
    from celery import Celery


class Send(Protocol):
    """``(name, kwargs, task_id=None, **options) -> task id``: puts one task on the broker.
    ``options`` (``expires``, ``kwargsrepr``, ``countdown``, ...) go to Celery's
    ``send_task``; ``task_id`` None lets Celery choose one."""

    def __call__(self, name: TaskName | str, kwargs: dict, task_id: str | None = None,
                 **options: Any) -> str: ...


def celery_sender(app: Celery) -> Send:
    """A :class:`Send` over ``app.send_task`` (the name sent as its plain string value; extra
    keyword options pass through). Raises whatever the broker raises."""

    def send(name: TaskName | str, kwargs: dict, task_id: str | None = None,
             **options: Any) -> str:
        return app.send_task(str(name), kwargs=kwargs, task_id=task_id, **options).id

    return send


TURN_TASKS = (TaskName.ANALYZE_TURN, TaskName.ARCHIVE_TURN)
"""What every recorded turn is sent to, in this order."""


def turn_task_id(name: TaskName | str, turn_id: str) -> str:
    """The stable task id of ``name`` for one turn."""
    return f"{name}:{turn_id}"


def turn_kwargsrepr(kwargs: dict) -> str:
    """The short kwargs repr a turn task's message carries (Flower's "kwargs" column):
    ``{'turn_id': ..., 'session_id': ..., 'seq': ..., 'npc_entry_id': ...}``."""
    return repr({k: kwargs.get(k) for k in ("turn_id", "session_id", "seq", "npc_entry_id")})


def send_turn_tasks(send: Send, r, kwargs: dict) -> list[str]:
    """Send a recorded turn's pipeline tasks (``kwargs``: the turn payload as task kwargs),
    then settle its outbox entry.

    Returns the task ids. Raises whatever the broker raises (kombu ``OperationalError``,
    redis ``ConnectionError``); the turn then stays in the outbox for the reconcile task.
    """
    ids = []
    # Celery would build the message's kwargs repr (shown by Flower) with saferepr over the
    # whole turn, texts included: a third of a send's CPU on the dialogue path. The ids say
    # which turn it is; the full kwargs stay in the message and in the task ledger.
    shown = turn_kwargsrepr(kwargs)
    for name in TURN_TASKS:
        task_id = turn_task_id(name, kwargs["turn_id"])
        send(name, kwargs, task_id, kwargsrepr=shown)
        ids.append(task_id)
    nearline.settle_turn(r, kwargs["turn_id"])
    return ids


def simulation_task_id(tick_id: str, session_id: str) -> str:
    """The task id of one session's simulation in tick ``tick_id``."""
    return f"{TaskName.SIMULATE_WORLD}:{tick_id}:{session_id}"


def hold_seconds() -> int:
    """How long a requested simulation may wait before it expires (3 tick intervals, >= 60 s)."""
    from settings import get_settings

    return max(60, int(3 * get_settings().world_tick_seconds))


def request_simulation(send: Send, r, session_id: str, tick_id: str, *, max_npcs: int | None = None,
                       max_tokens: int | None = None, hold_s: int | None = None,
                       force: bool = False) -> bool:
    """Send ``npc_memory.simulate_world`` for one session unless one is already queued or
    running (``force`` sends anyway: an operator's explicit request).

    The message expires after ``hold_s`` seconds (default ``hold_seconds()``), as does the
    pending mark, so an outage does not leave a stampede of stale simulations behind.
    ``max_npcs``/``max_tokens``: the session's share of the tick's budget (default: the
    per-session budget). Returns whether a task was sent.
    """
    from contract.payloads import SimulationPayload

    hold_s = hold_s or hold_seconds()
    if not r.set(rkeys.simulation_pending(session_id), tick_id, nx=True, ex=hold_s) and not force:
        return False
    payload = SimulationPayload(session_id=session_id, tick_id=tick_id, max_npcs=max_npcs,
                                max_tokens=max_tokens)
    send(TaskName.SIMULATE_WORLD, payload.model_dump(mode="json", exclude_none=True),
         simulation_task_id(tick_id, session_id), expires=hold_s)
    return True
