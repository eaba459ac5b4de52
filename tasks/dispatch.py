"""Sending a recorded turn's pipeline tasks (the dialogue server and the reconcile task).

Each turn causes ``npc_memory.analyze_turn`` and ``npc_memory.archive_turn``. Their task ids
are derived from the turn id (``{task name}:{turn id}``), so sending them again, after a crash
between recording the turn and sending, or by the reconcile task, runs nothing twice: a task
id that already succeeded is skipped by ``tasks.base`` and both tasks are idempotent on the
turn id anyway.
"""

from __future__ import annotations

from celery import Celery

from memory import nearline
from tasks.payloads import TurnPayload

TURN_TASKS = ("npc_memory.analyze_turn", "npc_memory.archive_turn")


def turn_task_id(name: str, turn_id: str) -> str:
    """The stable task id of ``name`` for one turn."""
    return f"{name}:{turn_id}"


def send_turn_tasks(app: Celery, r, turn: TurnPayload) -> list[str]:
    """Send the turn's pipeline tasks through ``app``, then settle its outbox entry.

    Returns the task ids. Raises whatever the broker raises (kombu ``OperationalError``,
    redis ``ConnectionError``); the turn then stays in the outbox for the reconcile task.
    """
    kwargs = turn.model_dump(mode="json")
    ids = []
    for name in TURN_TASKS:
        task_id = turn_task_id(name, turn.turn_id)
        app.send_task(name, kwargs=kwargs, task_id=task_id)
        ids.append(task_id)
    nearline.settle_turn(r, turn.turn_id)
    return ids


def simulation_pending_key(session_id: str) -> str:
    """Redis key held while a simulation of the session is queued or running."""
    return f"session:{session_id}:simulation_pending"


def request_simulation(app: Celery, r, session_id: str, tick_id: str, *, max_npcs: int,
                       max_tokens: int, hold_s: int, force: bool = False) -> bool:
    """Send ``npc_memory.simulate_world`` for one session unless one is already queued or
    running (``force`` sends anyway: an operator's explicit request).

    The message expires after ``hold_s`` seconds, as does the pending mark, so an outage does
    not leave a stampede of stale simulations behind. Returns whether a task was sent.
    """
    from tasks.payloads import SimulationPayload

    if not r.set(simulation_pending_key(session_id), tick_id, nx=True, ex=hold_s) and not force:
        return False
    payload = SimulationPayload(session_id=session_id, tick_id=tick_id, max_npcs=max_npcs,
                                max_tokens=max_tokens)
    app.send_task("npc_memory.simulate_world", kwargs=payload.model_dump(mode="json"),
                  task_id=f"npc_memory.simulate_world:{tick_id}:{session_id}", expires=hold_s)
    return True
