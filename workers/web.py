"""The thin synchronous dialogue server (``uvicorn workers.web:app``).

A turn is answered from the nearline tier (Redis) and the in-process vector index only: the
turn endpoint makes no database query. It records the turn in Redis and enqueues
``npc_memory.analyze_turn`` and ``npc_memory.archive_turn`` for the asynchronous pipeline.
Opening a session reads the world from the database once and warms the nearline tier.

The ops endpoints (note rollback, entry history, dead letters, the task ledger, queues) read
the database; they are thin HTTP wrappers over ``memory.ops`` and are not on the hot path.
"""

from __future__ import annotations

import logging
import time
import uuid
from contextlib import asynccontextmanager
from typing import Literal

from celery import Celery
from fastapi import FastAPI, HTTPException, Query
from kombu.exceptions import OperationalError as BrokerError
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from sqlalchemy.exc import OperationalError as DatabaseError

import celeryconfig
from inference import calls
from inference.embedding import get_embedder
from inference.llm import ModelError
from memory import nearline, ops
from memory.db import session_scope
from memory.notes import NoteConflict
from memory.vector_index import VectorIndex, VectorSync, load_from_db
from memory.worlds import base_entries, world_by_key
from models import GameSession
from settings import get_settings
from tasks.payloads import EmbedPayload, SimulationPayload, TurnPayload

log = logging.getLogger(__name__)


class State:
    """Per-process state of the dialogue server."""

    index: VectorIndex
    sync: VectorSync
    celery: Celery


state = State()


@asynccontextmanager
async def lifespan(_app: FastAPI):
    embedder = get_embedder()
    r = nearline.get_redis()
    state.index = VectorIndex(embedder.dim)
    state.sync = VectorSync(state.index, r)
    state.sync.start_id()
    with session_scope() as s:
        loaded = load_from_db(state.index, s)
    log.info("vector index loaded: %d vectors", loaded)
    state.sync.start()
    state.celery = Celery("npc_memory-web")
    state.celery.config_from_object(celeryconfig)
    yield
    state.sync.stop()


app = FastAPI(title="NPC dialogue server", version="0.1.0", lifespan=lifespan)


class SessionIn(BaseModel):
    """``POST /v1/sessions`` body."""

    model_config = ConfigDict(extra="forbid")
    world: str = Field(min_length=1, max_length=200, description="world key, e.g. possibly-vampires")
    player_name: str = Field("player", min_length=1, max_length=200)


class SessionOut(BaseModel):
    session_id: str
    world: str
    world_id: int
    characters: list[dict]


class TurnIn(BaseModel):
    """``POST /v1/sessions/{id}/turns`` body: the NPC's entry key and what the player says."""

    model_config = ConfigDict(extra="forbid")
    npc_id: str = Field(min_length=1, max_length=300)
    player_text: str = Field(min_length=1, max_length=2000)


class TurnOut(BaseModel):
    turn_id: str
    seq: int
    npc_id: str
    npc_name: str
    npc_text: str
    retrieved: list[str]
    model: str
    latency_ms: float


def _send(name: str, payload) -> None:
    state.celery.send_task(name, kwargs=payload.model_dump(mode="json"))


@app.get("/healthz")
def healthz() -> dict:
    """Liveness plus the index size and vector sync position."""
    return {"ok": True, "vectors": state.index.size(), "sync_applied": state.sync.applied}


@app.post("/v1/sessions", response_model=SessionOut, status_code=201)
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
    nearline.open_session(r, session_id, world_id, body.player_name)
    return SessionOut(session_id=session_id, world=body.world, world_id=world_id, characters=chars)


