"""Readiness checks of the dialogue server (``GET /readyz``).

``/healthz`` only says the process is up. ``/readyz`` checks, each with a 2 s budget, that
what a turn needs is reachable: the Celery broker, the nearline Redis, the database, the model
server(s) of the configured roles, and the in-process vector index with its sync thread.
"""

from __future__ import annotations

import time
from functools import lru_cache

import httpx
import redis
from kombu import Connection
from sqlalchemy import text

from memory.db import get_engine
from memory.nearline import redis_url_for_client
from settings import get_settings

TIMEOUT_S = 2.0


@lru_cache(maxsize=4)
def _redis(url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url_for_client(url), socket_timeout=TIMEOUT_S,
                                socket_connect_timeout=TIMEOUT_S)


def check_broker() -> str:
    """Connect to the Celery broker (``BROKER_URL`` or ``REDIS_URL``); returns its transport."""
    conn = Connection(get_settings().effective_broker_url, connect_timeout=TIMEOUT_S,
                      transport_options={"socket_timeout": TIMEOUT_S})
    try:
        conn.connect()
        return str(conn.transport_cls)
    finally:
        conn.release()


def check_redis() -> str:
    """PING the nearline Redis."""
    _redis(get_settings().effective_redis_url).ping()
    return "PONG"


def check_database() -> str:
    """``SELECT 1`` on the database; returns the dialect name."""
    engine = get_engine()
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return engine.dialect.name


def check_models() -> str:
    """``GET {base_url}/models`` on every OpenAI-compatible model server the roles use
    (hosted Mistral is not probed: its reachability is the provider's).

    Reachable is what counts: a refused or failed connection, or an error status, is not
    ready; a server that accepted the connection but did not answer within the probe's time
    is busy generating (llama.cpp's server answers one request at a time) and counts as up.
    """
    s = get_settings()
    urls = sorted({s.role(r)[1] for r in ("generation", "analysis", "maintenance")
                   if s.role(r)[0] != "mistral"})
    busy = 0
    for url in urls:
        try:
            res = httpx.get(f"{url.rstrip('/')}/models", timeout=TIMEOUT_S,
                            headers={"Authorization": f"Bearer {s.llm_api_key}"})
        except httpx.ReadTimeout:
            busy += 1
            continue
        if res.status_code != 200:
            raise RuntimeError(f"model server /models answered HTTP {res.status_code}")
    if not urls:
        return "hosted API only"
    return f"{len(urls)} model server(s) reachable" + (f", {busy} busy" if busy else "")


def check_index(state) -> str:
    """The vector index is loaded and its sync thread is running."""
    index = getattr(state, "index", None)
    sync = getattr(state, "sync", None)
    if index is None or sync is None:
        raise RuntimeError("vector index not loaded")
    thread = getattr(sync, "_thread", None)
    if thread is None or not thread.is_alive():
        raise RuntimeError("vector sync thread is not running")
    return f"{index.size()} vectors"


def readiness(state) -> tuple[bool, dict[str, dict]]:
    """Run every check; returns ``(all ok, {name: {"ok", "detail", "ms"}})``. A failed check's
    detail is its exception text (never a URL's credentials: URLs are not echoed)."""
    checks = {"broker": check_broker, "redis": check_redis, "database": check_database,
              "model_server": check_models, "vector_index": lambda: check_index(state)}
    out: dict[str, dict] = {}
    for name, fn in checks.items():
        t0 = time.perf_counter()
        try:
            out[name] = {"ok": True, "detail": fn()}
        except Exception as exc:  # noqa: BLE001 - any failure makes the server unready
            out[name] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:300]}
        out[name]["ms"] = round((time.perf_counter() - t0) * 1000, 1)
    return all(c["ok"] for c in out.values()), out
