"""Epoch fencing of a session's writes against its rollbacks (save slots, ``memory.timeline``).

A rollback of a session bumps ``game_sessions.epoch`` and records the turn ids it undid
(``session_rollbacks.turn_ids``, and the Redis set ``session:{id}:undone``) in one committed
step before it undoes anything. Every writer derived from a turn then checks:

- at its start (``tasks.base``): a task whose turn is in the undone set does not run (ledger
  status ``cancelled``);
- at its write: a note revision is committed only if the session's epoch is still the one
  the writer read before its model call (``memory.notes.commit_revision`` takes the session
  row ``FOR SHARE``, which waits for a rollback in progress); after a change the writer reads
  again, and finds its turn undone or not. Card events check the undone set inside their
  optimistic Redis transaction (``memory.cards.apply_events``); a created entity whose turn
  was undone meanwhile is retracted by its own task (``memory.creations``).

So a task in flight for a rolled-back turn (a rewrite that started before the rollback)
never applies afterwards, whatever the interleaving.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from memory import keys as rkeys
from models import GameSession, SessionRollback


def session_epoch(session: Session, session_id: str, *, lock: bool = False) -> int | None:
    """The session's epoch (number of rollbacks so far), or None for an unknown session.
    ``lock``: take the row ``FOR SHARE`` until the transaction ends (a rollback, which
    updates the row, waits for it, and it waits for a rollback in progress)."""
    q = select(GameSession.epoch).where(GameSession.id == session_id)
    if lock:
        q = q.with_for_update(read=True)
    return session.scalar(q)


def undone_turn_ids(session: Session, session_id: str) -> set[str]:
    """Every turn id undone by a committed rollback of the session (from
    ``session_rollbacks``)."""
    out: set[str] = set()
    for ids in session.scalars(select(SessionRollback.turn_ids)
                               .where(SessionRollback.session_id == session_id)):
        out.update(ids or [])
    return out


def turn_undone(r, session_id: str | None, turn_id: str | None) -> bool:
    """Whether a rollback undid ``turn_id`` in the session (one Redis ``SISMEMBER``; False
    without a session or turn)."""
    if not session_id or not turn_id:
        return False
    return bool(r.sismember(rkeys.undone(session_id), turn_id))
