"""The archive (PostgreSQL in production): turns keyed by turn id, and the memory cards
(snapshots keyed by session, NPC and kind, events keyed by event id); every write is an
idempotent insert or a revision-fenced upsert."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timezone

from sqlalchemy import update
from sqlalchemy.orm import Session

from memory import keys as rkeys
from memory.db import copy_insert_do_nothing, dialect_insert
from memory.safe_input import clean_text
from models import CardEvent, NpcCard, Turn
from models.base import utcnow


def archive_turns(session: Session, turns: list[dict]) -> int:
    """Insert turns in one multi-row ``INSERT ... ON CONFLICT (id) DO NOTHING``; returns how
    many were new (``len(insert_turns(...))``). Safe under concurrent and repeated delivery of
    the same turn."""
    return len(insert_turns(session, turns))


def insert_turns(session: Session, turns: list[dict], copy: bool | None = None) -> set[str]:
    """Insert turns idempotently on the turn id (the archive tier: batched, asynchronous);
    returns the ids that were new. A turn id given twice in ``turns`` is written once.

    On PostgreSQL a batch of at least ``ARCHIVE_COPY_MIN`` turns goes through ``COPY`` into a
    staging table and one ``INSERT ... SELECT ... ON CONFLICT (id) DO NOTHING RETURNING id``
    (``memory.db.copy_insert_do_nothing``); smaller batches, and SQLite, use one multi-row
    ``INSERT ... ON CONFLICT (id) DO NOTHING RETURNING id``. ``copy`` forces either path
    (benchmarks compare them).

    Each dict has ``turn_id, session_id, seq, npc_entry_id, player_text, npc_text,
    latency_ms, created_at`` (unix seconds; ``npc_entry_id`` None for an event addressed to no NPC) and optionally ``speaker`` (None: the session's
    player), ``event_id``, ``game_minutes``, ``kind``, ``witnesses`` and ``source`` (the fields of ``contract.payloads.TurnPayload``),
    each kept in its own column: the archived turn is the session's evidence
    (``memory.evidence``). NUL and unpaired surrogates in the texts (which PostgreSQL text
    columns refuse) are stored as U+FFFD.

    Raises:
        NotImplementedError: a database other than PostgreSQL or SQLite.
    """
    if not turns:
        return set()
    turns = list({t["turn_id"]: t for t in turns}.values())
    rows = [{
        "id": t["turn_id"], "session_id": t["session_id"], "seq": t["seq"],
        "npc_entry_id": t.get("npc_entry_id"),
        "player_text": clean_text(t["player_text"]), "npc_text": clean_text(t["npc_text"]),
        "latency_ms": t.get("latency_ms", 0.0),
        "speaker": clean_text(t["speaker"]) if t.get("speaker") else None,
        "event_id": clean_text(t["event_id"]) if t.get("event_id") else None,
        "game_minutes": t.get("game_minutes", 0),
        "kind": t.get("kind"),
        "witnesses": sorted({int(w) for w in t["witnesses"]}) if t.get("witnesses") is not None
        else None,
        "source": clean_text(t["source"]) if t.get("source") else None,
        "created_at": datetime.fromtimestamp(t["created_at"], tz=timezone.utc),
    } for t in turns]
    if copy is None:
        from settings import get_settings

        copy = (session.get_bind().dialect.name == "postgresql"
                and len(rows) >= get_settings().archive_copy_min > 0)
    if copy:
        return copy_insert_do_nothing(session, Turn, rows, "id")
    stmt = (dialect_insert(session, Turn)
            .on_conflict_do_nothing(index_elements=["id"]).returning(Turn.id))
    # An executemany with RETURNING: SQLAlchemy's "insertmanyvalues" sends it as one multi-row
    # INSERT per up to 1000 rows from a statement compiled once (a .values(rows) statement is
    # compiled anew for every batch). Counted from RETURNING: rowcount is -1 here on psycopg.
    return {row[0] for row in session.execute(stmt, rows).all()}


def mark_undone(session: Session, r, turns: Iterable[tuple[str, str]]) -> int:
    """Set ``rolled_back_at`` on the archived turns among ``turns`` (``(session_id,
    turn_id)`` pairs) that a rollback of their session undid (the Redis set of
    ``memory.fencing``; one ``SMISMEMBER`` per session): a turn archived after its rollback
    stays out of the evidence. Returns how many were marked."""
    undone: list[str] = []
    by_session: dict[str, list[str]] = {}
    for session_id, turn_id in turns:
        by_session.setdefault(session_id, []).append(turn_id)
    for sid, ids in by_session.items():
        if r.exists(rkeys.undone(sid)):
            undone += [t for t, hit in zip(ids, r.smismember(rkeys.undone(sid), ids)) if hit]
    if undone:
        session.execute(update(Turn).where(Turn.id.in_(undone)).values(rolled_back_at=utcnow()))
    return len(undone)


def _applied_at(event: dict) -> datetime:
    ts = event.get("applied_at")
    return datetime.fromtimestamp(ts, tz=timezone.utc) if ts else datetime.now(timezone.utc)


CARD_KINDS = ("relationship", "quest")


def archive_cards(session: Session, session_id: str, npc_entry_id: int, cards: dict[str, dict],
                  events: list[dict]) -> dict:
    """Archive card snapshots and the events applied to them (Redis -> PostgreSQL);
    one item of :func:`archive_card_batch`.

    Args:
        cards: ``{"relationship"|"quest": card dict}``, each with its ``rev``; a snapshot
            replaces the stored one only if its ``rev`` is higher (late or repeated archive
            tasks never roll a card back).
        events: applied events as ``memory.cards.apply_events`` reports them (``event_id``,
            ``card``, ``kind``, ``turn_id``, ``seq``, ...); an event id already archived is
            skipped.

    Returns:
        ``{"snapshots": rows written, "events": new events}``.

    Raises:
        ValueError: an unknown card kind.
        NotImplementedError: a database other than PostgreSQL or SQLite.
    """
    return archive_card_batch(session, [{"session_id": session_id, "npc_entry_id": npc_entry_id,
                                         "cards": cards, "events": events}])[0]


def archive_card_batch(session: Session, items: list[dict]) -> list[dict]:
    """Archive the card snapshots and events of many ``archive_cards`` messages with two
    statements: one multi-row ``INSERT ... ON CONFLICT (session_id, npc_entry_id, kind) DO
    UPDATE ... WHERE stored.rev < new.rev`` for the snapshots (a higher ``rev`` wins) and one
    multi-row ``INSERT ... ON CONFLICT (event_id) DO NOTHING`` for the events.

    Args:
        items: ``{"session_id", "npc_entry_id", "cards": {kind: card dict with rev},
            "events": [applied event dict]}`` each (the fields of
            ``contract.payloads.CardArchivePayload``).

    Within the batch, the snapshot with the highest ``rev`` per (session, NPC, kind) is the
    one written (the first of equal revs), and an event id given twice is inserted once; it
    is counted for the item that carried it first.

    Returns:
        one ``{"snapshots": rows written, "events": new events}`` per item, in order.

    Raises:
        ValueError: an unknown card kind (nothing written).
        NotImplementedError: a database other than PostgreSQL or SQLite.
    """
    best: dict[tuple, tuple[int, dict]] = {}  # (session, npc, kind) -> (item index, row)
    event_rows: dict[str, tuple[int, dict]] = {}  # event id -> (item index, row)
    now = datetime.now(timezone.utc)
    for i, item in enumerate(items):
        sid, npc = item["session_id"], int(item["npc_entry_id"])
        for kind, card in item["cards"].items():
            if kind not in CARD_KINDS:
                raise ValueError(f"unknown card kind {kind!r}")
            key = (sid, npc, kind)
            row = {"session_id": sid, "npc_entry_id": npc, "kind": kind,
                   "rev": int(card.get("rev", 0)), "card": card, "updated_at": now}
            if key not in best or row["rev"] > best[key][1]["rev"]:
                best[key] = (i, row)
        for e in item["events"]:
            event_rows.setdefault(e["event_id"], (i, {
                "event_id": e["event_id"], "session_id": sid, "npc_entry_id": npc,
                "card": e["card"], "kind": e["kind"], "turn_id": e.get("turn_id"),
                "seq": e.get("seq"), "data": e, "created_at": _applied_at(e)}))
    out = [{"snapshots": 0, "events": 0} for _ in items]
    if best:
        ins = dialect_insert(session, NpcCard).values([row for _, row in best.values()])
        stmt = ins.on_conflict_do_update(
            index_elements=["session_id", "npc_entry_id", "kind"],
            set_={"rev": ins.excluded.rev, "card": ins.excluded.card,
                  "updated_at": ins.excluded.updated_at},
            where=NpcCard.rev < ins.excluded.rev,
        ).returning(NpcCard.session_id, NpcCard.npc_entry_id, NpcCard.kind)
        # counted from RETURNING: SQLAlchemy 2.1 on psycopg reports INSERT rowcount as -1
        for key in session.execute(stmt).all():
            out[best[tuple(key)][0]]["snapshots"] += 1
    if event_rows:
        stmt = dialect_insert(session, CardEvent).values(
            [row for _, row in event_rows.values()]).on_conflict_do_nothing(
            index_elements=["event_id"]).returning(CardEvent.event_id)
        for (event_id,) in session.execute(stmt).all():
            out[event_rows[event_id][0]]["events"] += 1
    return out
