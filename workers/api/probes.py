"""The probes of the dialogue server: ``/healthz`` (liveness), ``/readyz`` (readiness,
``workers.health``) and ``/metrics`` (Prometheus, ``workers.metrics``). None needs an API
key, ``/metrics`` unless ``METRICS_PUBLIC=false``.

Importing this module registers :data:`store_metrics` (queue lengths, ledger counts, index
size) with the metrics registry.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse

from memory import ops
from memory.db import session_scope
from settings import get_settings
from workers import auth, health, metrics, operations
from workers.queues import queue_lengths
from workers.api.errors import responses
from workers.api.schemas import ReadyOut
from workers.state import state

router = APIRouter(tags=["probes"])


def _ledger_counts() -> tuple[dict, dict, dict]:
    with session_scope() as s:
        return ops.task_outcome_counts(s), ops.dead_letter_counts(s), ops.task_token_sums(s)


def _queue_lengths() -> dict[str, int]:
    r = operations.broker_redis()
    if r is None:
        raise RuntimeError("queue lengths need a Redis broker")
    return queue_lengths(r)


store_metrics = metrics.StoreCollector(
    read_queues=_queue_lengths, read_ledger=_ledger_counts,
    index_size=lambda: state.index.size() if getattr(state, "index", None) else None,
    ttl_s=lambda: get_settings().metrics_cache_s)
"""The store readings of ``/metrics``, cached ``METRICS_CACHE_S`` seconds."""
metrics.REGISTRY.register(store_metrics)


async def _metrics_auth(request: Request) -> None:
    """``/metrics`` is public unless ``METRICS_PUBLIC=false``; then it needs an API key. The
    key is read here rather than declared (``Security``), so that the OpenAPI document states
    the default: no authentication."""
    if not get_settings().metrics_public:
        auth.require_api_key(await auth.bearer(request))


@router.get("/metrics", response_class=Response,
            dependencies=[Depends(_metrics_auth)], responses={
                200: {"description": "Prometheus text exposition format",
                      "content": {"text/plain": {"schema": {"type": "string"}}}},
                **responses(401, e401="only with METRICS_PUBLIC=false: missing or invalid "
                                      "API key")})
def metrics_endpoint() -> Response:
    """Prometheus exposition (``workers.metrics`` lists the families). No API key unless
    ``METRICS_PUBLIC=false``; store readings are cached ``METRICS_CACHE_S`` seconds."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


@router.get("/healthz")
def healthz() -> dict:
    """Liveness (no authentication, no I/O): the process is up; the index size, the vector
    sync position and the hot cache counters."""
    return {"ok": True, "vectors": state.index.size(), "sync_applied": state.sync.applied,
            "hot_cache": state.hot.stats(), "outbox_relay": state.relay.stats()}


@router.get("/readyz", response_model=ReadyOut,
            responses={503: {"model": ReadyOut, "description": "a dependency failed"}})
def readyz() -> JSONResponse:
    """Readiness (no authentication): broker, nearline Redis, database, model server(s) and
    the vector index are reachable. 200 ``{"ready": true, "checks": {...}}``, or 503 with
    ``failed`` naming the checks that failed and each check's detail."""
    ok, checks = health.readiness(state)
    body = {"ready": ok, "failed": [n for n, c in checks.items() if not c["ok"]],
            "checks": checks}
    return JSONResponse(status_code=200 if ok else 503, content=body)
