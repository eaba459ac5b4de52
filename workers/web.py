"""The thin synchronous dialogue server (``uvicorn workers.web:app``).

A turn is answered from the in-process hot cache (Level 1, ``memory.hot_cache``: per session
and NPC the resolved target, recent turns, session note and cards, checked against Redis with
one pipelined round trip per turn), the nearline tier (Redis) and the in-process vector index
only: the turn endpoint makes no database query. The cards enter the prompt within
``CARDS_PROMPT_CHARS`` characters; the retrieved documents and the session's evidence (earlier
utterances, ``memory.evidence``), fused by reciprocal rank (``memory.retrieval``), within
``RETRIEVAL_PROMPT_CHARS``. It records the turn in Redis and enqueues
``npc_memory.analyze_turn`` and ``npc_memory.archive_turn`` for the asynchronous pipeline
(``memory.turns``). The event
endpoint records a turn generated elsewhere through the same function, without calling the
model, and makes no database query either. A turn can be streamed as Server-Sent Events
(``"stream": true`` or ``Accept: text/event-stream``; ``workers.api.stream``), recorded the
same way once its last token is sent. Opening a session reads the world from the
database once and warms the nearline tier.

The ops endpoints (note rollback, entry history, memory cards, dead letters, the task ledger,
queues) read the database or Redis; they are thin HTTP wrappers over ``memory.ops`` and are
not on the hot path.

Every ``/v1`` route needs a bearer API key (``workers.auth``); the probes ``/healthz``
(liveness), ``/readyz`` (``workers.health``) and ``/metrics`` (``workers.metrics``) do not.
Logs are JSON lines with the session and turn ids (``workers.logging_setup``). Every error
answer a route can give is declared in the OpenAPI document with its body
(``workers.api.errors``); ``tests/test_fuzz.py`` holds the server to it.

This module assembles the app: the lifespan that builds the per-process state
(``workers.state``), the request-latency middleware, the error handlers and the routers of
``workers.api`` (routes and bodies by area) and of ``workers.ops_api`` and
``workers.archetypes_api``.
"""

from __future__ import annotations

import logging
import os
import time
from contextlib import asynccontextmanager

from celery import Celery
from fastapi import Depends, FastAPI, Request

import celeryconfig
from inference.embedding import get_embedder
from inference.lora import registry as lora_registry
from memory import nearline
from memory.db import session_scope
from memory.hot_cache import HotCache
from memory.vector_index import AnnParams, VectorIndex, VectorSync, load_from_db
from settings import get_settings
from workers import archetypes_api, auth, logging_setup, metrics, ops_api
from workers.api import errors, events, probes, search, sessions, turns
from workers.api.deps import V1_DEPENDENCIES, V1_RESPONSES
from workers.api.errors import responses
from workers.api.probes import store_metrics  # noqa: F401 - tests read it here
from workers.input_guard import install as install_input_guard
from workers.input_guard import safe_params
from workers.relay import TurnRelay
from workers.state import state

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(_app: FastAPI):
    """Build the per-process state (``workers.state``: vector index and its sync thread,
    Celery app, hot cache, outbox relay) on start and stop its threads on shutdown."""
    logging_setup.configure_logging(os.environ.get("HONCHO_PROCESS_NAME") or "web")
    auth.check_configured()  # no keys and API_AUTH not off: refuse to start
    embedder = get_embedder()
    r = nearline.get_redis()
    state.index = VectorIndex(embedder.dim, embedder.name, AnnParams.from_settings())  # only this embedder's vectors
    state.sync = VectorSync(state.index, r)
    state.sync.start_id()
    with session_scope() as s:
        loaded = load_from_db(state.index, s)
        chains = lora_registry.publish_all(s, r)  # the router reads Redis only
    log.info("vector index loaded: %d vectors; %d archetype chains published", loaded, chains)
    state.sync.start()
    state.celery = Celery("npc_memory-web")
    state.celery.config_from_object(celeryconfig)
    s_ = get_settings()
    state.hot = HotCache(max_entries=s_.hot_cache_max_entries, ttl_s=s_.hot_cache_ttl_s,
                         turns=s_.recent_turns, evict_interval_s=s_.hot_cache_evict_interval_s)
    state.hot.start()
    state.relay = TurnRelay(state.send, r, max_pending=s_.outbox_relay_max_pending or 1)
    if s_.outbox_relay_max_pending:
        state.relay.start()
    yield
    state.relay.stop()
    state.hot.stop()
    state.sync.stop()


# Every path and query parameter of every route is checked for NUL and unpaired surrogates,
# and every 422 body is bounded and encodable (workers.input_guard); so every route may
# answer 422, and the document says so (workers.api.errors).
app = FastAPI(title="NPC dialogue server", version="0.1.0", lifespan=lifespan,
              dependencies=[Depends(safe_params)], responses=responses(422))
install_input_guard(app)


@app.middleware("http")
async def _measure(request: Request, call_next):
    """Request latency per route template (``npc_http_request_duration_seconds``)."""
    t0 = time.perf_counter()
    status = 500
    try:
        response = await call_next(request)
        status = response.status_code
        return response
    finally:
        route = request.scope.get("route")
        metrics.observe_request(request.method, getattr(route, "path", None), status,
                                time.perf_counter() - t0)


errors.install(app)  # domain errors -> 404/409/422/500/503, once for every route

app.include_router(probes.router)
for area in (sessions, turns, events, search):
    app.include_router(area.router, responses=V1_RESPONSES, dependencies=V1_DEPENDENCIES)
app.include_router(ops_api.router, responses=V1_RESPONSES,
                   dependencies=[*V1_DEPENDENCIES,
                                 Depends(errors.outage_detail(errors.OPS_OUTAGE))])
app.include_router(archetypes_api.router, responses=V1_RESPONSES, dependencies=V1_DEPENDENCIES)
