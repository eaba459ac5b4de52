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
(``"stream": true`` or ``Accept: text/event-stream``; ``_stream_turn``), recorded the same way
once its last token is sent. Opening a session reads the world from the
database once and warms the nearline tier.

The ops endpoints (note rollback, entry history, memory cards, dead letters, the task ledger,
queues) read the database or Redis; they are thin HTTP wrappers over ``memory.ops`` and are
not on the hot path.

Every ``/v1`` route needs a bearer API key (``workers.auth``); the probes ``/healthz``
(liveness), ``/readyz`` (``workers.health``) and ``/metrics`` (``workers.metrics``) do not.
Logs are JSON lines with the session and turn ids (``workers.logging_setup``). Every error
answer a route can give is declared in the OpenAPI document with its body
(``workers.api_errors``); ``tests/test_fuzz.py`` holds the server to it.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, contextmanager
from typing import Literal

import anyio
import numpy as np
from celery import Celery
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, Field, ValidationInfo, field_validator
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError
from sse_starlette import EventSourceResponse
from starlette.background import BackgroundTask

import celeryconfig
from inference import calls
from inference.embedding import get_embedder
from inference.llm import ModelError
from inference.lora import registry as lora_registry
from inference.lora import routing
from memory import evidence, nearline, ops, ranking, retrieval, turns, witnesses
from memory import keys as rkeys
from memory.composite import base_lore, composite_document
from memory.hot_cache import HotCache
from memory.db import session_scope
from memory.safe_input import FiniteFloat, NonBlankStr, RequestModel, SafeStr
from memory.vector_index import (AnnParams, VectorIndex, VectorSync, evidence_scope, load_from_db,
                                 world_scope)
from memory.vector_index import session_scope as session_scope_name
from memory.witnesses import NARRATIVE_SPEAKERS
from memory.worlds import base_entries, world_by_key
from models import GameSession
from settings import get_settings
from tasks.payloads import NARRATIVE_KINDS, TurnPayload
from workers import (archetypes_api, auth, health, logging_setup, lore_guard, metrics, operations,
                     ops_api)
from workers.api_errors import responses
from workers.input_guard import install as install_input_guard
from workers.input_guard import safe_params
from workers.queues import queue_lengths
from workers.relay import TurnRelay
from workers.state import state

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(_app: FastAPI):
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
    state.relay = TurnRelay(_send_kwargs, r, max_pending=s_.outbox_relay_max_pending or 1)
    if s_.outbox_relay_max_pending:
        state.relay.start()
    yield
    state.relay.stop()
    state.hot.stop()
    state.sync.stop()


# Every path and query parameter of every route is checked for NUL and unpaired surrogates,
# and every 422 body is bounded and encodable (workers.input_guard); so every route may
# answer 422, and the document says so (workers.api_errors).
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
metrics.REGISTRY.register(store_metrics)


async def _metrics_auth(request: Request) -> None:
    """``/metrics`` is public unless ``METRICS_PUBLIC=false``; then it needs an API key. The
    key is read here rather than declared (``Security``), so that the OpenAPI document states
    the default: no authentication."""
    if not get_settings().metrics_public:
        auth.require_api_key(await auth.bearer(request))


@app.get("/metrics", tags=["probes"], response_class=Response,
         dependencies=[Depends(_metrics_auth)], responses={
             200: {"description": "Prometheus text exposition format",
                   "content": {"text/plain": {"schema": {"type": "string"}}}},
             **responses(401, e401="only with METRICS_PUBLIC=false: missing or invalid API "
                                   "key")})
