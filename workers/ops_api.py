"""Operations endpoints of the dialogue server (monitoring and repair): note rollback,
an entry's composite document and revisions, an NPC's memory cards, dead letters, the task
ledger, queue status, the export of a session's notes and created entities, the maintenance
triggers (re-analyse a turn, tick the world now), and save slots: fork a session at a turn,
roll it back to a turn (``memory/timeline.py``).

They read the database or Redis (``memory.ops``, and ``workers.operations`` for the actions the
CLI shares) and are not on the dialogue hot path;
unknown things answer 404 with a message, invalid input 422, conflicts 409, outages 503.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel, Field

from memory import nearline, ops, timeline
from memory.db import session_scope
from memory.export import export_session as export_session_doc
from memory.safe_input import RequestModel
from settings import get_settings
from workers import operations
from workers.api.errors import responses
from workers.state import state

router = APIRouter()


INT_ID_MAX = 2**31 - 1
"""The largest id or version the routes take (PostgreSQL ``integer``)."""
DEAD_LETTERS_MAX_LIMIT = 100
"""The most dead letters one listing returns."""
LISTED_PAYLOAD_CHARS = 2000
"""A listed dead letter's payload beyond this many characters (as JSON) is cut; the whole
payload is at ``GET /v1/dead-letters/{id}``."""


class RollbackIn(RequestModel):
    """``POST /v1/sessions/{id}/notes/{key}/rollback`` body: the revision to go back to
    (0 is the empty note)."""

    version: int = Field(ge=0, le=INT_ID_MAX, strict=True,
                         description="revision whose content to restore")


class ForkIn(RequestModel):
    """``POST /v1/sessions/{id}/fork`` body: the turn whose memory the new session starts
    from."""

    at_turn: str = Field(min_length=1, max_length=64, description="turn id (the source's)")


class ForkCounts(BaseModel):
    turns: int
    notes: int
    entities: int
    card_events: int
    evidence_vectors: int
    summary: int


class ForkOut(BaseModel):
    session_id: str = Field(description="the new session")
    forked_from: str
    at_turn: str
    at_seq: int
    world_id: int
    player_name: str
    game_minutes: int = Field(description="the new session's in-game clock (the turn's)")
    counts: ForkCounts = Field(description="what was copied")


class SessionRollbackIn(RequestModel):
    """``POST /v1/sessions/{id}/rollback`` body: the last turn to keep."""

    to_turn: str = Field(min_length=1, max_length=64, description="turn id to roll back to")


class SessionRollbackCounts(BaseModel):
    turns: int
    note_revisions: int
    entities: int
    card_events: int
    summaries: int
    evidence_items: int
    tasks_cancelled: int


class SessionRollbackOut(BaseModel):
    session_id: str
    to_turn: str
    to_seq: int
    epoch: int = Field(description="the session's epoch after the rollback")
    rollback_id: int
    turn_ids: list[str] = Field(description="the turns undone, in turn order")
    counts: SessionRollbackCounts = Field(description="what was undone")


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
    turn_ids: list[str] = Field(default_factory=list,
                                description="the turns whose events the restored note folds in")
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


class CardsOut(BaseModel):
    session_id: str
    npc_id: str
    npc_entry_id: int
    npc_name: str
    relationship: dict = Field(description="relationship card (memory.cards.RelationshipCard)")
    quest: dict = Field(description="quest card (memory.cards.QuestCard)")
    bytes: dict[str, int] = Field(description="stored size of each card (at most 2048)")
    prompt: str = Field(description="what the dialogue prompt gets from the cards")
    events: list[dict] = Field(description="newest applied events, oldest first")


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


class AnalyzeOut(BaseModel):
    session_id: str
    turn_id: str
    source: Literal["redis", "ledger", "archive"] = Field(description="where the turn was found")
    task_name: str
    task_id: str = Field(description="id of the analyze_turn task sent now")


class WorldTickOut(BaseModel):
    world: str | None = Field(description="the world ticked; null: every world")
    world_id: int | None
    task_name: str
    task_id: str = Field(description="id of the world_tick task sent now (its ledger result "
                                     "has the tick's counts)")
    tick_id: str


TaskStatus = Literal["queued", "running", "succeeded", "retrying", "dead", "cancelled"]



@router.post("/v1/sessions/{session_id}/notes/{lore_entry_key}/rollback", response_model=RollbackOut,
             responses=responses(400, 404, 409, e404="unknown session, entry or version",
                                 e409="the note kept changing during the write"))
def rollback_note(session_id: str, lore_entry_key: str, body: RollbackIn) -> RollbackOut:
    """Restore the content a session note had at revision ``version`` as a new revision
    (cause ``rollback``), publish it to the nearline tier and enqueue its re-embedding.

    A repeated identical rollback writes nothing (``status: unchanged``) but publishes and
    re-enqueues the embedding again (harmless: unchanged documents are skipped). 404 for an
    unknown session, entry or version; 409 if the note kept changing during the write.
    """
    try:
        with session_scope() as s:
            res = operations.rollback_note(s, session_id, lore_entry_key, body.version,
                                           state.send)
    except operations.NotPublished as exc:
        raise HTTPException(503, f"note rolled back to version {body.version} "
                                 f"(now version {exc.result['version']}) but not "
                                 f"published: {exc.cause}; repeat the request to publish "
                                 f"it") from exc
    return RollbackOut(**res)


@router.post("/v1/sessions/{session_id}/fork", response_model=ForkOut, status_code=201,
             responses=responses(400, 404, e404="unknown session or turn"))
def fork_session(session_id: str, body: ForkIn) -> dict:
    """A new session whose memory is this one's as of turn ``at_turn`` (a save slot:
    ``memory.timeline.fork_session``); this session is only read. 404 for an unknown session
    or turn."""
    with session_scope() as s:
        return timeline.fork_session(s, nearline.get_redis(), session_id, body.at_turn,
                                     state.send)


@router.post("/v1/sessions/{session_id}/rollback", response_model=SessionRollbackOut,
             responses=responses(400, 404, e404="unknown session or turn"))
def rollback_session(session_id: str, body: SessionRollbackIn) -> dict:
    """Undo everything derived from the turns after ``to_turn`` (loading a save:
    ``memory.timeline.rollback_session``): note revisions, created entities, card events,
    summaries, evidence, queued and dead-lettered tasks of those turns (cancelled), vectors;
    tasks still in flight for them do not apply afterwards (epoch fencing). Returns what was
    undone. 404 for an unknown session or turn."""
    with session_scope() as s:
        return timeline.rollback_session(s, nearline.get_redis(), session_id, body.to_turn,
                                         state.send)


@router.get("/v1/sessions/{session_id}/rollbacks",
            responses=responses(404, e404="unknown session"))
def session_rollbacks(session_id: str) -> list[dict]:
    """The session's rollbacks, oldest first (``memory.timeline.list_rollbacks``); 404 for an
    unknown session."""
    with session_scope() as s:
        return timeline.list_rollbacks(s, session_id)


@router.get("/v1/sessions/{session_id}/entries/{lore_entry_key}", response_model=EntryOut,
            responses=responses(404, e404="unknown session or entry"))
def entry_history(session_id: str, lore_entry_key: str) -> dict:
    """An entity as the session sees it: lore, session note, composite document (what the
    embedder indexes) and the note's revisions, oldest first. 404 for unknown things."""
    with session_scope() as s:
        return ops.entry_with_history(s, session_id, lore_entry_key)


