"""Queue ``archive``: ``npc_memory.reconcile``, run by beat every ``RECONCILE_SECONDS``.

It repairs what an outage left half-done, so that nothing is lost:

- turns still in the Redis outbox (recorded by the dialogue server, whose pipeline tasks may
  never have reached the broker) get their tasks sent again (``contract.send``: stable task
  ids, idempotent on the turn id);
- dead letters parked in Redis while the database was down are written to the dead-letter
  store;
- broker messages a dead worker (or a worker whose broker connection broke) took and never
  acknowledged go back on their queues once ``UNACKED_RESTORE_AFTER_S`` old, instead of after
  the visibility timeout (``tasks.unacked.restore_orphans``).
"""

from __future__ import annotations

from contract.names import TaskName
from contract.payloads import ReconcilePayload, TurnPayload
from contract.send import send_turn_tasks
from memory import nearline
from settings import get_settings
from tasks.base import TaskContext, flush_parked_dead_letters, npc_task
from tasks.unacked import restore_orphans


@npc_task(TaskName.RECONCILE, soft_time_limit=60, time_limit=90,
          max_retries=0)
def reconcile(p: ReconcilePayload, ctx: TaskContext) -> dict:
    """Resend the outbox's overdue turns, flush parked dead letters and restore the
    unacknowledged messages no live worker holds.

    Returns ``{"resent_turns": n, "dead_letters_written": m, "restored_messages": k}``.
    """
    r = nearline.get_redis()
    due = nearline.outbox_due(r, p.older_than_s)
    send = ctx.send
    for doc in due:
        send_turn_tasks(send, r, TurnPayload.model_validate(doc).model_dump(
            mode="json", exclude_none=True))
    restored = restore_orphans(ctx.app, get_settings().unacked_restore_after_s)
    return {"resent_turns": len(due), "dead_letters_written": flush_parked_dead_letters(),
            "restored_messages": restored}