def metrics_endpoint() -> Response:
    """Prometheus exposition (``workers.metrics`` lists the families). No API key unless
    ``METRICS_PUBLIC=false``; store readings are cached ``METRICS_CACHE_S`` seconds."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


async def _log_context(request: Request) -> None:
    """Bind the route's session id to this request's log records (async: the context then
    reaches the endpoint's worker thread)."""
    logging_setup.clear()
    logging_setup.bind(session_id=request.path_params.get("session_id"))


# Every route but the probes needs ``Authorization: Bearer <one of API_KEYS>`` (workers.auth);
# any of them may find Redis or the broker down (503, ``_store_unavailable``).
V1_RESPONSES = responses(401, 503)
"""The error answers every ``/v1`` route may give besides 422."""
api = APIRouter(dependencies=[Depends(auth.require_api_key), Depends(_log_context)],
                responses=V1_RESPONSES)


@app.exception_handler(RedisError)
@app.exception_handler(BrokerError)
async def _store_unavailable(_request: Request, exc: Exception) -> JSONResponse:
    """Redis (nearline tier and broker) unreachable: 503 with the reason, so the game backend
    retries the turn; the client reconnects by itself once Redis is back. A turn recorded
    before the outage but not yet sent stays in the outbox (``tasks.dispatch``)."""
    log.warning("redis unavailable: %s", exc)
    return JSONResponse(status_code=503, content={"detail": f"redis unavailable: {exc}"})


@app.exception_handler(OperationalError)
async def _database_unavailable(_request: Request, exc: OperationalError) -> JSONResponse:
    """The database unreachable on a route that reads or writes it (opening a session, the
    archetype routes): 503 with the reason, as the ops routes answer (``ops_api``); the
    engine reconnects by itself once it is back."""
    log.warning("database unavailable: %s", str(exc.orig)[:300])
    return JSONResponse(status_code=503, content={"detail": f"database unavailable: {exc.orig}"})


class SessionIn(RequestModel):
    """``POST /v1/sessions`` body."""

    world: SafeStr = Field(min_length=1, max_length=200,
                           description="world key, e.g. possibly-vampires")
    player_name: NonBlankStr = Field("player", min_length=1, max_length=200)


class SessionOut(BaseModel):
    session_id: str
    world: str
    world_id: int
    characters: list[dict]


class TurnIn(RequestModel):
    """``POST /v1/sessions/{id}/turns`` body: the NPC's entry key and what the player says
    (not blank); ``stream`` asks for the reply as Server-Sent Events (as
    ``Accept: text/event-stream`` does)."""

    npc_id: SafeStr = Field(min_length=1, max_length=300)
    player_text: NonBlankStr = Field(min_length=1, max_length=2000)
    stream: bool = Field(False, description="answer with Server-Sent Events as the model "
                                            "generates (token events, then done)")


class EventIn(RequestModel):
    """``POST /v1/sessions/{id}/events`` body: a turn generated elsewhere.

    ``kind`` says what it is: ``speech`` (default: ``speaker`` said ``text`` to the NPC
    ``npc_id``; ``npc_text`` the NPC's reply if it answered), ``npc_exchange`` (the same
    between two NPCs: ``speaker``, an NPC's entry key, to the listener ``npc_id``),
    ``narration`` (a game master's description) or ``game`` (a game event, "the bridge
    collapses"); the last two need no ``npc_id`` and their ``speaker``, if any, is never a
    character. ``witnesses``: entry keys of the characters present, who witness it besides
    the addressed NPC and a speaking NPC (``memory.witnesses``); ``location``: the entry key of
    the location where it happens, whose occupants in the world's relations witness it too.
    ``event_id`` makes the post
    idempotent within the session (use it when a client may retry); ``created_at`` is when it
    happened (unix seconds, default now). Texts must not be blank.
    """

    kind: Literal["speech", "narration", "game", "npc_exchange"] = Field(
        "speech", description="speech, narration, game or npc_exchange")
    npc_id: SafeStr | None = Field(None, min_length=1, max_length=300, validate_default=True,
                                   description=("the NPC's entry key: who was spoken to; "
                                                "optional for narration and game events"))
    text: NonBlankStr = Field(min_length=1, max_length=2000,
                              description="what was said to the NPC, narrated or happened")
    speaker: NonBlankStr | None = Field(None, min_length=1, max_length=200,
                                        validate_default=True, description=(
        "who said it: an NPC's entry key or name, or anyone; default the session's player "
        "(narration: the narrator, game: none)"))
    npc_text: NonBlankStr | None = Field(None, min_length=1, max_length=8000,
                                         description="the NPC's reply; absent if it did not answer")
    witnesses: list[SafeStr] = Field(default_factory=list, max_length=50, description=(
        "entry keys of the characters present who witness it"))
    location: SafeStr | None = Field(None, min_length=1, max_length=300, description=(
        "entry key of the location where it happens: the characters the world's relations "
        "place there witness it too"))
    event_id: NonBlankStr | None = Field(None, min_length=1, max_length=200,
                                         description="idempotency key of this event in the session")
    created_at: FiniteFloat | None = Field(None, ge=0, le=4102444800,
                                           description="when it happened, unix seconds")

    @field_validator("npc_id")
    @classmethod
    def _npc_for_speech(cls, v, info: ValidationInfo):
        kind = info.data.get("kind", "speech")
        if v is None and kind in ("speech", "npc_exchange"):
            raise ValueError(f"a {kind} event needs npc_id (who was spoken to)")
        return v

    @field_validator("speaker")
    @classmethod
    def _speaker_for_exchange(cls, v, info: ValidationInfo):
        if v is None and info.data.get("kind") == "npc_exchange":
            raise ValueError("an npc_exchange event needs speaker (the speaking NPC's key)")
        return v

    @field_validator("npc_text")
    @classmethod
    def _reply_needs_npc(cls, v, info: ValidationInfo):
        if v is not None and info.data.get("npc_id") is None:
            raise ValueError("npc_text needs npc_id (the NPC who answered)")
        return v


class EventOut(BaseModel):
    turn_id: str
    seq: int
    kind: str = Field("speech", description="speech, narration, game or npc_exchange")
    npc_id: str | None
    npc_name: str | None
    speaker: str = Field(description=(
        "who spoke: the body's speaker, else the player (speech), Narrator or Game"))
    text: str
    npc_text: str | None
    witnesses: list[int] = Field(default_factory=list, description=(
        "lore entry ids of the characters who witnessed it"))
    created_at: float
    duplicate: bool = Field(description="true when event_id had been recorded before")


class TurnOut(BaseModel):
    turn_id: str
    seq: int
    npc_id: str
    npc_name: str
    npc_text: str
    retrieved: list[str] = Field(description="titles of the documents in the prompt")
    evidence: list[str] = Field(default_factory=list, description=(
        "earlier utterances of the session in the prompt: \"[in-game time] Speaker: text\""))
    model: str
    latency_ms: float
    adapter: str | None = Field(None, description="the archetype's LoRA adapter, null: base")
    route: str = Field("", description="why this model (inference.lora.routing)")
    canon: dict | None = Field(None, description=(
        "the lore guard's check (workers.lore_guard, LORE_GUARD): {checked, contradiction, by, "
        "regenerated, resolved}; null when the guard is off"))


class TurnStreamDone(TurnOut):
    """The ``done`` event of a streamed turn: the non-streamed reply plus ``ttft_ms``."""

    ttft_ms: float = Field(description="ms from the model call's start to the first token")


def _fetch(r, world_id: int, session_id: str, entry_ids: list[int],
           item_ids: list[int]) -> tuple[list[dict], list[dict]]:
    """Lore entries (each with its session ``note``, '' when none, and ``note_turns``, the
    turn ids the note folds in) and evidence items of the session, in the given orders, in
    one pipelined Redis round trip; ids missing from Redis are left out."""
    if not entry_ids and not item_ids:
        return [], []
    pipe = r.pipeline(transaction=False)
    for entry_id in entry_ids:
        pipe.get(rkeys.world_entry(world_id, entry_id))
        pipe.get(rkeys.note(session_id, entry_id))
        pipe.get(rkeys.note_turns(session_id, entry_id))
    if item_ids:
        pipe.hmget(rkeys.evidence(session_id), [str(i) for i in item_ids])
    raw = pipe.execute()
    n = 3 * len(entry_ids)
    docs = []
    for raw_doc, raw_note, raw_turns in zip(raw[:n:3], raw[1:n:3], raw[2:n:3]):
        if raw_doc is not None:
            docs.append({**json.loads(raw_doc), "note": raw_note.decode() if raw_note else "",
                         "note_turns": json.loads(raw_turns) if raw_turns else []})
    items = [json.loads(v) for v in raw[-1] if v is not None] if item_ids else []
    return docs, items


def _npc_view(r, session_id: str, npc_entry_id: int, docs: list[dict], items: list[dict],
              own: tuple[str, list[str]] | None = None) -> tuple[list[dict], list[dict], str]:
    """What one NPC may see of fetched documents and evidence items (``memory.witnesses``):
    notes folding in turns it did not witness blanked to the base lore, entries created by
    such turns and items of such turns left out; ``own`` (its own session note and the
    note's turn ids) gives its own note, '' when it folds in such a turn. One Redis round
    trip when any note or creation is to check."""
    own_note, own_turns = own or ("", [])
    docs = [{**d, "note_turns": d.get("note_turns", [])} for d in docs]
    turns_of = {d["id"]: d["note_turns"] for d in docs}
    probe = docs + ([{"id": -1, "note": own_note}] if own_note else [])
    turns_of[-1] = own_turns
    seen = witnesses.scope_documents(r, session_id, npc_entry_id, probe, turns_of)
    note = next((d["note"] for d in seen if d["id"] == -1), "")
    return ([d for d in seen if d["id"] != -1],
            [it for it in items if witnesses.sees_item(it, npc_entry_id)], note)


def _send_kwargs(name: str, kwargs: dict, task_id: str | None = None, **options) -> str:
    """``tasks.dispatch.Send`` over this server's Celery app."""
    return state.celery.send_task(name, kwargs=kwargs, task_id=task_id, **options).id


def _retrieval_weights(s_) -> ranking.Weights:
    return ranking.Weights(relevance=s_.retrieval_weight_relevance,
                           recency=s_.retrieval_weight_recency,
                           importance=s_.retrieval_weight_importance)


@app.get("/healthz", tags=["probes"])
def healthz() -> dict:
    """Liveness (no authentication, no I/O): the process is up; the index size, the vector
    sync position and the hot cache counters."""
    return {"ok": True, "vectors": state.index.size(), "sync_applied": state.sync.applied,
            "hot_cache": state.hot.stats(), "outbox_relay": state.relay.stats()}


class ReadyOut(BaseModel):
    """``/readyz`` body (200 and 503)."""

    ready: bool
    failed: list[str] = Field(description="names of the checks that failed")
    checks: dict[str, dict] = Field(description="each check: ok and its detail")


@app.get("/readyz", tags=["probes"], response_model=ReadyOut,
         responses={503: {"model": ReadyOut, "description": "a dependency failed"}})
def readyz() -> JSONResponse:
    """Readiness (no authentication): broker, nearline Redis, database, model server(s) and
    the vector index are reachable. 200 ``{"ready": true, "checks": {...}}``, or 503 with
    ``failed`` naming the checks that failed and each check's detail."""
    ok, checks = health.readiness(state)
    body = {"ready": ok, "failed": [n for n, c in checks.items() if not c["ok"]],
            "checks": checks}
    return JSONResponse(status_code=200 if ok else 503, content=body)


@api.post("/v1/sessions", response_model=SessionOut, status_code=201,
          responses=responses(400, 404, e404="unknown world"))
def open_session(body: SessionIn) -> SessionOut:
    """Open a session on a world. 404 if the world was never imported."""
    r = nearline.get_redis()
    with session_scope() as s:
        world = world_by_key(s, body.world)
        if world is None:
            raise HTTPException(404, f"unknown world {body.world!r}: import it first")
        entries = base_entries(s, world.id)
        nearline.cache_entries(r, world.id, entries)
        session_id = uuid.uuid4().hex
        s.add(GameSession(id=session_id, world_id=world.id, player_name=body.player_name))
        chars = [{"npc_id": e.key, "name": e.title} for e in entries if e.entity_type == "character"]
        world_id = world.id
        s_ = get_settings()
        every = s_.simulate_every_turns if world.simulate_every_turns is None \
            else world.simulate_every_turns
        minutes = world.tick_game_minutes or s_.tick_game_minutes
    nearline.open_session(r, session_id, world_id, body.player_name, every_turns=every,
                          tick_minutes=minutes)
    return SessionOut(session_id=session_id, world=body.world, world_id=world_id, characters=chars)


@contextmanager
def _turn_errors():
    """Map the shared turn path's errors to HTTP: unknown session, NPC or location 404, a
    target or witness that is not a character, or a location that is not one, 422; Redis or broker outage 503."""
    try:
        yield
    except (turns.UnknownSession, turns.UnknownNpc) as exc:
        raise HTTPException(404, str(exc)) from exc
    except (turns.NotACharacter, turns.NotALocation) as exc:
        raise HTTPException(422, str(exc)) from exc
    except (BrokerError, RedisError, ConnectionError) as exc:
        raise HTTPException(503, f"broker or nearline store unavailable: {exc}") from exc


SSE_EVENT = {"type": "object", "required": ["event", "data"], "description": (
    "one Server-Sent Event of a streamed turn: `token` events, then `done` or `error`"),
    "properties": {
        "event": {"type": "string", "enum": ["token", "done", "error"]},
        "data": {"type": "string", "contentMediaType": "application/json", "description": (
            "token: {text}; done: the reply (TurnStreamDone); error: {status, detail}")}}}
"""The OpenAPI schema of each event of a streamed turn (OpenAPI 3.1: a ``text/event-stream``
schema describes one event)."""


@api.post("/v1/sessions/{session_id}/turns", response_model=TurnOut, responses={
    200: {"content": {"text/event-stream": {"schema": SSE_EVENT}}},
    **responses(400, 404, e404="unknown session or NPC")})
def play_turn(session_id: str, body: TurnIn, request: Request, response: Response):
    """Answer one player turn in character; 404 for an unknown session or NPC, 422 for a
    target that is not a character, 503 when the model server or Redis fails. The turn's
    pipeline tasks are sent by the outbox relay after it is recorded, so a broker outage
    does not fail the turn.

    With ``"stream": true`` in the body or ``Accept: text/event-stream``, the reply comes as
    Server-Sent Events once the model's first token is there (:func:`_stream_turn`); every
    error up to that token is the same JSON answer as without streaming.

    The ``Server-Timing`` header gives the time of each stage in ms: ``context`` (hot cache
    and its Redis check), ``embed`` (the player's line), ``retrieve`` (index searches,
    ranking, the documents and evidence items, their fusion), ``route`` (the NPC's archetype adapter, ``inference.lora.routing``;
    includes loading the adapter on its vLLM server the first time), ``model``
    (generation), ``record`` (Redis and broker). ``model`` in the answer is what the call
    named (the adapter on vLLM), ``adapter`` the archetype adapter or null, ``route`` why."""
    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    mark = [t0]

    def lap(name: str) -> None:
        now = time.perf_counter()
        stages[name] = (now - mark[0]) * 1000
        mark[0] = now

    s_ = get_settings()
    r = nearline.get_redis()
    with _turn_errors():
        hot = state.hot.get(r, session_id, body.npc_id)  # Level 1, checked against Redis
    target = hot.target
    world_id, npc_entry_id, npc = target.world_id, target.npc_entry_id, target.npc
    note = hot.note
    cards_text = hot.cards_text(s_.cards_prompt_chars)
    memories_text = hot.memories_text(s_.memories_prompt_chars)
    recent_npc = hot.recent_npc_turns()
    lap("context")
    query = get_embedder().embed([body.player_text])[0]
    lap("embed")
    n_candidates = max(s_.retrieval_candidates, s_.retrieval_k) + 1
    hits = [(h.lore_entry_id, h.score)
            for h in state.index.search_session(world_id, session_id, query, n_candidates)
            if h.lore_entry_id != npc_entry_id]
    ranked = ranking.rank_for_session(r, session_id, hits, half_life_s=s_.retrieval_half_life_s,
                                      weights=_retrieval_weights(s_))[: s_.retrieval_k]
    # the session's utterances this NPC witnessed (memory.witnesses), minus those the prompt
    # shows as recent turns; its own note's turns come in the same round trip
    pipe = r.pipeline(transaction=False)
    pipe.smembers(rkeys.witnessed(session_id, npc_entry_id))
    pipe.get(rkeys.note_turns(session_id, npc_entry_id))
    raw_seqs, raw_own_turns = pipe.execute()
    seqs = np.fromiter((int(x) for x in raw_seqs), dtype=np.int64)
    shown = {evidence.item_id(t["seq"], part) for t in recent_npc for part in (0, 1)}
    ev_ids = [h.lore_entry_id for h in state.index.search(
        evidence_scope(session_id), query, s_.retrieval_evidence_k,
        include=np.concatenate([seqs * 2, seqs * 2 + 1]),
        exclude=np.fromiter(shown, dtype=np.int64, count=len(shown)))]
    docs, items = _fetch(r, world_id, session_id, [h.lore_entry_id for h in ranked], ev_ids)
    docs, items, note = _npc_view(r, session_id, npc_entry_id, docs, items, own=(
        note, json.loads(raw_own_turns) if raw_own_turns else []))
    # (kind, id, prompt line, value): the budget counts the lines as the prompt shows them
    doc_cands = [("document", d["id"], f"{d['title']}: {(d['note'] or d['content'])[:400]}",
                  (d["title"], (d["note"] or d["content"])[:400])) for d in docs]
    ev_cands = [("evidence", evidence.item_id(it["seq"], it["part"]), evidence.prompt_line(it),
                 evidence.prompt_line(it)) for it in items]
    chosen = [f.item for f in retrieval.merge(doc_cands, ev_cands, text=lambda c: c[2],
                                              key=lambda c: c[:2],
                                              max_chars=s_.retrieval_prompt_chars)]
    retrieved = [c[3] for c in chosen if c[0] == "document"]
    evidence_lines = [c[3] for c in chosen if c[0] == "evidence"]
    lap("retrieve")
    with _turn_errors():  # the NPC's archetype adapter (Redis only; a load the first time)
        route = routing.resolve(r, "dialogue", npc=npc)
    lap("route")
    prompt = {"npc": npc, "note": note, "recent": recent_npc, "retrieved": retrieved,
              "player_text": body.player_text, "cards": cards_text, "memories": memories_text,
              "evidence": evidence_lines, "max_tokens": s_.dialogue_max_tokens}
    if body.stream or _wants_event_stream(request):
        return _stream_turn(r, target, body, route, prompt, t0, stages)
    try:  # a server that lost the adapter (restart) gets it loaded again, once
        reply, route = routing.call_routed(
            r, route, lambda rt: calls.generate_reply(**prompt, route=rt),
            lambda: routing.resolve(r, "dialogue", npc=npc))
        reply, canon = lore_guard.guard_reply(prompt, reply, lambda facts: routing.call_routed(
            r, route, lambda rt: calls.generate_reply(**prompt, route=rt, canon=facts),
            lambda: routing.resolve(r, "dialogue", npc=npc))[0])
    except ModelError as exc:
        raise HTTPException(503, f"model server unavailable: {exc}") from exc
    lap("model")
    metrics.TTFT.labels("reply").observe(stages["model"] / 1000)  # the whole reply at once
    latency_ms = (time.perf_counter() - t0) * 1000
    turn = _record_turn(r, target, body, reply.text, latency_ms, reply.model)
    lap("record")
    response.headers["Server-Timing"] = _server_timing(stages)
    return _turn_out(TurnOut, turn, body, target, _sent(reply.retrieved, retrieved),
                     reply.model, latency_ms, route,
                     evidence=_sent(reply.evidence, evidence_lines), canon=canon)


def _sent(fitted: list | None, chosen: list) -> list:
    """What of ``chosen`` the prompt held (``fitted``, from the reply: fitting the prompt to
    the context window may leave some out), or ``chosen`` when the reply does not say."""
    return chosen if fitted is None else fitted


def _server_timing(stages: dict[str, float]) -> str:
    return ", ".join(f"{k};dur={v:.3f}" for k, v in stages.items())


def _wants_event_stream(request: Request) -> bool:
    """The request's ``Accept`` header names ``text/event-stream``."""
    accept = request.headers.get("accept", "")
    return any(part.split(";")[0].strip().lower() == "text/event-stream"
               for part in accept.split(","))


def _record_turn(r, target: turns.Target, body: TurnIn, npc_text: str, latency_ms: float,
                 model: str, **log_extra) -> TurnPayload:
    """Record a played turn (``turns.record_turn``: Redis, then the pipeline's tasks through
    the outbox relay), put it
    in the hot cache, count and log it; an empty reply is recorded as ``...``.

    Raises:
        HTTPException: 503 Redis failed, or the broker on an inline send (``_turn_errors``).
    """
    with _turn_errors():
        turn = turns.record_turn(r, _send_kwargs, target, player_text=body.player_text,
                                 npc_text=npc_text or "...", latency_ms=latency_ms,
                                 publish=state.relay.submit).turn
    state.hot.record(target.session_id, body.npc_id, turns.turn_kwargs(turn))
    metrics.TURNS.labels("turn").inc()
    logging_setup.bind(turn_id=turn.turn_id, idempotency_key=f"turn:{turn.turn_id}")
    log.info("turn served", extra={"npc_id": body.npc_id, "seq": turn.seq,
                                   "latency_ms": round(latency_ms, 1), "model": model,
                                   **log_extra})
    return turn


def _turn_out(cls: type[TurnOut], turn: TurnPayload, body: TurnIn, target: turns.Target,
              retrieved: list[tuple[str, str]], model: str, latency_ms: float,
              route: routing.ModelRoute, **extra) -> TurnOut:
    return cls(turn_id=turn.turn_id, seq=turn.seq, npc_id=body.npc_id,
               npc_name=target.npc["title"], npc_text=turn.npc_text,
               retrieved=[t for t, _ in retrieved], model=model, latency_ms=latency_ms,
               adapter=route.adapter, route=route.reason, **extra)


def _sse(event: str, data: dict | str) -> dict:
    return {"event": event, "data": data if isinstance(data, str) else json.dumps(data)}


def _next_delta(stream: calls.ReplyStream) -> str | None:
    return next(stream, None)


def _stream_turn(r, target: turns.Target, body: TurnIn, route: routing.ModelRoute,
                 prompt: dict, t0: float, stages: dict[str, float]) -> EventSourceResponse:
    """The streamed half of ``play_turn``: the model call onward, as Server-Sent Events.

    The model is called and read up to its first token before anything is sent, so a model
    that fails before answering is a plain ``503`` JSON answer. Then the response is
    ``text/event-stream``: ``event: token`` ``data: {"text": "<delta>"}`` per delta as the
    model sends it (the deltas joined are ``npc_text``), and at the end one ``event: done``
    whose data is the non-streamed JSON reply plus ``ttft_ms`` (:class:`TurnStreamDone`).
    ``Server-Timing`` has the stages before the stream (``context``, ``embed``,
    ``retrieve``, ``route``) and ``ttft`` (model call to first token, ms).

    The turn is recorded once, after the last token, through ``turns.record_turn`` as a
    non-streamed turn (``latency_ms``: request to last token), before the ``done`` event.
    Failures after the first token end the stream with ``event: error`` ``data: {"status":
    503, "detail": "..."}``: the model failed mid-way (nothing is recorded: the client is
    told the turn failed, as with a 503, and may play it again), or recording failed (Redis
    or the broker).

    Client disconnect: the server notices it at the latest when the model's next token
    arrives, stops reading the model's stream, and records the turn with the text generated
    until then (at least what the client was sent: the player saw those words), logged as
    ``turn served`` with ``disconnected: true``. A turn whose reply was empty is recorded as
    ``...``, as without streaming.
    """
    npc = target.npc
    t_model = time.perf_counter()
    try:  # as generate_reply: an adapter the server lost is loaded again, once
        stream, route = routing.call_routed(
            r, route, lambda rt: calls.stream_reply(**prompt, route=rt),
            lambda: routing.resolve(r, "dialogue", npc=npc))
        first = _next_delta(stream)
    except ModelError as exc:
        raise HTTPException(503, f"model server unavailable: {exc}") from exc
    ttft_s = time.perf_counter() - t_model
    metrics.TTFT.labels("stream").observe(ttft_s)
    timing = _server_timing({**stages, "ttft": ttft_s * 1000})
    left = {"open": True}  # the turn is still to be recorded (or dropped after an error)

    def finish(disconnected: bool) -> TurnStreamDone:
        left["open"] = False
        if disconnected:
            stream.close()
        latency_ms = (time.perf_counter() - t0) * 1000
        reply = stream.reply()
        turn = _record_turn(r, target, body, reply.text, latency_ms, reply.model, stream=True,
                            disconnected=disconnected, ttft_ms=round(ttft_s * 1000, 1))
        return _turn_out(TurnStreamDone, turn, body, target,
                         _sent(reply.retrieved, prompt["retrieved"]), reply.model, latency_ms,
                         route, ttft_ms=ttft_s * 1000,
                         evidence=_sent(reply.evidence, prompt["evidence"]),
                         canon=None if disconnected else lore_guard.check_streamed(prompt,
                                                                                    reply.text))

    async def events() -> AsyncIterator[dict]:
        try:
            delta = first
            while delta is not None:
                yield _sse("token", {"text": delta})
                try:
                    delta = await anyio.to_thread.run_sync(_next_delta, stream)
                except ModelError as exc:
                    left["open"] = False
                    log.warning("model failed mid-stream; turn not recorded: %s", exc,
                                extra={"npc_id": body.npc_id})
                    yield _sse("error", {"status": 503,
                                         "detail": f"model server failed mid-reply: {exc}"})
                    return
            try:
                done = await anyio.to_thread.run_sync(finish, False)
            except HTTPException as exc:
                yield _sse("error", {"status": exc.status_code, "detail": exc.detail})
                return
            yield _sse("done", done.model_dump_json())
        finally:
            if left["open"]:  # the client went away (cancelled or closed mid-stream)
                with anyio.CancelScope(shield=True):
                    try:
                        await anyio.to_thread.run_sync(finish, True)
                    except Exception:  # nobody left to tell
                        log.exception("recording a disconnected stream's turn failed")

    async def on_close(_message) -> None:
        log.info("stream client disconnected", extra={"npc_id": body.npc_id})

    async def finish_if_open() -> None:  # the client left before the first event was written
        if left["open"]:
            await anyio.to_thread.run_sync(finish, True)

    return EventSourceResponse(events(), headers={"Server-Timing": timing},
                               client_close_handler_callable=on_close,
                               background=BackgroundTask(finish_if_open))


@api.post("/v1/sessions/{session_id}/events", response_model=EventOut, status_code=201,
          responses={200: {"model": EventOut, "description": "event_id seen before: the "
                           "earlier turn, nothing recorded"},
                     **responses(400, 404, e404="unknown session or NPC")})
def post_event(session_id: str, body: EventIn, response: Response) -> EventOut:
    """Record a turn that was generated elsewhere (another model, a script, a recorded
    conversation) and run it through the same pipeline as a played turn (same Redis writes,
    same ``analyze_turn`` and ``archive_turn`` tasks), without calling the generation model.

    201 with the new turn; 200 with the earlier turn when ``event_id`` was recorded in this
    session before; 404 for an unknown session or NPC; 422 for a target that is not a
    character or an invalid body; 503 when Redis fails (the event id is then forgotten, so
    posting the event again records and sends it; its turn may already be in the recent turns,
    and the pipeline's idempotency keys hold as its turn id is the same). The tasks go out
    through the outbox relay, so a broker outage alone does not fail the event.
    """
    r = nearline.get_redis()
    with _turn_errors():
        target = (turns.resolve_target(r, session_id, body.npc_id) if body.npc_id is not None
                  else turns.resolve_session(r, session_id))
        speaker = body.speaker if body.kind not in NARRATIVE_KINDS else None
        if body.kind == "npc_exchange" and nearline.resolve_key(
                r, target.world_id, session_id, body.speaker) is None:
            raise HTTPException(422, f"speaker {body.speaker!r} of an npc_exchange is no "
                                     "entry key of this session's world")
        who = turns.resolve_witnesses(r, target, body.witnesses, speaker, body.location)
        rec = turns.record_turn(r, _send_kwargs, target, player_text=body.text,
                                npc_text=body.npc_text or "", speaker=body.speaker,
                                created_at=body.created_at, event_id=body.event_id,
                                kind=body.kind, witnesses=who, publish=state.relay.submit)
    if rec.duplicate:
        response.status_code = 200
    else:
        metrics.TURNS.labels("event").inc()
    turn = rec.turn
    logging_setup.bind(turn_id=turn.turn_id, idempotency_key=f"turn:{turn.turn_id}")
    log.info("event recorded", extra={"npc_id": body.npc_id, "seq": turn.seq,
                                      "kind": body.kind, "event_id": body.event_id,
                                      "duplicate": rec.duplicate})
    kind = turn.kind or "speech"
    return EventOut(turn_id=turn.turn_id, seq=turn.seq, kind=kind,
                    npc_id=body.npc_id if turn.npc_entry_id is not None else None,
                    npc_name=target.npc["title"] if turn.npc_entry_id is not None else None,
                    speaker=turn.speaker or NARRATIVE_SPEAKERS.get(kind) or target.player_name,
                    text=turn.player_text, npc_text=turn.npc_text or None,
                    witnesses=witnesses.turn_witnesses(turn.model_dump()),
                    created_at=turn.created_at, duplicate=rec.duplicate)


def _document_hit(doc: dict, scope: str, turn_ids: dict[int, list[str]]) -> dict:
    """A composite document as ``/search`` and ``/memory`` answer it (rank and score 0)."""
    return {"kind": "document", "rank": 0, "score": 0.0,
            "text": composite_document(base_lore(doc["title"], doc["content"]), doc["note"]),
            "lore_entry_id": doc["id"], "key": doc.get("key"), "title": doc.get("title"),
            "scope": scope, "turn_ids": turn_ids.get(doc["id"], [])}


def _evidence_hit(item: dict) -> dict:
    """An evidence item as ``/search`` and ``/memory`` answer it (rank and score 0)."""
    return {"kind": "evidence", "rank": 0, "score": 0.0, **item}


def _note_turn_ids(session_id: str, entry_ids: list[int]) -> dict[int, list[str]]:
    """``memory.retrieval.note_turn_ids`` from the database; {} (turn ids unknown) while the
    database is unreachable, so search keeps answering from Redis and the index."""
    try:
        with session_scope() as s:
            return retrieval.note_turn_ids(s, session_id, entry_ids)
    except OperationalError as exc:
        log.warning("note turn ids unavailable: %s", exc)
        return {}


def _open_session(r, session_id: str) -> dict:
    sess = nearline.get_session(r, session_id)
    if sess is None:
        raise HTTPException(404, f"unknown session {session_id!r}")
    return sess


@api.get("/v1/sessions/{session_id}/search",
         responses=responses(404, e404="unknown session or NPC"))
def search(session_id: str, q: str, k: int = 3, max_chars: int | None = None,
           npc_id: str | None = None) -> dict:
    """What the session's memory holds for query ``q``: its composite documents (base lore
    and session note) and its evidence (what was said, ``memory.evidence``), fused by
    reciprocal rank (``memory.retrieval.merge``): at most ``k`` hits in rank order and, with
    ``max_chars``, only while the sum of their ``text`` lengths stays within it (an item that
    does not fit is skipped). ``k``: 1..50, or 1..200 with ``max_chars`` (>= 1).

    ``npc_id`` (an NPC's entry key): that NPC's view, as its dialogue prompt gets it
    (``memory.witnesses``): evidence of the turns it witnessed, notes only when it witnessed
    every turn they fold in (else the base lore), creations of turns it witnessed. Without
    it: the whole session (operators).

    Answers ``{"query", "npc_id", "hits": [{"kind": "document", "rank", "score", "text",
    "lore_entry_id", "key", "title", "scope", "turn_ids"} | {"kind": "evidence", "rank",
    "score", "text", "turn_id", "seq", "part", "speaker", "event_id", "created_at",
    "game_minutes", "turn_kind", "witnesses"}]}`` (``score``: the fused score). 404 unknown session or
    NPC, 422 bad ``q``, ``k`` or ``max_chars``, or an ``npc_id`` that is not a character."""
    k_max = 50 if max_chars is None else 200
    if not q.strip() or not 1 <= k <= k_max or (max_chars is not None and max_chars < 1):
        raise HTTPException(422, f"q must be non-empty, 1 <= k <= {k_max} (200 with "
                                 "max_chars) and max_chars >= 1")
    r = nearline.get_redis()
    sess = _open_session(r, session_id)
    npc_entry_id = None
    include = None
    if npc_id is not None:
        with _turn_errors():
            npc_entry_id = turns.resolve_target(r, session_id, npc_id).npc_entry_id
        include = witnesses.witnessed_item_ids(r, session_id, npc_entry_id)
    query = get_embedder().embed([q])[0]
    doc_hits = state.index.search_session(sess["world_id"], session_id, query, k)
    ev_ids = [h.lore_entry_id for h in state.index.search(evidence_scope(session_id), query, k,
                                                          include=include)]
    docs, items = _fetch(r, sess["world_id"], session_id, [h.lore_entry_id for h in doc_hits],
                         ev_ids)
    if npc_entry_id is not None:
        docs, items, _ = _npc_view(r, session_id, npc_entry_id, docs, items)
    scopes = {h.lore_entry_id: h.scope for h in doc_hits}
    turn_ids = _note_turn_ids(session_id, [d["id"] for d in docs if d["note"]]) if docs else {}
    merged = retrieval.merge(
        [_document_hit(d, scopes[d["id"]], turn_ids) for d in docs],
        [_evidence_hit(it) for it in items], text=lambda h: h["text"],
        key=lambda h: (h["kind"], h.get("lore_entry_id", h.get("turn_id")), h.get("part")),
        k=k, max_chars=max_chars)
    return {"query": q, "npc_id": npc_id,
            "hits": [{**f.item, "rank": f.rank, "score": round(f.score, 6)} for f in merged]}


@api.get("/v1/sessions/{session_id}/memory",
         responses=responses(404, e404="unknown session"))
def session_memory(session_id: str) -> dict:
    """Everything the session's memory holds: ``{"documents": [...], "evidence": [...]}``,
    each item as ``/search`` answers it with rank and score 0. The documents are every
    composite document visible to the session (the world's base documents it has no document
    of its own for, then its own documents, by lore entry id); the evidence every item of the
    session by id (``seq``, then part). 404 unknown session."""
    r = nearline.get_redis()
    sess = _open_session(r, session_id)
    world_id = sess["world_id"]
    own = sorted(int(i) for i in state.index.ids(session_scope_name(session_id)))
    base = sorted({int(i) for i in state.index.ids(world_scope(world_id))} - set(own))
    docs, _ = _fetch(r, world_id, session_id, base + own, [])
    scopes = {**{i: world_scope(world_id) for i in base},
              **{i: session_scope_name(session_id) for i in own}}
    turn_ids = _note_turn_ids(session_id, [d["id"] for d in docs]) if docs else {}
    return {"documents": [_document_hit(d, scopes[d["id"]], turn_ids) for d in docs],
            "evidence": [_evidence_hit(it) for it in evidence.all_items(r, session_id)]}


@api.post("/v1/sessions/{session_id}/tick", status_code=202,
          responses=responses(404, e404="unknown session"))
def tick(session_id: str) -> dict:
    """Trigger a world tick for one session now (ops), even if one is pending; returns the
    tick id and the task id (the tick's trace is that task's result in the ledger)."""
    try:
        return operations.tick_session(nearline.get_redis(), _send_kwargs, session_id)
    except ops.NotFound as exc:
        raise HTTPException(404, str(exc)) from exc


# --------------------------------------------------------------------------- ops (database reads)
#
# Operator endpoints over ``memory.ops``: they read the database and are never on the dialogue
# hot path. Unknown things are 404 with a message, a running task is 409, a broker or Redis
# outage is 503.


app.include_router(api)
app.include_router(ops_api.router, responses=V1_RESPONSES,
                   dependencies=[Depends(auth.require_api_key), Depends(_log_context)])
app.include_router(archetypes_api.router, responses=V1_RESPONSES,
                   dependencies=[Depends(auth.require_api_key), Depends(_log_context)])