@router.get("/v1/sessions/{session_id}/cards/{npc_id}", response_model=CardsOut,
            responses=responses(404, 500, e404="unknown session or NPC"))
def session_cards(session_id: str, npc_id: str,
                  events: int = Query(20, ge=0, le=500, description="applied events to list")
                  ) -> dict:
    """An NPC's relationship and quest cards in the session, live from Redis, with their
    stored sizes, the dialogue-prompt text they give, and the newest applied events. 404 for
    an unknown session or NPC; 500 with a message if a stored card is corrupt."""
    return ops.session_cards(nearline.get_redis(), session_id, npc_id, events=events,
                             budget_chars=get_settings().cards_prompt_chars)


@router.get("/v1/dead-letters", response_model=list[DeadLetterOut])
def dead_letters(limit: int = Query(50, ge=1, le=DEAD_LETTERS_MAX_LIMIT),
                 task_name: str | None = Query(None, min_length=1, max_length=200),
                 replayed: bool | None = Query(None, description="only replayed / not replayed")
                 ) -> list[dict]:
    """Dead-lettered tasks, newest first, at most 100; a payload longer than 2,000 characters
    (as JSON) is listed as ``{"truncated": true, "chars": n, "preview": "..."}`` (the whole
    one is at ``GET /v1/dead-letters/{id}``)."""
    with session_scope() as s:
        return ops.list_dead_letters(s, limit=limit, task_name=task_name, replayed=replayed,
                                     payload_chars=LISTED_PAYLOAD_CHARS)


_DEAD_LETTER_ID = Path(ge=1, le=INT_ID_MAX)


@router.get("/v1/dead-letters/{dead_letter_id}", response_model=DeadLetterOut,
            responses=responses(404, e404="unknown dead letter"))
