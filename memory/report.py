"""What the pipeline did for a session, read from the ledger and the tables (for the demo's
summary, the CLI and tests)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from contract.names import TaskName
from models import LoreEntry, SessionNote, SessionNoteRevision, StoredVector, TaskRecord, Turn

PENDING = ("running", "retrying")


def task_counts(session: Session, session_ids: list[str] | None = None) -> dict[str, dict[str, int]]:
    """Per queue: ``{succeeded, dead, retried, pending}`` task counts (pending: queued,
    running or waiting for a retry).

    ``retried`` counts extra attempts; with ``session_ids``, only tasks of those sessions
    (plus world ticks, which belong to no session).
    """
    q = select(TaskRecord.queue, TaskRecord.status, func.count(), func.sum(TaskRecord.attempts))
    if session_ids is not None:
        q = q.where((TaskRecord.session_id.in_(session_ids)) | (TaskRecord.session_id.is_(None)))
    out: dict[str, dict[str, int]] = {}
    for queue, status, n, attempts in session.execute(q.group_by(TaskRecord.queue, TaskRecord.status)):
        row = out.setdefault(queue or "?", {"succeeded": 0, "dead": 0, "retried": 0, "pending": 0})
        key = "pending" if status in PENDING or status == "queued" else status
        row[key] = row.get(key, 0) + n
        row["retried"] += max(0, int(attempts or 0) - n)
    return out


def pending_tasks(session: Session, session_ids: list[str]) -> int:
    """Tasks of these sessions that are started or waiting for a retry."""
    return session.scalar(select(func.count()).select_from(TaskRecord).where(
        TaskRecord.status.in_(PENDING), TaskRecord.session_id.in_(session_ids))) or 0


def coalesced_updates(session: Session, session_ids: list[str]) -> dict[str, int]:
    """``{"update_tasks": n, "coalesced": m}``: note updates of these sessions, and how many
    were folded into another update's rewrite (each one a model call saved)."""
    rows = session.scalars(select(TaskRecord.result).where(
        TaskRecord.task_name == TaskName.UPDATE_NOTE.value, TaskRecord.status == "succeeded",
        TaskRecord.session_id.in_(session_ids))).all()
    return {"update_tasks": len(rows),
            "coalesced": sum(1 for r in rows if (r or {}).get("status") == "coalesced")}


def creation_stats(session: Session, session_ids: list[str]) -> dict:
    """Entity creations of these sessions: ``{created, matched: {exact, variant, fuzzy,
    embedding}, rejected: {reason: n}, duplicate_rate}`` where the rate is matched /
    (created + matched); ``rejected`` counts creations that failed the grounding rule
    (``memory.entities.create_entity``) by reason."""
    rows = session.scalars(select(TaskRecord.result).where(
        TaskRecord.task_name == TaskName.CREATE_ENTITY.value, TaskRecord.status == "succeeded",
        TaskRecord.session_id.in_(session_ids))).all()
    created = sum(1 for r in rows if (r or {}).get("status") == "created")
    matched: dict[str, int] = {}
    for r in rows:
        if (r or {}).get("status") == "exists":
            how = r.get("matched_by") or "exact"
            matched[how] = matched.get(how, 0) + 1
    rejected: dict[str, int] = {}
    for r in rows:
        if (r or {}).get("status") == "rejected":
            reason = r.get("reason") or "unknown"
            rejected[reason] = rejected.get(reason, 0) + 1
    total = created + sum(matched.values())
    return {"created": created, "matched": matched, "rejected": rejected,
            "duplicate_rate": round(sum(matched.values()) / total, 3) if total else 0.0}


def session_summary(session: Session, session_id: str, embedder: str | None = None) -> dict:
    """Notes, revisions, created entities, archived turns and vectors of one session.

    ``session_vectors`` counts the session scope's stored vectors of ``embedder`` (an
    embedder's ``name``; default: the configured ``EMBEDDER``'s, ``inference.embedding.
    embedder_name``), so vectors another embedder holds beside them are not counted twice.
    """
    from memory.vector_index import session_scope  # imports faiss: only when called

    if embedder is None:
        from inference.embedding import embedder_name

        embedder = embedder_name()
    revisions = session.execute(
        select(SessionNoteRevision, LoreEntry.title, LoreEntry.key)
        .join(SessionNote, SessionNote.id == SessionNoteRevision.note_id)
        .join(LoreEntry, LoreEntry.id == SessionNote.lore_entry_id)
        .where(SessionNote.session_id == session_id)
        .order_by(SessionNoteRevision.id)
    ).all()
    created = session.scalars(select(LoreEntry).where(
        LoreEntry.created_in_session_id == session_id, LoreEntry.is_dynamically_generated.is_(True))).all()
    turns = session.scalar(select(func.count()).select_from(Turn).where(Turn.session_id == session_id))
    vectors = session.scalar(select(func.count()).select_from(StoredVector)
                             .where(StoredVector.scope == session_scope(session_id),
                                    StoredVector.embedder == embedder))
    notes = session.scalar(select(func.count()).select_from(SessionNote)
                           .where(SessionNote.session_id == session_id, SessionNote.version > 0))
    return {
        "notes": notes or 0,
        "revisions": [
            {"title": title, "key": key, "version": rev.version, "cause": rev.cause,
             "event": rev.event_summary, "before": rev.previous_content, "after": rev.content}
            for rev, title, key in revisions
        ],
        "created": [{"title": e.title, "entity_type": e.entity_type, "key": e.key,
                     "content": e.content} for e in created],
        "archived_turns": turns or 0,
        "session_vectors": vectors or 0,
    }


def tick_results(session: Session) -> list[dict]:
    """Finished ``simulate_world`` tasks: their results (NPCs chosen, updates enqueued)."""
    rows = session.scalars(select(TaskRecord).where(
        TaskRecord.task_name == TaskName.SIMULATE_WORLD.value, TaskRecord.status == "succeeded")
        .order_by(TaskRecord.id)).all()
    return [{"session_id": r.session_id, "tick": r.payload.get("tick_id"), **(r.result or {})}
            for r in rows]