@app.post("/v1/sessions/{session_id}/turns", response_model=TurnOut)
def play_turn(session_id: str, body: TurnIn) -> TurnOut:
    """Answer one player turn in character; 404 for an unknown session or NPC, 422 for a
    target that is not a character, 503 when the model server fails."""
    t0 = time.perf_counter()
    s_ = get_settings()
    r = nearline.get_redis()
    sess = nearline.get_session(r, session_id)
    if sess is None:
        raise HTTPException(404, f"unknown session {session_id!r}")
    world_id = sess["world_id"]
    npc_entry_id = nearline.resolve_key(r, world_id, session_id, body.npc_id)
    npc = nearline.get_entry(r, world_id, npc_entry_id) if npc_entry_id is not None else None
    if npc is None:
        raise HTTPException(404, f"unknown NPC {body.npc_id!r} in this session's world")
    if npc["entity_type"] != "character":
        raise HTTPException(422, f"{body.npc_id!r} is a {npc['entity_type']}, not a character")
    note = nearline.get_note(r, session_id, npc_entry_id)
    recent = nearline.recent_turns(r, session_id, s_.recent_turns)
    recent_npc = [t for t in recent if t["npc_entry_id"] == npc_entry_id]
    query = get_embedder().embed([body.player_text])[0]
    hits = [h for h in state.index.search_session(world_id, session_id, query, s_.retrieval_k + 1)
            if h.lore_entry_id != npc_entry_id][: s_.retrieval_k]
    retrieved = []
    for h in hits:
        doc = nearline.get_entry(r, world_id, h.lore_entry_id)
        if doc is not None:
            text = nearline.get_note(r, session_id, h.lore_entry_id) or doc["content"]
            retrieved.append((doc["title"], text))
    try:
        reply = calls.generate_reply(npc, note, recent_npc, retrieved, body.player_text)
    except ModelError as exc:
        raise HTTPException(503, f"model server unavailable: {exc}") from exc
    latency_ms = (time.perf_counter() - t0) * 1000
    seq = nearline.next_turn_seq(r, session_id)
    turn = TurnPayload(
        turn_id=uuid.uuid4().hex, session_id=session_id, world_id=world_id, seq=seq,
        npc_entry_id=npc_entry_id, player_text=body.player_text, npc_text=reply.text or "...",
        latency_ms=latency_ms, created_at=time.time(),
    )
    nearline.record_turn(r, session_id, turn.model_dump())
    _send("npc_memory.analyze_turn", turn)
    _send("npc_memory.archive_turn", turn)
    return TurnOut(turn_id=turn.turn_id, seq=seq, npc_id=body.npc_id, npc_name=npc["title"],
                   npc_text=turn.npc_text, retrieved=[t for t, _ in retrieved], model=reply.model,
                   latency_ms=latency_ms)


@app.get("/v1/sessions/{session_id}/search")
def search(session_id: str, q: str, k: int = 3) -> dict:
    """Top-``k`` composite documents of the session for query ``q`` (titles, scores, scope)."""
    if not q.strip() or not 1 <= k <= 50:
        raise HTTPException(422, "q must be non-empty and 1 <= k <= 50")
    r = nearline.get_redis()
    sess = nearline.get_session(r, session_id)
    if sess is None:
        raise HTTPException(404, f"unknown session {session_id!r}")
    query = get_embedder().embed([q])[0]
    hits = state.index.search_session(sess["world_id"], session_id, query, k)
    out = []
    for h in hits:
        doc = nearline.get_entry(r, sess["world_id"], h.lore_entry_id) or {}
        out.append({"lore_entry_id": h.lore_entry_id, "key": doc.get("key"),
                    "title": doc.get("title"), "score": round(h.score, 4), "scope": h.scope})
    return {"query": q, "hits": out}


@app.post("/v1/sessions/{session_id}/tick", status_code=202)
def tick(session_id: str) -> dict:
    """Trigger a world tick for one session now (ops); returns the tick id."""
    if nearline.get_session(nearline.get_redis(), session_id) is None:
        raise HTTPException(404, f"unknown session {session_id!r}")
    tick_id = f"manual-{uuid.uuid4().hex}"
    _send("npc_memory.simulate_world", SimulationPayload(session_id=session_id, tick_id=tick_id))
    return {"tick_id": tick_id}


