"""Counting the SQL statements a block of test code makes the database run."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event

from memory.db import get_engine


@contextmanager
def sql_statements() -> Iterator[list[str]]:
    """Yield a list that collects every statement the test engine executes while the block
    runs. Statements from a Celery worker's thread pool (``ThreadPoolExecutor-*``: the
    session-wide in-process worker another module may have started) are not counted: only
    the server's own queries are."""
    engine = get_engine()
    statements: list[str] = []

    def count(conn, cursor, statement, parameters, context, executemany):
        if not threading.current_thread().name.startswith("ThreadPoolExecutor"):
            statements.append(statement)

    event.listen(engine, "before_cursor_execute", count)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", count)
