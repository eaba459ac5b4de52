"""The database helpers of ``memory.db``: autocommit connections for single statements, and
the asynchronous-commit pool the task ledger writes through."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from memory.db import autocommit, get_engine, session_scope
from models import TaskRecord
from tasks.base import _ledger

postgres_only = pytest.mark.skipif(get_engine().dialect.name != "postgresql",
                                   reason="synchronous_commit is a PostgreSQL setting")


@postgres_only
def test_only_the_async_commit_pool_turns_synchronous_commit_off():
    with autocommit(async_commit=True) as conn:
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "off"
    with autocommit() as conn:
        assert conn.exec_driver_sql("SHOW synchronous_commit").scalar() == "on"
    with session_scope() as s:  # the pool the tasks' own effects commit through
        assert s.connection().exec_driver_sql("SHOW synchronous_commit").scalar() == "on"


def test_an_autocommit_statement_is_visible_without_a_commit_and_ledger_upserts_merge():
    task_id = f"test-db-{uuid.uuid4().hex}"
    _ledger(task_id, "npc_memory.archive_turn", queue="archive", payload={"x": 1},
            status="queued")
    _ledger(task_id, "npc_memory.archive_turn", status="running", attempts=1)
    with session_scope() as s:  # another connection sees both writes, merged into one row
        row = s.scalars(select(TaskRecord).where(TaskRecord.task_id == task_id)).one()
        assert (row.status, row.attempts, row.payload, row.queue) == (
            "running", 1, {"x": 1}, "archive")
    with autocommit() as conn:
        conn.execute(TaskRecord.__table__.delete().where(TaskRecord.task_id == task_id))
    with session_scope() as s:
        assert s.scalar(select(TaskRecord.task_id).where(TaskRecord.task_id == task_id)) is None