# --------------------------------------------------------------------------- ops (database reads)
#
# Operator endpoints over ``memory.ops``: they read the database and are never on the dialogue
# hot path. Unknown things are 404 with a message, a running task is 409, a broker or Redis
# outage is 503.


class RollbackIn(BaseModel):
    """``POST /v1/sessions/{id}/notes/{key}/rollback`` body: the revision to go back to
    (0 is the empty note)."""

    model_config = ConfigDict(extra="forbid")
    version: int = Field(ge=0, strict=True, description="revision whose content to restore")


class RollbackOut(BaseModel):
    status: Literal["written", "unchanged"]
    session_id: str
    lore_entry_id: int
    lore_entry_key: str
    note_id: int | None
    version: int = Field(description="the note's version now")
    previous_version: int
    rolled_back_to: int
    content: str
    embed_task_id: str | None = Field(None, description="the npc_memory.embed task enqueued")


class RevisionOut(BaseModel):
    version: int
    cause: str
    event_summary: str
    previous_content: str
    content: str
    turn_id: str | None
    task_id: str | None
    created_at: str | None


class EntryOut(BaseModel):
    lore_entry: dict
    note: dict
    composite_document: str
    revisions: list[RevisionOut]


class DeadLetterOut(BaseModel):
    id: int
    task_id: str
    task_name: str
    queue: str
    payload: dict
    error: str
    created_at: str | None
    replayed_at: str | None


class ReplayOut(BaseModel):
    dead_letter_id: int
    task_name: str
    queue: str
    replayed_task_id: str
    task_id: str = Field(description="id of the task sent now")
    replayed_at: str | None


class TaskOut(BaseModel):
    task_id: str
    task_name: str
    queue: str
    status: str
    attempts: int
    error: str | None
    tokens_used: int
    started_at: str | None
    finished_at: str | None
    target: str


class RetryOut(BaseModel):
    retry_of: str
    task_name: str
    queue: str
    previous_status: str
    task_id: str = Field(description="id of the task sent now")


class QueuesOut(BaseModel):
    queues: dict[str, int | None]
    workers: dict[str, dict]
    errors: list[str]


TaskStatus = Literal["started", "succeeded", "retrying", "failed", "dead_lettered"]


def _send_kwargs(name: str, kwargs: dict) -> str:
    """``memory.ops.Send`` over this server's Celery app."""
    return state.celery.send_task(name, kwargs=kwargs).id


class _OpsErrors:
    """Map ``memory.ops`` errors to HTTP: NotFound 404, busy/conflict 409, broker or
    database outage 503."""

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, HTTPException):
            return False
        if isinstance(exc, ops.NotFound):
            raise HTTPException(404, str(exc)) from exc
        if isinstance(exc, (ops.TaskBusy, ops.NotReplayable, NoteConflict)):
            raise HTTPException(409, str(exc)) from exc
        if isinstance(exc, (BrokerError, RedisError, ConnectionError)):
            raise HTTPException(503, f"broker unavailable: {exc}") from exc
        if isinstance(exc, DatabaseError):
            raise HTTPException(503, f"database unavailable: {exc.orig}") from exc
        return False


@app.post("/v1/sessions/{session_id}/notes/{lore_entry_key}/rollback", response_model=RollbackOut)
def rollback_note(session_id: str, lore_entry_key: str, body: RollbackIn) -> RollbackOut:
    """Restore the content a session note had at revision ``version`` as a new revision
    (cause ``rollback``), publish it to the nearline tier and enqueue its re-embedding.

    A repeated identical rollback writes nothing (``status: unchanged``) but publishes and
    re-enqueues the embedding again (harmless: unchanged documents are skipped). 404 for an
    unknown session, entry or version; 409 if the note kept changing during the write.
    """
    with _OpsErrors():
        with session_scope() as s:
            res = ops.rollback_note(s, session_id, lore_entry_key, body.version)
        embed_task_id = None
        if res["note_id"] is not None:
            try:
                nearline.set_note(nearline.get_redis(), session_id, res["lore_entry_id"],
                                  res["content"])
                # state.celery rather than tasks.base.enqueue: Celery's current_app is per
                # thread, and in FastAPI's handler threads it is Celery's fallback default app
                # (configured only because its loader happens to import ``celeryconfig``).
                payload = EmbedPayload(lore_entry_id=res["lore_entry_id"], session_id=session_id)
                embed_task_id = state.celery.send_task(
                    "npc_memory.embed", kwargs=payload.model_dump(mode="json")).id
            except (BrokerError, RedisError, ConnectionError) as exc:
                raise HTTPException(503, f"note rolled back to version {body.version} "
                                         f"(now version {res['version']}) but not published: "
                                         f"{exc}; repeat the request to publish it") from exc
    return RollbackOut(**res, embed_task_id=embed_task_id)


