"""Database engine and sessions for the configured ``DATABASE_URL``.

SQLite (the embedded default) is opened in WAL mode with a busy timeout so that the dialogue
server, the workers and the archiver can share the file; PostgreSQL uses psycopg 3.
Engines are per process (re-created after ``fork``), as Celery's prefork pool requires.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from settings import get_settings

_engines: dict[tuple[int, str], Engine] = {}


def normalise_url(url: str) -> str:
    """Map ``postgres://``/``postgresql://`` URLs to the psycopg 3 driver; others unchanged."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def get_engine(url: str | None = None, *, async_commit: bool = False) -> Engine:
    """The process's engine for ``url`` (default: the settings' database URL).

    ``async_commit``: a separate small pool whose PostgreSQL sessions run with
    ``synchronous_commit = off``: a commit returns before its WAL record is flushed to disk,
    so a crash of the database server (not of this process) may lose the last few hundred
    milliseconds of such commits, never corrupt anything (PostgreSQL docs, "Asynchronous
    Commit"). For bookkeeping whose loss applies nothing twice (the task ledger); ignored on
    SQLite."""
    url = normalise_url(url or get_settings().sqlalchemy_url)
    key = (os.getpid(), url, async_commit)
    engine = _engines.get(key)
    if engine is None:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": 30})

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _record):  # pragma: no cover - trivial
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.close()
        elif async_commit:
            # no pre-ping (a round trip per checkout, as long as the upsert itself): a
            # connection the server dropped fails its statement with OperationalError, the
            # pool is invalidated, and the caller's database-outage retry takes over
            engine = create_engine(url, pool_pre_ping=False, pool_size=2, max_overflow=3,
                                   connect_args={"options": "-c synchronous_commit=off"})
        else:
            engine = create_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=5)
        _engines[key] = engine
    return engine


_factories: dict[Engine, sessionmaker] = {}


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """A transaction: commits on success, rolls back and re-raises on error."""
    engine = get_engine(url)
    factory = _factories.get(engine)
    if factory is None:
        factory = _factories[engine] = sessionmaker(bind=engine, expire_on_commit=False)
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def autocommit(url: str | None = None, *, async_commit: bool = False) -> Iterator[Connection]:
    """A connection in autocommit mode, for one self-contained statement (a single-row
    upsert): one round trip to the server instead of three (``BEGIN``, the statement,
    ``COMMIT``). SQLAlchemy restores the pool's isolation level when the connection goes
    back (SQLAlchemy docs, "Setting Transaction Isolation Levels including DBAPI
    Autocommit"). ``async_commit``: through :func:`get_engine`'s asynchronous-commit pool.
    Errors propagate (``sqlalchemy.exc.OperationalError`` when the database is
    unreachable)."""
    with get_engine(url, async_commit=async_commit).connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


def dialect_insert(session: Session | Connection, model):
    """``INSERT`` construct of the session's (or connection's) dialect, with
    ``on_conflict_do_nothing`` / ``on_conflict_do_update`` (PostgreSQL and SQLite both have
    them).

    Raises:
        NotImplementedError: another database.
    """
    from sqlalchemy.dialects import postgresql, sqlite

    bind = session.get_bind() if isinstance(session, Session) else session
    name = bind.dialect.name
    if name == "postgresql":
        return postgresql.insert(model)
    if name == "sqlite":
        return sqlite.insert(model)
    raise NotImplementedError(f"upserts on {name} are not supported")


def alembic_config(url: str | None = None):
    """The Alembic ``Config`` of this project's migrations for ``url`` (default: the settings'
    database URL); creates the directory of a SQLite file."""
    from alembic.config import Config

    from settings import ROOT

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "alembic"))
    cfg.attributes["database_url"] = normalise_url(url or get_settings().sqlalchemy_url)
    if cfg.attributes["database_url"].startswith("sqlite:///"):
        os.makedirs(os.path.dirname(cfg.attributes["database_url"][10:]) or ".", exist_ok=True)
    return cfg


def migrate(url: str | None = None, revision: str = "head") -> None:
    """Bring the schema to the Alembic ``revision`` (``alembic upgrade head`` by default)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def copy_insert_do_nothing(session: Session, model, rows: list[dict], key: str) -> set:
    """Insert ``rows`` (dicts with the same keys, each a column of ``model``) into ``model``'s
    table with PostgreSQL ``COPY`` into a temporary staging table and one
    ``INSERT ... SELECT ... ON CONFLICT (key) DO NOTHING RETURNING key``; returns the keys
    that were new. Idempotent on ``key`` like a plain ``INSERT ... ON CONFLICT DO NOTHING``,
    but the rows travel in COPY's stream format instead of as bound parameters (psycopg 3
    ``Cursor.copy``; PostgreSQL docs, "COPY" and "INSERT ... ON CONFLICT").

    The staging table (``LIKE`` the target, session-private, emptied after each call) is
    created once per database connection. Rows must not repeat a key (the caller dedups).

    Raises:
        NotImplementedError: the session's database is not PostgreSQL.
        psycopg.Error: a row the target table refuses (the transaction is then aborted).
    """
    if session.get_bind().dialect.name != "postgresql":
        raise NotImplementedError("COPY needs PostgreSQL")
    if not rows:
        return set()
    table = model.__table__.name
    stage = f"_stage_{table}"
    cols = list(rows[0])
    col_sql = ", ".join(f'"{c}"' for c in cols)
    conn = session.connection().connection.driver_connection
    with conn.cursor() as cur:
        cur.execute(f'CREATE TEMP TABLE IF NOT EXISTS "{stage}" '
                    f'(LIKE "{table}" INCLUDING DEFAULTS) ON COMMIT DELETE ROWS')
        with cur.copy(f'COPY "{stage}" ({col_sql}) FROM STDIN') as copy:
            for row in rows:
                # a list or dict is a JSON column's value: COPY's text format takes its JSON text
                copy.write_row([json.dumps(row[c]) if isinstance(row[c], (list, dict))
                                else row[c] for c in cols])
        cur.execute(f'INSERT INTO "{table}" ({col_sql}) SELECT {col_sql} FROM "{stage}" '
                    f'ON CONFLICT ("{key}") DO NOTHING RETURNING "{key}"')
        new = {r[0] for r in cur.fetchall()}
        cur.execute(f'TRUNCATE "{stage}"')
    return new
