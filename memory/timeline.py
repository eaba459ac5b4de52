"""Save slots: fork a session at a turn, or roll it back to a turn.

A game's save slots map onto sessions: loading an older save is a rollback of the session to
the turn the save was made at; keeping both timelines is a fork.

``fork_session(session, r, source_id, at_turn, send)`` makes a new session whose memory is the
source's as of turn ``at_turn`` (its ``seq`` S): the turns up to S (new turn ids,
``fork_turn_id``), their evidence vectors, each session note at the last revision made from
those turns, the entities created by them (copied as entries of the new session), the memory
cards replayed from the card events of those turns, the session summary if it covers no
later turn, and the in-game clock of the turn. The source is only read.

``rollback_session(session, r, session_id, to_turn, send)`` undoes everything derived from
the turns after ``to_turn``:

- first, in one transaction, the session's ``epoch`` is bumped, the undone turn ids recorded
  in ``session_rollbacks`` and in the Redis set ``session:{id}:undone`` (``memory.fencing``),
  and the archived turns marked ``rolled_back_at``: from then on no task of those turns
  applies (epoch fencing);
- note revisions: each note gets back the text of its last revision made before the first
  undone turn, as a new revision (cause ``rollback``, ``memory.ops.rollback_note``'s form);
- created entities: ``retracted_at`` set, removed from the session's keys and its vector scope
  (kept in the database, with their history);
- memory cards: rebuilt by replaying the kept card events (revision numbers keep growing),
  the archived snapshots (``npc_cards``) replaced by the rebuilt ones; the archived events of
  undone turns are deleted from ``card_events``;
- the session summary if it covers an undone turn; salient memories and the emotional
  trajectory (rebuilt with the cards);
- evidence: the items of undone turns leave Redis, their vectors ``evidence_vectors``, and the
  dialogue servers' indexes (``op=remove`` on ``vectors:updates``);
- tasks: ledger rows ``queued``, ``retrying`` or ``dead`` of undone turns become
  ``cancelled``; queued note updates of undone turns leave the coalescing hashes, their turns
  the outbox and the posted-event map;
- Redis: the recent turns list keeps the turns up to the kept one, the turn counter and the
  memory versions are bumped (the dialogue servers' hot caches reload), the in-game clock goes
  back to the kept turn's.

Turn numbers (``seq``) are never reused: the next turn after a rollback gets the next number.
Rolled-back turns and their evidence are kept in the archive, marked ``rolled_back_at``:
loading a save is not the model removing evidence. A rollback while the session is being
played is safe for the tasks in flight (fenced), but a turn posted during the rollback itself
may be kept or undone.

Errors: ``memory.ops.NotFound`` for an unknown session or turn.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections import defaultdict
from datetime import datetime

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from contract.names import TaskName
from contract.send import Send
from memory import cards as memory_cards
from memory import fencing, nearline, summaries, witnesses
from memory import keys as rkeys
from memory.archive import archive_card_batch
from memory.evidence import item_id
from memory.notes import commit_revision, note_turn_ids
from memory.ops import NotFound, find_turn
from memory.vector_index import evidence_scope, publish_remove, session_scope
from models import (
    AppliedNoteEvent, CardEvent, EvidenceVector, GameSession, LoreEntry, NpcCard, SessionNote,
    SessionNoteRevision, SessionRollback, StoredVector, TaskRecord, Turn,
)
from models.base import utcnow

EVIDENCE_BATCH = 1000
"""Turn ids per ``npc_memory.embed_evidence`` a fork sends (its payload's maximum)."""
CANCELLABLE = ("queued", "retrying", "dead")
"""Ledger statuses a rollback turns into ``cancelled`` for tasks of undone turns."""


def fork_turn_id(session_id: str, turn_id: str) -> str:
    """The id of turn ``turn_id``'s copy in the forked session ``session_id`` (32 hex chars of
    SHA-256 over both)."""
    return hashlib.sha256(f"{session_id}\n{turn_id}".encode()).hexdigest()[:32]


def _remap_key(key: str, turn_map: dict[str, str]) -> str | None:
    """An idempotency or event key ``{turn_id}:...`` with the turn id mapped; None when it
    does not start with a mapped turn id."""
    head, sep, rest = key.partition(":")
    return f"{turn_map[head]}{sep}{rest}" if sep and head in turn_map else None


def _unix(dt: datetime | None) -> float:
    return dt.timestamp() if dt is not None else 0.0


def session_turns(session: Session, r, session_id: str) -> dict[str, dict]:
    """Every turn of the session still in its timeline (not rolled back), by turn id:
    ``{turn_id, seq, npc_entry_id, player_text, npc_text, latency_ms, created_at (unix s),
    game_minutes, speaker, event_id, kind, witnesses, source}``, from the archive and the recent turns in Redis (a
    turn not archived yet)."""
    out: dict[str, dict] = {}
    for t in session.scalars(select(Turn).where(Turn.session_id == session_id,
                                                Turn.rolled_back_at.is_(None))):
        out[t.id] = {"turn_id": t.id, "seq": t.seq, "npc_entry_id": t.npc_entry_id,
                     "player_text": t.player_text, "npc_text": t.npc_text,
                     "latency_ms": t.latency_ms, "created_at": _unix(t.created_at),
                     "game_minutes": t.game_minutes or 0, "speaker": t.speaker,
                     "event_id": t.event_id, "kind": t.kind, "witnesses": t.witnesses,
                     "source": t.source}
    undone = {x.decode() for x in r.smembers(rkeys.undone(session_id))}
    for doc in nearline.recent_turns(r, session_id, nearline.TURNS_CAP):
        if doc["turn_id"] not in out and doc["turn_id"] not in undone:
            out[doc["turn_id"]] = dict(doc)
    return out


def _split(session: Session, r, session_id: str, turn_id: str) -> tuple[dict, dict, dict, float]:
    """``(turn, kept, later, cutoff)``: the turn ``turn_id``, the session's turns up to it
    and after it (by ``seq``), and the unix time of the first later turn (inf when none)."""
    doc, _source = find_turn(session, r, session_id, turn_id)
    turns = session_turns(session, r, session_id)
    if turn_id not in turns:
        raise NotFound(f"turn {turn_id!r} of session {session_id!r} was rolled back")
    seq = int(doc["seq"])
    kept = {t: d for t, d in turns.items() if d["seq"] <= seq}
    later = {t: d for t, d in turns.items() if d["seq"] > seq}
    cutoff = min((d["created_at"] for d in later.values()), default=float("inf"))
    return turns[turn_id], kept, later, cutoff


def _note_history(session: Session, note_id: int) -> list[tuple[SessionNoteRevision, list]]:
    """The note's revisions in version order, each with its ``AppliedNoteEvent`` rows."""
    revs = list(session.scalars(select(SessionNoteRevision)
                                .where(SessionNoteRevision.note_id == note_id)
                                .order_by(SessionNoteRevision.version)))
    events: dict[int, list] = defaultdict(list)
    for ev in session.scalars(select(AppliedNoteEvent).where(
            AppliedNoteEvent.revision_id.in_([r.id for r in revs])).order_by(AppliedNoteEvent.id)):
        events[ev.revision_id].append(ev)
    return [(rev, events.get(rev.id, [])) for rev in revs]


def kept_version(history: list[tuple[SessionNoteRevision, list]], later: set[str],
                 cutoff: float) -> int:
    """The last version of a note made only from kept turns: revisions are kept in version
    order until the first one that folds in a ``later`` turn, or that carries no turn and was
    written after ``cutoff`` (unix s: the first later turn; a world tick or an operator's
    write after the kept turn). 0 when even the first revision goes (the empty note).

    A revision that folded a kept turn together with a later one goes too: the kept turn's
    event stays in the evidence (its turn is kept)."""
    version = 0
    for rev, events in history:
        turns = {e.turn_id for e in events if e.turn_id} | ({rev.turn_id} if rev.turn_id else set())
        if turns & later or (not turns and _unix(rev.created_at) > cutoff):
            break
        version = rev.version
    return version


def _card_npcs(r, session_id: str) -> list[int]:
    """Ids of the NPCs with memory cards (an applied-event hash) in the session."""
    out = []
    for key in r.scan_iter(match=rkeys.card_applied_pattern(session_id), count=1000):
        part = key.decode().split(":")[3]
        if part.isdigit():
            out.append(int(part))
    return sorted(set(out))


def _replay_cards(r, session_id: str, npc_entry_id: int, events: list[dict],
                  turn_map: dict[str, str] | None = None, rev_floor: int = 0) -> int:
    """Rebuild the (session, NPC) cards from ``events`` (applied events as
    ``memory.cards.applied_events`` returns them, oldest first): the cards, their applied
    events, salient memories and trajectory are deleted, then the events applied again turn
    by turn (``memory.cards.apply_events``), with turn ids (and the event ids made from them)
    mapped through ``turn_map``. Each card's ``rev`` ends above ``rev_floor`` (an archived
    snapshot of a newer revision must not win over the rebuilt card). Returns the events
    applied."""
    keys = [rkeys.card(session_id, npc_entry_id, "relationship"),
            rkeys.card(session_id, npc_entry_id, "quest"),
            rkeys.card_applied(session_id, npc_entry_id),
            rkeys.card_applied_order(session_id, npc_entry_id),
            rkeys.salient(session_id, npc_entry_id),
            rkeys.trajectory(session_id, npc_entry_id)]
    r.delete(*keys)
    groups: list[tuple[str | None, list[dict]]] = []
    for e in events:
        if groups and groups[-1][0] == e.get("turn_id"):
            groups[-1][1].append(e)
        else:
            groups.append((e.get("turn_id"), [e]))
    applied = 0
    rel_fields = set(memory_cards.RelationshipEvent.model_fields)
    quest_fields = set(memory_cards.QuestEvent.model_fields)
    for _turn, group in groups:
        rel, quests = [], []
        for e in group:
            e = dict(e)
            if turn_map is not None:
                e["event_id"] = _remap_key(e["event_id"], turn_map) or e["event_id"]
                if e.get("turn_id"):
                    e["turn_id"] = turn_map.get(e["turn_id"], e["turn_id"])
            if e.get("card") == "quest":
                quests.append(memory_cards.QuestEvent.model_validate(
                    {k: v for k, v in e.items() if k in quest_fields}))
            else:
                rel.append(memory_cards.RelationshipEvent.model_validate(
                    {k: v for k, v in e.items() if k in rel_fields}))
        applied += len(memory_cards.apply_events(r, session_id, npc_entry_id, rel, quests).applied)
    if rev_floor:
        cards = memory_cards.get_cards(r, session_id, npc_entry_id)
        pipe = r.pipeline(transaction=True)
        for kind, card in (("relationship", cards.relationship), ("quest", cards.quest)):
            card.rev = max(card.rev, rev_floor + 1)
            pipe.set(rkeys.card(session_id, npc_entry_id, kind),
                     memory_cards.dump_card(card), ex=nearline.session_ttl_s())
        pipe.hincrby(rkeys.memory_versions(session_id), str(npc_entry_id), 1)
        pipe.execute()
    return applied


def _kept_events(events: list[dict], kept: set[str], cutoff: float) -> list[dict]:
    return [e for e in events if (e.get("turn_id") in kept if e.get("turn_id")
                                  else float(e.get("applied_at") or 0) <= cutoff)]


# --------------------------------------------------------------------------- fork


def _mapped_witnesses(turn: dict, entry) -> list[int] | None:
    """A turn's recorded witnesses with created entries mapped to the fork's copies (None
    when the turn recorded none: its addressed NPC alone, ``memory.witnesses``)."""
    if turn.get("witnesses") is None:
        return None
    return [entry(int(w)) for w in turn["witnesses"]]


def fork_session(session: Session, r, source_id: str, at_turn: str, send: Send) -> dict:
    """Make a new session whose memory is the source session's as of turn ``at_turn`` (see
    the module docstring); the source is only read. ``send`` puts a task on the broker
    (``contract.send.Send``): one ``npc_memory.embed`` per copied note or entity and one
    ``npc_memory.embed_evidence`` for the copied turns (their stored vectors are copied, so
    it only publishes them).

    Returns:
        ``{"session_id" (the new one), "forked_from", "at_turn", "at_seq", "world_id",
        "player_name", "game_minutes", "counts": {"turns", "notes", "entities",
        "card_events", "evidence_vectors", "summary"}}``.

    Raises:
        NotFound: unknown session, or no turn ``at_turn`` in its timeline.
    """
    src = session.get(GameSession, source_id)
    if src is None:
        raise NotFound(f"unknown session {source_id!r}")
    turn, kept, later, cutoff = _split(session, r, source_id, at_turn)
    world_id, player = src.world_id, src.player_name
    new_id = uuid.uuid4().hex
    turn_map = {t: fork_turn_id(new_id, t) for t in kept}
    minutes = int(turn.get("game_minutes") or 0)
    session.add(GameSession(id=new_id, world_id=world_id, player_name=player,
                            game_minutes=minutes, forked_from_session_id=source_id,
                            forked_at_turn_id=at_turn))
    session.flush()
    # entities created by kept turns: copies owned by the new session
    entry_map: dict[int, int] = {}
    copies: list[LoreEntry] = []
    for e in session.scalars(select(LoreEntry).where(
            LoreEntry.created_in_session_id == source_id, LoreEntry.retracted_at.is_(None))
            .order_by(LoreEntry.id)):
        if e.created_by_turn_id in later or (e.created_by_turn_id is None
                                             and _unix(e.created_at) > cutoff):
            continue
        if e.created_by_turn_id is not None and e.created_by_turn_id not in kept:
            continue
        origin = _remap_key(e.origin_key, turn_map) if e.origin_key else None
        copy = LoreEntry(
            world_id=e.world_id, entity_type=e.entity_type, title=e.title, content=e.content,
            key=f"{e.key.rsplit('-', 1)[0]}-{hashlib.sha1(f'{new_id}:{e.key}'.encode()).hexdigest()[:8]}",
            tags=list(e.tags or []), relations=dict(e.relations or {}), archetype=e.archetype,
            is_dynamically_generated=True, created_in_session_id=new_id,
            created_by_turn_id=turn_map.get(e.created_by_turn_id or ""),
            origin_key=origin or f"fork:{new_id}:{e.id}")
        session.add(copy)
        session.flush()
        entry_map[e.id] = copy.id
        copies.append(copy)

    def entry(i: int) -> int:
        return entry_map.get(i, i)

    # turns and their evidence vectors
    for t, d in kept.items():
        session.add(Turn(id=turn_map[t], session_id=new_id, seq=d["seq"],
                         npc_entry_id=entry(d["npc_entry_id"]), player_text=d["player_text"],
                         npc_text=d["npc_text"], latency_ms=d.get("latency_ms") or 0.0,
                         speaker=d.get("speaker"), event_id=d.get("event_id"),
                         game_minutes=d.get("game_minutes"), kind=d.get("kind"),
                         witnesses=_mapped_witnesses(d, entry), source=d.get("source"),
                         created_at=datetime.fromtimestamp(d["created_at"], tz=utcnow().tzinfo)))
    session.flush()
    vectors = 0
    for v in session.scalars(select(EvidenceVector).where(
            EvidenceVector.session_id == source_id, EvidenceVector.turn_id.in_(list(kept)))):
        session.add(EvidenceVector(turn_id=turn_map[v.turn_id], part=v.part, session_id=new_id,
                                   item_id=v.item_id, embedder=v.embedder, dim=v.dim,
                                   vector=v.vector))
        vectors += 1
    # session notes at their last revision made from kept turns, with that history
    notes: list[tuple[int, str]] = []
    later_ids = set(later) | fencing.undone_turn_ids(session, source_id)
    for note in session.scalars(select(SessionNote).where(SessionNote.session_id == source_id)
                                .order_by(SessionNote.id)).all():
        if note.lore_entry_id not in entry_map and _is_created(session, note.lore_entry_id):
            continue  # a note about an entity this fork does not have
        history = _note_history(session, note.id)
        version = kept_version(history, later_ids, cutoff)
        if version == 0:
            continue
        text = history[version - 1][0].content
        copy = SessionNote(session_id=new_id, lore_entry_id=entry(note.lore_entry_id),
                           content=text, version=version,
                           last_updated_turn_id=turn_map.get(history[version - 1][0].turn_id or ""))
        session.add(copy)
        session.flush()
        for rev, events in history[:version]:
            nrev = SessionNoteRevision(
                note_id=copy.id, version=rev.version, previous_content=rev.previous_content,
                content=rev.content, event_summary=rev.event_summary, cause=rev.cause,
                turn_id=turn_map.get(rev.turn_id or ""), task_id=rev.task_id,
                idempotency_key=f"fork:{new_id}:{rev.id}", game_minutes=rev.game_minutes,
                created_at=rev.created_at)
            session.add(nrev)
            session.flush()
            for ev in events:
                session.add(AppliedNoteEvent(
                    revision_id=nrev.id, event_summary=ev.event_summary, cause=ev.cause,
                    idempotency_key=_remap_key(ev.idempotency_key, turn_map)
                    or f"fork:{new_id}:e{ev.id}",
                    turn_id=turn_map.get(ev.turn_id or ""), created_at=ev.created_at))
        notes.append((copy.lore_entry_id, text))
    session.commit()
    # the nearline tier
    raw = r.hgetall(rkeys.session(source_id))
    nearline.open_session(r, new_id, world_id, player,
                          every_turns=int(raw.get(b"every_turns", 0)),
                          tick_minutes=int(raw.get(b"tick_minutes", 60)), game_minutes=minutes)
    if copies:
        nearline.cache_entries(r, world_id, copies, session_id=new_id)
    ordered = sorted(kept.values(), key=lambda d: d["seq"])
    pipe = r.pipeline(transaction=True)
    pipe.set(rkeys.seq(new_id), int(turn["seq"]), ex=nearline.session_ttl_s())
    for d in ordered[-nearline.TURNS_CAP:]:
        doc = {**d, "turn_id": turn_map[d["turn_id"]], "session_id": new_id,
               "world_id": world_id, "npc_entry_id": entry(d["npc_entry_id"]),
               "witnesses": _mapped_witnesses(d, entry)}
        pipe.rpush(rkeys.turns(new_id), json.dumps(
            {k: v for k, v in doc.items() if v is not None}))
    pipe.expire(rkeys.turns(new_id), nearline.session_ttl_s())
    for d in ordered:  # who witnessed what: every NPC's view of the fork is its view then
        witnesses.queue_record(pipe, new_id, {
            "turn_id": turn_map[d["turn_id"]], "seq": d["seq"],
            "npc_entry_id": entry(d["npc_entry_id"]),
            "witnesses": _mapped_witnesses(d, entry)}, nearline.session_ttl_s())
    for d in ordered:
        if d.get("event_id"):
            doc = {**d, "turn_id": turn_map[d["turn_id"]], "session_id": new_id,
                   "world_id": world_id, "npc_entry_id": entry(d["npc_entry_id"])}
            pipe.hset(rkeys.events(new_id), d["event_id"], json.dumps(
                {k: v for k, v in doc.items() if v is not None}))
    touched = r.hgetall(rkeys.touched(source_id))
    if touched:
        pipe.hset(rkeys.touched(new_id), mapping={
            str(entry(int(k))): v for k, v in touched.items()})
    pipe.execute()
    with_turns = {eid: [turn_map[t] for t in note_turn_ids(session, new_id, eid) if t in turn_map]
                  for eid, _ in notes}
    session.rollback()
    for eid, text in notes:
        nearline.set_note(r, new_id, eid, text, turn_ids=with_turns[eid])
    card_events = 0
    for npc in _card_npcs(r, source_id):
        events = _kept_events(memory_cards.applied_events(r, source_id, npc), set(kept), cutoff)
        if events:
            card_events += _replay_cards(r, new_id, entry(npc), events, turn_map)
    summary = summaries.get_summary(r, source_id)
    copied_summary = bool(summary and int(summary.get("upto_seq", 0)) <= int(turn["seq"]))
    if copied_summary:
        summaries.save_summary(r, new_id, summary["summary"], int(summary["upto_seq"]))
    for eid in sorted({eid for eid, _ in notes} | {c.id for c in copies}):
        send(TaskName.EMBED, {"lore_entry_id": eid, "session_id": new_id})
    new_turns = [turn_map[d["turn_id"]] for d in ordered]
    for start in range(0, len(new_turns), EVIDENCE_BATCH):
        send(TaskName.EMBED_EVIDENCE, {"turn_ids": new_turns[start:start + EVIDENCE_BATCH]})
    return {"session_id": new_id, "forked_from": source_id, "at_turn": at_turn,
            "at_seq": int(turn["seq"]), "world_id": world_id, "player_name": player,
            "game_minutes": minutes,
            "counts": {"turns": len(kept), "notes": len(notes), "entities": len(copies),
                       "card_events": card_events, "evidence_vectors": vectors,
                       "summary": int(copied_summary)}}


def _is_created(session: Session, entry_id: int) -> bool:
    """Whether ``entry_id`` is an entity created in a session (not canon)."""
    e = session.get(LoreEntry, entry_id)
    return bool(e is not None and e.is_dynamically_generated)


# --------------------------------------------------------------------------- rollback


def retract_entries(session: Session, r, session_id: str, entry_ids: list[int]) -> int:
    """Retract entities created in the session: ``retracted_at`` set (the rows and their
    history stay), their session-scope vectors deleted and removed from every dialogue
    server's index (``publish_remove``), their keys removed from the session's keys in
    Redis. Commits. Returns how many were retracted now."""
    entries = list(session.scalars(select(LoreEntry).where(
        LoreEntry.id.in_(list(entry_ids)), LoreEntry.created_in_session_id == session_id,
        LoreEntry.retracted_at.is_(None))))
    if not entries:
        return 0
    ids = [e.id for e in entries]
    keys = [e.key for e in entries]
    session.execute(update(LoreEntry).where(LoreEntry.id.in_(ids)).values(retracted_at=utcnow()))
    session.execute(delete(StoredVector).where(StoredVector.scope == session_scope(session_id),
                                               StoredVector.lore_entry_id.in_(ids)))
    session.commit()
    r.hdel(rkeys.session_keys(session_id), *keys)
    publish_remove(r, session_scope(session_id), ids)
    return len(ids)


def rollback_session(session: Session, r, session_id: str, to_turn: str, send: Send) -> dict:
    """Undo everything derived from the turns after ``to_turn`` (see the module docstring).
    ``send`` puts a task on the broker: one ``npc_memory.embed`` per note rolled back. A
    rollback to the latest turn undoes nothing but still bumps the epoch.

    Returns:
        ``{"session_id", "to_turn", "to_seq", "epoch" (after it), "rollback_id",
        "turn_ids" (undone), "counts": {"turns", "note_revisions", "entities",
        "card_events", "summaries", "evidence_items", "tasks_cancelled"}}``.

    Raises:
        NotFound: unknown session, or no turn ``to_turn`` in its timeline.
    """
    if session.get(GameSession, session_id) is None:
        raise NotFound(f"unknown session {session_id!r}")
    turn, kept, later, cutoff = _split(session, r, session_id, to_turn)
    undone = sorted(later, key=lambda t: later[t]["seq"])
    to_seq = int(turn["seq"])
    session.rollback()
    # 1. the fence, committed before anything is undone
    game = session.scalar(select(GameSession).where(GameSession.id == session_id)
                          .with_for_update())
    game.epoch = (game.epoch or 0) + 1
    game.game_minutes = int(turn.get("game_minutes") or 0)
    epoch, world_id = game.epoch, game.world_id
    record = SessionRollback(session_id=session_id, epoch=epoch, to_turn_id=to_turn,
                             to_seq=to_seq, turn_ids=undone, counts={})
    session.add(record)
    if undone:
        session.execute(update(Turn).where(Turn.id.in_(undone)).values(rolled_back_at=utcnow()))
    session.commit()
    rollback_id = record.id
    if undone:
        r.sadd(rkeys.undone(session_id), *undone)
        r.expire(rkeys.undone(session_id), nearline.session_ttl_s())
    undone_set = set(undone)
    earlier = fencing.undone_turn_ids(session, session_id)  # by this and earlier rollbacks
    session.rollback()
    counts = {"turns": len(undone), "note_revisions": 0, "entities": 0, "card_events": 0,
              "summaries": 0, "evidence_items": 0, "tasks_cancelled": 0}
    # 2. session notes
    rolled_notes: list[int] = []
    for note_id, entry_id in session.execute(select(SessionNote.id, SessionNote.lore_entry_id)
                                             .where(SessionNote.session_id == session_id)).all():
        for _ in range(5):
            note = session.get(SessionNote, note_id)
            session.refresh(note)
            current, before = note.version, note.content
            history = _note_history(session, note_id)
            version = kept_version(history, undone_set | earlier, cutoff)
            if version >= current:
                session.rollback()
                break
            undone_revs = sum(1 for rev, _ in history if rev.version > version)
            target = history[version - 1][0].content if version else ""
            target_turn = history[version - 1][0].turn_id if version else None
            session.rollback()
            if commit_revision(session, note_id=note_id, version=current, before=before,
                               after=target, turn_id=target_turn,
                               event_summary=f"rollback to version {version}", cause="rollback",
                               idempotency_key=f"rollback:{note_id}:{current}->{version}",
                               session_id=session_id, epoch=epoch):
                counts["note_revisions"] += undone_revs
                rolled_notes.append(entry_id)
                break
    for entry_id in rolled_notes:
        content = session.scalar(select(SessionNote.content).where(
            SessionNote.session_id == session_id, SessionNote.lore_entry_id == entry_id))
        nearline.set_note(r, session_id, entry_id, content or "",
                          turn_ids=note_turn_ids(session, session_id, entry_id))
        session.rollback()
    # 3. created entities
    created = list(session.scalars(select(LoreEntry.id).where(
        LoreEntry.created_in_session_id == session_id, LoreEntry.retracted_at.is_(None),
        LoreEntry.created_by_turn_id.in_(undone)))) if undone else []
    counts["entities"] = retract_entries(session, r, session_id, created)
    # 4. memory cards, salient memories, trajectory
    for npc in _card_npcs(r, session_id):
        events = memory_cards.applied_events(r, session_id, npc)
        keep = [e for e in events if e.get("turn_id") not in undone_set]
        if len(keep) == len(events):
            continue
        counts["card_events"] += len(events) - len(keep)
        floor = max([memory_cards.get_cards(r, session_id, npc).relationship.rev,
                     memory_cards.get_cards(r, session_id, npc).quest.rev]
                    + list(session.scalars(select(NpcCard.rev).where(
                        NpcCard.session_id == session_id, NpcCard.npc_entry_id == npc))))
        session.rollback()
        _replay_cards(r, session_id, npc, keep, rev_floor=floor)
        rebuilt = memory_cards.get_cards(r, session_id, npc)
        archive_card_batch(session, [{  # the archived snapshots follow (a higher rev wins)
            "session_id": session_id, "npc_entry_id": npc, "events": [],
            "cards": {"relationship": rebuilt.relationship.model_dump(exclude_none=True),
                      "quest": rebuilt.quest.model_dump(exclude_none=True)}}])
        session.commit()
    if undone:
        session.execute(delete(CardEvent).where(CardEvent.session_id == session_id,
                                                CardEvent.turn_id.in_(undone)))
        session.commit()
    # 5. the session summary
    summary = summaries.get_summary(r, session_id)
    if summary and int(summary.get("upto_seq", 0)) > to_seq:
        r.delete(rkeys.summary(session_id))
        counts["summaries"] = 1
    # 6. evidence
    if undone:
        items = [item_id(later[t]["seq"], part) for t in undone for part in (0, 1)]
        counts["evidence_items"] = sum(1 for x in r.hmget(rkeys.evidence(session_id), items) if x)
        r.hdel(rkeys.evidence(session_id), *items)
        session.execute(delete(EvidenceVector).where(EvidenceVector.turn_id.in_(undone)))
        session.commit()
        publish_remove(r, evidence_scope(session_id), items)
    # 7. tasks of undone turns
    for rec in session.scalars(select(TaskRecord).where(
            TaskRecord.session_id == session_id, TaskRecord.status.in_(CANCELLABLE))).all():
        p = rec.payload or {}
        if p.get("turn_id") in undone_set or set(p.get("turn_ids") or []) & undone_set:
            rec.status = "cancelled"
            rec.error = f"rolled back to turn {to_turn} (rollback {rollback_id})"
            rec.finished_at = utcnow()
            counts["tasks_cancelled"] += 1
    session.commit()
    # 8. the nearline session state
    _reset_nearline(r, session_id, world_id, kept, undone_set,
                    int(turn.get("game_minutes") or 0))
    record = session.get(SessionRollback, rollback_id)
    record.counts = counts
    session.commit()
    for entry_id in rolled_notes:
        send(TaskName.EMBED, {"lore_entry_id": entry_id, "session_id": session_id})
    return {"session_id": session_id, "to_turn": to_turn, "to_seq": to_seq, "epoch": epoch,
            "rollback_id": rollback_id, "turn_ids": undone, "counts": counts}


def _reset_nearline(r, session_id: str, world_id: int, kept: dict[str, dict],
                    undone: set[str], game_minutes: int) -> None:
    """The Redis side of a rollback: recent turns, outbox, posted events, queued note
    updates, clock, and the counters the hot caches compare."""
    for key in r.scan_iter(match=rkeys.note_pending_pattern(session_id), count=1000):
        drop = [k for k, v in r.hgetall(key).items() if json.loads(v).get("turn_id") in undone]
        if drop:
            r.hdel(key, *drop)
    events = {k: v for k, v in r.hgetall(rkeys.events(session_id)).items()
              if json.loads(v).get("turn_id") in undone}
    ordered = sorted(kept.values(), key=lambda d: d["seq"])[-nearline.TURNS_CAP:]
    recent = [x for x in r.lrange(rkeys.turns(session_id), 0, -1)
              if json.loads(x).get("turn_id") not in undone]
    known = {json.loads(x)["turn_id"] for x in recent}
    # turns older than the list's cap come back from the archive, in seq order
    restored = [json.dumps({k: v for k, v in {**d, "session_id": session_id,
                                              "world_id": world_id}.items() if v is not None})
                for d in ordered if d["turn_id"] not in known]
    docs = sorted(restored + [x.decode() for x in recent], key=lambda x: json.loads(x)["seq"])
    versions = r.hkeys(rkeys.memory_versions(session_id))
    pipe = r.pipeline(transaction=True)
    pipe.delete(rkeys.turns(session_id))
    if docs:
        pipe.rpush(rkeys.turns(session_id), *docs[-nearline.TURNS_CAP:])
        pipe.expire(rkeys.turns(session_id), nearline.session_ttl_s())
    if events:
        pipe.hdel(rkeys.events(session_id), *events)
    if undone:
        pipe.zrem(rkeys.OUTBOX_TURNS, *undone)
        pipe.hdel(rkeys.OUTBOX_PAYLOADS, *undone)
    pipe.hset(rkeys.session(session_id), "game_minutes", game_minutes)
    pipe.incr(rkeys.seq(session_id))  # turn numbers are never reused; hot caches reload
    for v in versions:
        pipe.hincrby(rkeys.memory_versions(session_id), v.decode(), 1)
    pipe.zadd(rkeys.SESSIONS_ACTIVE, {session_id: time.time()})
    pipe.execute()


def list_rollbacks(session: Session, session_id: str) -> list[dict]:
    """The session's rollbacks, oldest first: ``[{id, epoch, to_turn_id, to_seq, turn_ids,
    counts, created_at}]`` (ISO 8601 time).

    Raises:
        NotFound: unknown session.
    """
    if session.get(GameSession, session_id) is None:
        raise NotFound(f"unknown session {session_id!r}")
    return [{"id": x.id, "epoch": x.epoch, "to_turn_id": x.to_turn_id, "to_seq": x.to_seq,
             "turn_ids": list(x.turn_ids or []), "counts": dict(x.counts or {}),
             "created_at": x.created_at.isoformat()}
            for x in session.scalars(select(SessionRollback).where(
                SessionRollback.session_id == session_id).order_by(SessionRollback.id))]