@app.get("/v1/sessions/{session_id}/entries/{lore_entry_key}", response_model=EntryOut)
def entry_history(session_id: str, lore_entry_key: str) -> dict:
    """An entity as the session sees it: lore, session note, composite document (what the
    embedder indexes) and the note's revisions, oldest first. 404 for unknown things."""
    with _OpsErrors(), session_scope() as s:
        return ops.entry_with_history(s, session_id, lore_entry_key)


@app.get("/v1/dead-letters", response_model=list[DeadLetterOut])
def dead_letters(limit: int = Query(50, ge=1, le=500),
                 task_name: str | None = Query(None, min_length=1, max_length=200),
                 replayed: bool | None = Query(None, description="only replayed / not replayed")
                 ) -> list[dict]:
    """Dead-lettered tasks, newest first."""
    with _OpsErrors(), session_scope() as s:
        return ops.list_dead_letters(s, limit=limit, task_name=task_name, replayed=replayed)


@app.get("/v1/dead-letters/{dead_letter_id}", response_model=DeadLetterOut)
def dead_letter(dead_letter_id: int) -> dict:
    """One dead letter with its whole payload and error; 404 if unknown."""
    with _OpsErrors(), session_scope() as s:
        return ops.get_dead_letter(s, dead_letter_id)


@app.post("/v1/dead-letters/{dead_letter_id}/replay", response_model=ReplayOut)
def replay_dead_letter(dead_letter_id: int) -> dict:
    """Send the dead letter's task again with its stored payload; returns the new task id and
    records ``replayed_at``. Calling it again sends again; the effects are applied once
    because every task is idempotent. 404 if unknown, 503 if the broker is down."""
    with _OpsErrors(), session_scope() as s:
        return ops.replay_dead_letter(s, dead_letter_id, _send_kwargs)


@app.get("/v1/sessions/{session_id}/tasks", response_model=list[TaskOut])
def session_tasks(session_id: str, status: TaskStatus | None = None,
                  limit: int = Query(50, ge=1, le=500)) -> list[dict]:
    """The session's tasks from the task ledger, newest first; 404 for an unknown session."""
    with _OpsErrors(), session_scope() as s:
        return ops.session_tasks(s, session_id, status=status, limit=limit)


@app.post("/v1/tasks/{task_id}/retry", response_model=RetryOut)
def retry_task(task_id: str, force: bool = Query(False, description="retry even if started")
               ) -> dict:
    """Send a ledger task again with its recorded payload; returns the new task id.
    404 unknown task id; 409 while the task is started or retrying (``force=true`` overrides,
    for a task stuck as started after its worker died)."""
    with _OpsErrors(), session_scope() as s:
        return ops.retry_task(s, task_id, _send_kwargs, force=force)


def _broker_redis():
    url = get_settings().effective_broker_url
    if url.startswith(("redis://", "rediss://", "redis+socket://", "unix://")):
        return nearline.get_redis(url)
    return None


@app.get("/v1/queues", response_model=QueuesOut)
def queues() -> dict:
    """Messages waiting per queue (Redis ``LLEN``) and the workers that answer within 1 s with
    the queues they consume. Never fails: problems are listed in ``errors``."""
    return ops.queue_status(_broker_redis(),
                            lambda: state.celery.control.inspect(timeout=1.0).active_queues())
