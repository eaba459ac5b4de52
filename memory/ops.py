"""Operations on the memory pipeline (the operator's surface for
monitoring and repair): roll a session note back, inspect an entity's composite document and
revision history, show an NPC's memory cards, list/inspect/replay dead letters, list and retry
a session's tasks from the ledger, report queue lengths and workers, and trigger maintenance
work: re-analyse a recorded turn, run a world tick now.

Plain functions over a SQLAlchemy ``Session`` (and a Redis client or a ``send`` callable where
they need one): no Celery app and no HTTP here, so the dialogue server (``workers.web``), the
CLI (``workers.cli``) and tests call the same code. Every returned value is JSON-ready (ISO 8601
strings for times). These functions are for operators: none of them is on the dialogue hot path.

``send`` is ``(task_name, kwargs) -> task_id``: the caller's way to put a task on the broker
(``contract.send.Send``, e.g. ``celery_sender(app)``). Re-sending a task is safe because every
task of the system is idempotent (turn ids, idempotency keys, content hashes, tick ids).

Errors: ``NotFound`` (a ``LookupError``) for an unknown session, entry, version, dead letter
or task; ``TaskBusy`` for a task that is still running; ``NotReplayable`` for a task name that
has no queue; ``memory.notes.NoteConflict`` when a rollback keeps losing the version race.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contract.names import Queues, TaskName
from contract.registry import TASKS
from contract.send import Send
from memory import cards as memory_cards
from memory import nearline
from memory.composite import base_lore, composite_document
from memory.notes import NoteConflict, commit_revision, note_turn_ids
from memory.report import PENDING
from models import (
    DeadLetter, GameSession, LoreEntry, SessionNote, SessionNoteRevision, TaskRecord, Turn, World,
)
from models.base import utcnow

TASK_STATUSES = ("queued", "running", "succeeded", "retrying", "dead", "cancelled")

# kombu's Redis transport keeps messages of priority p > 0 in "<queue>\x06\x16<p>" lists.
_KOMBU_PRIORITY_SEP = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (3, 6, 9)


class NotFound(LookupError):
    """An unknown session, entry, version, dead letter or task (the message says which)."""


class TaskBusy(Exception):
    """The task is ``running`` or ``retrying``: retrying it now could run it twice at once."""


class NotReplayable(Exception):
    """The task name has no queue in ``contract.registry.TASKS`` (nothing would consume it)."""


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt is not None else None


# --------------------------------------------------------------------------- sessions, entries


def _game(session: Session, session_id: str) -> GameSession:
    game = session.get(GameSession, session_id)
    if game is None:
        raise NotFound(f"unknown session {session_id!r}")
    return game


def _note_of(session: Session, session_id: str, entry_id: int) -> SessionNote | None:
    return session.scalar(select(SessionNote).where(
        SessionNote.session_id == session_id, SessionNote.lore_entry_id == entry_id))


def _entry(session: Session, game: GameSession, key: str) -> LoreEntry:
    """The entry ``key`` as the session sees it: base lore of the session's world, or an entity
    created in this session (or one this session holds a note about).

    Raises:
        NotFound: no such entry in the world, or it was created in another session.
    """
    entry = session.scalar(select(LoreEntry).where(
        LoreEntry.world_id == game.world_id, LoreEntry.key == key))
    if entry is None:
        raise NotFound(f"unknown lore entry {key!r} in session {game.id!r}")
    if (entry.is_dynamically_generated and entry.created_in_session_id != game.id
            and _note_of(session, game.id, entry.id) is None):
        raise NotFound(f"lore entry {key!r} belongs to another session")
    return entry


def _revision_dict(rev: SessionNoteRevision) -> dict:
    return {"version": rev.version, "cause": rev.cause, "event_summary": rev.event_summary,
            "previous_content": rev.previous_content, "content": rev.content,
            "turn_id": rev.turn_id, "task_id": rev.task_id, "created_at": _iso(rev.created_at)}


def entry_with_history(session: Session, session_id: str, lore_entry_key: str) -> dict:
    """An entity as one session sees it: its lore, its session note, the composite document
    the embedder indexes for it, and the note's revisions (oldest first).

    Returns:
        ``{"lore_entry": {id, key, title, content, entity_type, tags, archetype,
        is_dynamically_generated, created_in_session_id, created_by_turn_id},
        "note": {"content": str, "version": int} ("" and 0 when the session has no note),
        "composite_document": str,
        "revisions": [{version, cause, event_summary, previous_content, content, turn_id,
        task_id, created_at}]}``

    Raises:
        NotFound: unknown session, or no such entry in the session's world.
    """
    game = _game(session, session_id)
    entry = _entry(session, game, lore_entry_key)
    note = _note_of(session, session_id, entry.id)
    revisions = [] if note is None else session.scalars(
        select(SessionNoteRevision).where(SessionNoteRevision.note_id == note.id)
        .order_by(SessionNoteRevision.version)).all()
    content = note.content if note is not None else ""
    return {
        "lore_entry": {
            "id": entry.id, "key": entry.key, "title": entry.title, "content": entry.content,
            "entity_type": entry.entity_type, "tags": list(entry.tags or []),
            "archetype": entry.archetype,
            "is_dynamically_generated": bool(entry.is_dynamically_generated),
            "created_in_session_id": entry.created_in_session_id,
            "created_by_turn_id": entry.created_by_turn_id,
        },
        "note": {"content": content, "version": note.version if note is not None else 0},
        "composite_document": composite_document(base_lore(entry.title, entry.content), content),
        "revisions": [_revision_dict(r) for r in revisions],
    }


# --------------------------------------------------------------------------- memory cards


def session_cards(r, session_id: str, npc_key: str, *, events: int = 20,
                  budget_chars: int = 600) -> dict:
    """An NPC's memory cards in one session, live from the nearline tier (Redis only: the
    relationship and quest cards).

    Returns:
        ``{"session_id", "npc_id" (entry key), "npc_entry_id", "npc_name",
        "relationship": card dict, "quest": card dict, "bytes": {"relationship": int,
        "quest": int} (stored sizes, each <= memory.cards.MAX_CARD_BYTES),
        "prompt": the text the dialogue prompt gets within ``budget_chars``,
        "events": the newest ``events`` applied events, oldest first}``.

    Raises:
        NotFound: unknown session, or no such entry in the session's world or creations.
        memory.cards.CardCorrupt: a stored card is invalid.
    """
    sess = nearline.get_session(r, session_id)
    if sess is None:
        raise NotFound(f"unknown session {session_id!r}")
    entry_id = nearline.resolve_key(r, sess["world_id"], session_id, npc_key)
    entry = nearline.get_entry(r, sess["world_id"], entry_id) if entry_id is not None else None
    if entry is None:
        raise NotFound(f"unknown NPC {npc_key!r} in session {session_id!r}")
    cards = memory_cards.get_cards(r, session_id, entry_id)
    applied = memory_cards.applied_events(r, session_id, entry_id)
    return {
        "session_id": session_id, "npc_id": npc_key, "npc_entry_id": entry_id,
        "npc_name": entry["title"],
        "relationship": cards.relationship.model_dump(exclude_none=True),
        "quest": cards.quest.model_dump(exclude_none=True),
        "bytes": {"relationship": memory_cards.card_bytes(cards.relationship),
                  "quest": memory_cards.card_bytes(cards.quest)},
        "prompt": memory_cards.render_cards(cards, budget_chars),
        "events": applied[-events:] if events > 0 else [],
    }


# --------------------------------------------------------------------------- rollback


def rollback_note(session: Session, session_id: str, lore_entry_key: str, version: int,
                  *, max_attempts: int = 3) -> dict:
    """Give a session note the content it had at revision ``version``, as a NEW revision.

    The new revision has version current+1, cause ``rollback``, event summary
    ``"rollback to version N"``, the previous text as ``previous_content`` and idempotency key
    ``"rollback:{note_id}:{current}->{N}"``. Version 0 is the empty note. The write is fenced
    like ``memory.notes.apply_note_update`` (``UPDATE ... WHERE version = current``): if another
    writer moved the note meanwhile, the note is read again and the rollback re-applied on top,
    so no concurrent update is lost and history stays linear.

    Nothing is written (status ``unchanged``) when the note already has that revision's text:
    a repeated identical rollback, or a rollback to the current version, is a no-op.

    Commits its own transactions (reads are ended before the fenced write, as in
    ``memory.notes``). The caller then publishes the note to the nearline tier
    (``memory.nearline.set_note``) and enqueues ``npc_memory.embed`` for
    ``(lore_entry_id, session_id)``; doing so again after ``unchanged`` is harmless and repairs
    a publication that was interrupted.

    Returns:
        ``{"status": "written" | "unchanged", "session_id", "lore_entry_id",
        "lore_entry_key", "note_id" (None when the session never had a note),
        "version" (the note's version now), "previous_version", "rolled_back_to",
        "content" (the note's text now), "turn_ids" (the turns that text folds in:
        ``memory.notes.note_turn_ids``)}``

    Raises:
        ValueError: ``version`` is negative.
        NotFound: unknown session, entry, or a version the note never had.
        NoteConflict: the note changed under every one of ``max_attempts`` writes.
    """
    if version < 0:
        raise ValueError("version must be >= 0")
    game = _game(session, session_id)
    entry = _entry(session, game, lore_entry_key)
    entry_id, entry_key = entry.id, entry.key
    out = {"session_id": session_id, "lore_entry_id": entry_id, "lore_entry_key": entry_key,
           "rolled_back_to": version}
    for _ in range(max_attempts):
        note = _note_of(session, session_id, entry_id)
        if note is None:
            session.rollback()
            if version != 0:
                raise NotFound(f"{entry_key!r} has no note in session {session_id!r}, "
                                  f"so no version {version}")
            return {**out, "status": "unchanged", "note_id": None, "version": 0,
                    "previous_version": 0, "content": "", "turn_ids": []}
        note_id, current, before = note.id, note.version, note.content
        if version > current:
            session.rollback()
            raise NotFound(f"note of {entry_key!r} has no version {version} "
                              f"(current version is {current})")
        if version == 0:
            target, target_turn = "", None
        else:
            rev = session.scalar(select(SessionNoteRevision).where(
                SessionNoteRevision.note_id == note_id, SessionNoteRevision.version == version))
            if rev is None:
                session.rollback()
                raise NotFound(f"note of {entry_key!r} has no revision {version}")
            target, target_turn = rev.content, rev.turn_id
        session.rollback()  # end the read transaction before the fenced write
        if target == before:
            return {**out, "status": "unchanged", "note_id": note_id, "version": current,
                    "previous_version": current, "content": before,
                    "turn_ids": note_turn_ids(session, session_id, entry_id)}
        if not commit_revision(
            session, note_id=note_id, version=current, before=before, after=target,
            turn_id=target_turn, event_summary=f"rollback to version {version}",
            cause="rollback", idempotency_key=f"rollback:{note_id}:{current}->{version}",
        ):
            continue  # another writer got there first, or the same rollback did: read again
        return {**out, "status": "written", "note_id": note_id, "version": current + 1,
                "previous_version": current, "content": target,
                "turn_ids": note_turn_ids(session, session_id, entry_id)}
    raise NoteConflict(f"note of {entry_key!r} in session {session_id!r} changed during "
                       f"{max_attempts} rollback attempts")


# --------------------------------------------------------------------------- dead letters


def _dead_letter_dict(d: DeadLetter) -> dict:
    return {"id": d.id, "task_id": d.task_id, "task_name": d.task_name, "queue": d.queue,
            "payload": dict(d.payload or {}), "error": d.error, "created_at": _iso(d.created_at),
            "replayed_at": _iso(d.replayed_at)}


def list_dead_letters(session: Session, *, limit: int = 50, task_name: str | None = None,
                      replayed: bool | None = None, payload_chars: int | None = None
                      ) -> list[dict]:
    """Dead letters, newest first; optionally only one task name, and only replayed
    (``replayed=True``) or never replayed (``False``) ones. With ``payload_chars``, a payload
    longer than that as JSON is replaced by ``{"truncated": True, "chars": n, "preview":
    <its first payload_chars characters of JSON>}`` (:func:`get_dead_letter` has it whole).

    Returns:
        ``[{id, task_id, task_name, queue, payload, error, created_at, replayed_at}]``

    Raises:
        ValueError: ``limit`` < 1.
    """
    if limit < 1:
        raise ValueError("limit must be >= 1")
    q = select(DeadLetter)
    if task_name:
        q = q.where(DeadLetter.task_name == task_name)
    if replayed is not None:
        q = q.where(DeadLetter.replayed_at.is_not(None) if replayed
                    else DeadLetter.replayed_at.is_(None))
    rows = session.scalars(q.order_by(DeadLetter.id.desc()).limit(limit))
    out = [_dead_letter_dict(d) for d in rows]
    if payload_chars is not None:
        for d in out:
            text = json.dumps(d["payload"], ensure_ascii=False)
            if len(text) > payload_chars:
                d["payload"] = {"truncated": True, "chars": len(text),
                                "preview": text[:payload_chars]}
    return out


def get_dead_letter(session: Session, dead_letter_id: int) -> dict:
    """One dead letter, whole (same shape as an item of ``list_dead_letters``).

    Raises:
        NotFound: no dead letter with that id.
    """
    d = session.get(DeadLetter, dead_letter_id)
    if d is None:
        raise NotFound(f"unknown dead letter {dead_letter_id}")
    return _dead_letter_dict(d)


def _resend(name: str, payload: dict | None, send: Send) -> str:
    if name not in TASKS:
        raise NotReplayable(f"task {name!r} has no queue in contract.registry.TASKS")
    return send(name, dict(payload or {}))


def replay_dead_letter(session: Session, dead_letter_id: int, send: Send) -> dict:
    """Send a dead letter's task again, by name, with its stored payload (kwargs), and record
    ``replayed_at``. The caller commits (after the send, so a failed send records nothing).

    Replaying again re-sends again: the effects stay single because every task is idempotent
    (a turn id is archived once, a note revision's idempotency key is unique, ...). A payload
    that was invalid is dead-lettered again under the new task id.

    Returns:
        ``{"dead_letter_id", "task_name", "queue", "replayed_task_id" (the dead one),
        "task_id" (the new one), "replayed_at"}``

    Raises:
        NotFound: no dead letter with that id.
        NotReplayable: its task name has no queue.
        Whatever ``send`` raises (broker down); nothing is recorded then.
    """
    d = session.get(DeadLetter, dead_letter_id)
    if d is None:
        raise NotFound(f"unknown dead letter {dead_letter_id}")
    new_id = _resend(d.task_name, d.payload, send)
    d.replayed_at = utcnow()
    session.flush()
    return {"dead_letter_id": d.id, "task_name": d.task_name,
            "queue": TASKS[d.task_name].queue.value, "replayed_task_id": d.task_id,
            "task_id": new_id, "replayed_at": _iso(d.replayed_at)}


# --------------------------------------------------------------------------- task ledger


def _task_dict(t: TaskRecord) -> dict:
    return {"task_id": t.task_id, "task_name": t.task_name, "queue": t.queue, "status": t.status,
            "attempts": t.attempts, "error": t.error, "tokens_used": t.tokens_used,
            "started_at": _iso(t.started_at), "finished_at": _iso(t.finished_at),
            "target": t.target}


def session_tasks(session: Session, session_id: str, *, status: str | None = None,
                  limit: int = 50) -> list[dict]:
    """The ledger's tasks of one session, newest first (by start time).

    Returns:
        ``[{task_id, task_name, queue, status, attempts, error, tokens_used, started_at,
        finished_at, target}]``

    Raises:
        NotFound: unknown session.
        ValueError: ``status`` not one of ``TASK_STATUSES``, or ``limit`` < 1.
    """
    if status is not None and status not in TASK_STATUSES:
        raise ValueError(f"status must be one of {', '.join(TASK_STATUSES)}")
    if limit < 1:
        raise ValueError("limit must be >= 1")
    _game(session, session_id)
    q = select(TaskRecord).where(TaskRecord.session_id == session_id)
    if status is not None:
        q = q.where(TaskRecord.status == status)
    rows = session.scalars(q.order_by(TaskRecord.started_at.desc(), TaskRecord.id.desc())
                           .limit(limit))
    return [_task_dict(t) for t in rows]


def retry_task(session: Session, task_id: str, send: Send, *, force: bool = False) -> dict:
    """Send a ledger task again, by name, with its recorded payload; returns the new task id.

    A task still ``running`` or ``retrying`` is refused unless ``force`` (for a row left
    ``running`` by a worker that died without the broker redelivering). Effects stay single
    because tasks are idempotent. The new execution gets its own ledger row.

    Returns:
        ``{"retry_of": task_id, "task_name", "queue", "previous_status", "task_id" (new)}``

    Raises:
        NotFound: no ledger row for ``task_id``.
        TaskBusy: the task is running or retrying and ``force`` is False.
        NotReplayable: its task name has no queue.
    """
    t = session.scalar(select(TaskRecord).where(TaskRecord.task_id == task_id))
    if t is None:
        raise NotFound(f"unknown task {task_id!r}")
    if t.status in PENDING and not force:
        raise TaskBusy(f"task {task_id!r} is {t.status}; wait for it to finish")
    new_id = _resend(t.task_name, t.payload, send)
    return {"retry_of": t.task_id, "task_name": t.task_name,
            "queue": TASKS[t.task_name].queue.value, "previous_status": t.status,
            "task_id": new_id}


# --------------------------------------------------------------------------- counts (metrics)


def task_outcome_counts(session: Session) -> dict[tuple[str, str], int]:
    """Ledger rows per ``(task_name, status)`` (status as in :data:`TASK_STATUSES`): one
    ``GROUP BY`` over ``task_records``. The workers' task outcomes for ``/metrics`` come from
    here, so they count every worker process without a metrics endpoint in each."""
    rows = session.execute(select(TaskRecord.task_name, TaskRecord.status, func.count())
                           .group_by(TaskRecord.task_name, TaskRecord.status))
    return {(name, status): int(n) for name, status, n in rows}


def task_token_sums(session: Session) -> dict[str, int]:
    """Model tokens (prompt + completion) the ledger records per task name: the workers'
    model usage per kind of task, summed over every worker process."""
    rows = session.execute(select(TaskRecord.task_name, func.coalesce(func.sum(
        TaskRecord.tokens_used), 0)).group_by(TaskRecord.task_name))
    return {name: int(n) for name, n in rows}


def dead_letter_counts(session: Session) -> dict[tuple[str, bool], int]:
    """Dead letters per ``(task_name, replayed)``: one ``GROUP BY`` over ``dead_letters``."""
    replayed = DeadLetter.replayed_at.is_not(None)
    rows = session.execute(select(DeadLetter.task_name, replayed, func.count())
                           .group_by(DeadLetter.task_name, replayed))
    return {(name, bool(was)): int(n) for name, was, n in rows}


# --------------------------------------------------------------------------- queues, workers


def queue_lengths(r, names: Iterable[str] | None = None) -> dict[str, int]:
    """Messages waiting in each queue of a Redis broker (``LLEN``, plus kombu's priority
    sub-lists). ``names`` defaults to every queue of ``contract.names.Queues``. Messages that a
    worker has already reserved are not waiting and are not counted.

    Raises:
        redis.RedisError: the broker does not answer.
    """
    names = [q.value for q in Queues] if names is None else list(names)
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
        for p in _KOMBU_PRIORITY_STEPS:
            pipe.llen(f"{name}{_KOMBU_PRIORITY_SEP}{p}")
    counts = pipe.execute()
    step = 1 + len(_KOMBU_PRIORITY_STEPS)
    return {name: int(sum(counts[i * step:(i + 1) * step])) for i, name in enumerate(names)}


def queue_status(r, active_queues: Callable[[], dict | None] | None = None) -> dict:
    """Queue lengths and the workers that answer, with the queues each consumes.

    ``r`` is a client of the Redis broker (None when the broker is not Redis: lengths are then
    omitted). ``active_queues`` is e.g. ``app.control.inspect(timeout=1.0).active_queues``;
    it returns ``{worker: [{"name": queue, ...}]}`` or None when no worker answers.
    Never raises: a broker or inspect failure is reported in ``errors``.

    Returns:
        ``{"queues": {name: int | None}, "workers": {worker: {"queues": [name]}},
        "errors": [str]}``
    """
    errors: list[str] = []
    queues: dict[str, int | None] = {q.value: None for q in Queues}
    if r is None:
        errors.append("queue lengths need a Redis broker")
    else:
        try:
            queues = queue_lengths(r)
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            errors.append(f"queue lengths: {type(exc).__name__}: {exc}")
    workers: dict[str, dict[str, Any]] = {}
    if active_queues is not None:
        try:
            for name, qs in sorted((active_queues() or {}).items()):
                workers[name] = {"queues": sorted(q.get("name", "") for q in qs or [])}
        except Exception as exc:  # noqa: BLE001
            errors.append(f"workers: {type(exc).__name__}: {exc}")
    return {"queues": queues, "workers": workers, "errors": errors}


# --------------------------------------------------------------------------- maintenance triggers

ANALYZE_TASK = TaskName.ANALYZE_TURN
WORLD_TICK_TASK = TaskName.WORLD_TICK


def find_turn(session: Session, r, session_id: str, turn_id: str) -> tuple[dict, str]:
    """A recorded turn of a session as ``analyze_turn`` kwargs, and where it was found.

    Looked up in order: the session's recent turns in Redis (the last ``TURNS_CAP``) and the
    turn outbox (``"redis"``); the task ledger's recorded payload of the turn's own
    ``analyze_turn``/``archive_turn`` task (``"ledger"``); the turn archive (``"archive"``).
    The archive keeps the speaker, event id and in-game clock of turns archived since
    migration 0009; older rows have the speaker as a ``"name: "`` prefix of ``player_text``
    and ``game_minutes`` 0.

    Raises:
        NotFound: unknown session, or no turn ``turn_id`` in that session.
    """
    from contract.send import TURN_TASKS, turn_task_id

    game = _game(session, session_id)
    for doc in reversed(nearline.recent_turns(r, session_id, nearline.TURNS_CAP)):
        if doc.get("turn_id") == turn_id:
            return doc, "redis"
    raw = r.hget(nearline.OUTBOX_PAYLOADS, turn_id)
    if raw is not None:
        doc = json.loads(raw)
        if doc.get("session_id") == session_id:
            return doc, "redis"
    payloads = session.scalars(select(TaskRecord.payload).where(
        TaskRecord.task_id.in_([turn_task_id(n, turn_id) for n in TURN_TASKS]))).all()
    for p in payloads:
        if p and p.get("session_id") == session_id and p.get("turn_id") == turn_id:
            return dict(p), "ledger"
    t = session.get(Turn, turn_id)
    if t is None or t.session_id != session_id:
        raise NotFound(f"unknown turn {turn_id!r} in session {session_id!r}")
    doc = {"turn_id": t.id, "session_id": t.session_id, "world_id": game.world_id, "seq": t.seq,
           "npc_entry_id": t.npc_entry_id, "player_text": t.player_text, "npc_text": t.npc_text,
           "latency_ms": t.latency_ms, "created_at": t.created_at.timestamp(),
           "game_minutes": t.game_minutes or 0}
    doc.update({k: v for k, v in (("speaker", t.speaker), ("event_id", t.event_id),
                                  ("kind", t.kind), ("source", t.source)) if v})
    if t.witnesses is not None:
        doc["witnesses"] = list(t.witnesses)
    if doc["npc_entry_id"] is None:
        del doc["npc_entry_id"]
    return doc, "archive"


def reanalyze_turn(session: Session, r, session_id: str, turn_id: str,
                   send: Send) -> dict:
    """Send ``npc_memory.analyze_turn`` again for a recorded turn (:func:`find_turn`).

    The task id is new (``npc_memory.analyze_turn:{turn_id}:re-{12 hex}``): the turn's own id
    ``npc_memory.analyze_turn:{turn_id}`` is skipped by ``tasks.base`` once it succeeded, so
    re-sending it would run nothing. The analysis model is asked again, but the effects keep
    the turn's idempotency keys: note updates ``{turn_id}:u{i}``, creations ``{turn_id}:c{i}``
    and card events ``{turn_id}:r{i}``/``{turn_id}:q{i}`` that the first analysis applied are
    not applied again; only positions it did not produce (it failed, was dead-lettered, or
    produced fewer) take effect now.

    Returns:
        ``{"session_id", "turn_id", "source": "redis"|"ledger"|"archive", "task_name",
        "task_id"}``.

    Raises:
        NotFound: unknown session or turn.
        pydantic.ValidationError: the stored turn does not fit ``TurnPayload`` any more.
    """
    from contract.payloads import TurnPayload
    from contract.send import turn_task_id

    doc, source = find_turn(session, r, session_id, turn_id)
    kwargs = TurnPayload.model_validate(doc).model_dump(mode="json", exclude_none=True)
    task_id = f"{turn_task_id(ANALYZE_TASK, turn_id)}:re-{uuid.uuid4().hex[:12]}"
    send(ANALYZE_TASK, kwargs, task_id)
    return {"session_id": session_id, "turn_id": turn_id, "source": source,
            "task_name": ANALYZE_TASK, "task_id": task_id}


def request_world_tick(session: Session, send: Send, *, world_key: str | None = None,
                       idle_after_s: float | None = None) -> dict:
    """Send ``npc_memory.world_tick`` now: every session active within ``idle_after_s``
    seconds (default ``SIMULATE_IDLE_AFTER_S``), or only those of world ``world_key``, gets
    one ``simulate_world`` within the tick's budget (sessions whose simulation is still queued
    or running are skipped, as on the beat's ticks). The tick id is the task id
    (``manual-world-{32 hex}``); the tick's counts are its ledger result.

    Returns:
        ``{"world": key or None, "world_id", "task_name", "task_id", "tick_id"}``.

    Raises:
        NotFound: unknown world key.
    """
    from contract.payloads import TickPayload

    world_id = None
    if world_key is not None:
        world = session.scalar(select(World).where(World.key == world_key))
        if world is None:
            raise NotFound(f"unknown world {world_key!r}")
        world_id = world.id
    payload = TickPayload(idle_after_s=idle_after_s, world_id=world_id)
    task_id = f"manual-world-{uuid.uuid4().hex}"
    send(WORLD_TICK_TASK, payload.model_dump(mode="json", exclude_none=True), task_id)
    return {"world": world_key, "world_id": world_id, "task_name": WORLD_TICK_TASK,
            "task_id": task_id, "tick_id": task_id}
