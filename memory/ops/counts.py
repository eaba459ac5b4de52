"""Counts over the ledger and the dead letters, for ``/metrics``."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from models import DeadLetter, TaskRecord

def task_outcome_counts(session: Session) -> dict[tuple[str, str], int]:
    """Ledger rows per ``(task_name, status)`` (status as in ``ledger.TASK_STATUSES``): one
    ``GROUP BY`` over ``task_records``. The workers' task outcomes for ``/metrics`` come from
    here, so they count every worker process without a metrics endpoint in each."""
    rows = session.execute(select(TaskRecord.task_name, TaskRecord.status, func.count())
                           .group_by(TaskRecord.task_name, TaskRecord.status))
    return {(name, status): int(n) for name, status, n in rows}


def task_token_sums(session: Session) -> dict[str, int]:
    """Model tokens (prompt + completion) the ledger records per task name: the workers'
    model usage per kind of task, summed over every worker process."""
    rows = session.execute(select(TaskRecord.task_name, func.coalesce(func.sum(
        TaskRecord.tokens_used), 0)).group_by(TaskRecord.task_name))
    return {name: int(n) for name, n in rows}


def dead_letter_counts(session: Session) -> dict[tuple[str, bool], int]:
    """Dead letters per ``(task_name, replayed)``: one ``GROUP BY`` over ``dead_letters``."""
    replayed = DeadLetter.replayed_at.is_not(None)
    rows = session.execute(select(DeadLetter.task_name, replayed, func.count())
                           .group_by(DeadLetter.task_name, replayed))
    return {(name, bool(was)): int(n) for name, was, n in rows}