def dead_letter(dead_letter_id: int = _DEAD_LETTER_ID) -> dict:
    """One dead letter with its whole payload and error; 404 if unknown."""
    with session_scope() as s:
        return ops.get_dead_letter(s, dead_letter_id)


@router.post("/v1/dead-letters/{dead_letter_id}/replay", response_model=ReplayOut,
             responses=responses(404, 409, e404="unknown dead letter",
                                 e409="the task has no queue"))
def replay_dead_letter(dead_letter_id: int = _DEAD_LETTER_ID) -> dict:
    """Send the dead letter's task again with its stored payload; returns the new task id and
    records ``replayed_at``. Calling it again sends again; the effects are applied once
    because every task is idempotent. 404 if unknown, 503 if the broker is down."""
    with session_scope() as s:
        return operations.replay_dead_letter(s, dead_letter_id, state.send)


@router.get("/v1/sessions/{session_id}/tasks", response_model=list[TaskOut],
            responses=responses(404, e404="unknown session"))
def session_tasks(session_id: str, status: TaskStatus | None = None,
                  limit: int = Query(50, ge=1, le=500)) -> list[dict]:
    """The session's tasks from the task ledger, newest first; 404 for an unknown session."""
    with session_scope() as s:
        return ops.session_tasks(s, session_id, status=status, limit=limit)


@router.post("/v1/tasks/{task_id}/retry", response_model=RetryOut,
             responses=responses(404, 409, e404="unknown task",
                                 e409="the task is running or retrying (see force), or has "
                                      "no queue"))
def retry_task(task_id: str, force: bool = Query(False, description="retry even if running")
               ) -> dict:
    """Send a ledger task again with its recorded payload; returns the new task id.
    404 unknown task id; 409 while the task is running or retrying (``force=true`` overrides,
    for a task stuck as running after its worker died)."""
    with session_scope() as s:
        return operations.retry_task(s, task_id, state.send, force=force)


@router.get("/v1/sessions/{session_id}/export",
            responses=responses(404, e404="unknown session"))
def export_session(session_id: str,
                   revisions: bool = Query(False, description="include each note's revisions")
                   ) -> dict:
    """What the session added to its world: its written notes and the entities created in it
    (format ``npc-memory.session-export``, see ``memory.export``). 404 for an unknown
    session."""
    with session_scope() as s:
        return export_session_doc(s, session_id, revisions=revisions)


@router.post("/v1/sessions/{session_id}/turns/{turn_id}/analyze", response_model=AnalyzeOut,
             status_code=202, responses=responses(404, e404="unknown session or turn"))
def analyze_turn(session_id: str, turn_id: str) -> dict:
    """Send ``npc_memory.analyze_turn`` again for a recorded turn (found in Redis, else in the
    task ledger, else in the turn archive) under a new task id, so it really runs; effects
    already applied for the turn (its note updates, creations and card events, keyed by turn
    id and position) are not applied twice. 404 for an unknown session or turn, 503 if the
    broker or Redis is down."""
    if not 1 <= len(turn_id) <= 64:
        raise HTTPException(422, "turn_id must be 1-64 characters")
    with session_scope() as s:
        return operations.reanalyze_turn(s, nearline.get_redis(), session_id, turn_id,
                                         state.send)


def _world_tick(world_key: str | None, idle_after_s: float | None) -> dict:
    with session_scope() as s:
        return operations.request_world_tick(s, state.send, world_key=world_key,
                                             idle_after_s=idle_after_s)


_IDLE = Query(None, gt=0, allow_inf_nan=False, description="skip sessions idle this many seconds "
                                      "(default SIMULATE_IDLE_AFTER_S)")


@router.post("/v1/world/tick", response_model=WorldTickOut, status_code=202)
def world_tick(idle_after_s: float | None = _IDLE) -> dict:
    """Run a world tick now (``npc_memory.world_tick``, as the beat does): every active
    session gets a simulation within the tick's budget; sessions whose simulation is still
    queued or running are skipped. 503 if the broker is down."""
    return _world_tick(None, idle_after_s)


@router.post("/v1/worlds/{world_key}/tick", response_model=WorldTickOut, status_code=202,
             responses=responses(404, e404="unknown world"))
def world_tick_one(world_key: str, idle_after_s: float | None = _IDLE) -> dict:
    """Run a world tick now for the active sessions of one world only. 404 for an unknown
    world, 503 if the broker is down."""
    return _world_tick(world_key, idle_after_s)


@router.get("/v1/queues", response_model=QueuesOut)
def queues() -> dict:
    """Messages waiting per queue (Redis ``LLEN``) and the workers that answer within 1 s with
    the queues they consume. Never fails: problems are listed in ``errors``."""
    return operations.queues(state.celery)
