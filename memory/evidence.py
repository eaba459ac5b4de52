"""Evidence: the raw utterances of a session, kept whatever the models write.

Every archived turn yields up to two evidence items: part 0 is the line said to the NPC
(speaker: the turn's ``speaker``, else the session's player name), part 1 the NPC's reply
(speaker: the NPC's title), only when the reply is non-empty. An item's id within its
session is ``seq * 2 + part``. Notes, entities and cards are structure the models add on
top; the evidence is what retrieval falls back on, so a weak model degrades memory to plain
retrieval over what was said, never below it.

Where it lives:

- the archive (``turns``: text, speaker, event id, wall and in-game time) is the source of
  truth;
- ``evidence_vectors`` holds one embedding of ``"Speaker: text"`` per (turn, part, embedder);
- Redis hash ``session:{session_id}:evidence`` maps the item id to the item's JSON
  (:func:`item`), what the dialogue server reads without touching the database;
- the dialogue servers' in-memory index holds the vectors in scope
  ``evidence:{session_id}`` under the item ids, fed by ``vectors:updates`` like the composite
  documents (``memory.vector_index``).

:func:`embed_turns` (task ``npc_memory.embed_evidence``, one per archived batch of turns)
fills the last three from the first; it is idempotent, so a redelivered task writes nothing
twice.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from memory import keys as rkeys
from memory import nearline, witnesses
from memory.db import dialect_insert
from memory.vector_index import evidence_scope, publish_upsert
from models import EvidenceVector, GameSession, LoreEntry, Turn
from models.base import utcnow

EMBED_BATCH = 64
"""Texts per embedder call."""


def item_id(seq: int, part: int) -> int:
    """The id of an evidence item within its session: ``seq * 2 + part``."""
    return int(seq) * 2 + int(part)


def item(*, turn_id: str, seq: int, part: int, speaker: str, utterance: str,
         event_id: str | None, created_at: float, game_minutes: int, kind: str = "speech",
         witnesses: list[int] | None = None) -> dict:
    """One evidence item as stored in Redis and answered by the API: ``{turn_id, seq, part,
    speaker, event_id, created_at (unix s), game_minutes, turn_kind, witnesses, text}`` with
    ``text`` = ``"Speaker: utterance"``; ``turn_kind`` is the turn's kind (``speech``,
    ``narration``, ...), ``witnesses`` the entry ids of the characters who witnessed it
    (``memory.witnesses``)."""
    return {"turn_id": turn_id, "seq": int(seq), "part": int(part), "speaker": speaker,
            "event_id": event_id, "created_at": float(created_at),
            "game_minutes": int(game_minutes or 0), "turn_kind": kind,
            "witnesses": list(witnesses or []), "text": f"{speaker}: {utterance}"}


def turn_items(turn: dict, player_name: str, npc_title: str | None) -> list[dict]:
    """The evidence items of one turn (``TurnPayload`` fields): part 0 always, part 1 when
    the NPC answered (``npc_text`` not blank). Part 0's speaker is the turn's ``speaker``,
    else ``"Narrator"``/``"Game"`` for a narration or game event, else the player."""
    kind = turn.get("kind") or "speech"
    common = {"turn_id": turn["turn_id"], "seq": turn["seq"], "event_id": turn.get("event_id"),
              "created_at": turn["created_at"], "game_minutes": turn.get("game_minutes") or 0,
              "kind": kind, "witnesses": witnesses.turn_witnesses(turn)}
    speaker = turn.get("speaker") or witnesses.NARRATIVE_SPEAKERS.get(kind) or player_name
    out = [item(part=0, speaker=speaker, utterance=turn["player_text"], **common)]
    if (turn.get("npc_text") or "").strip() and npc_title:
        out.append(item(part=1, speaker=npc_title, utterance=turn["npc_text"], **common))
    return out


def prompt_line(it: dict) -> str:
    """An item as the dialogue prompt shows it: ``"[day 1, 07:30] Speaker: text"`` (in-game
    time, ``memory.nearline.format_game_time``)."""
    return f"[{nearline.format_game_time(it['game_minutes'])}] {it['text']}"


def _unix(ts: datetime) -> float:
    return (ts if ts.tzinfo else ts.replace(tzinfo=timezone.utc)).timestamp()


def archived_items(session: Session, turn_ids: list[str]) -> list[tuple[str, dict]]:
    """``(session_id, item)`` of every evidence item of the archived turns ``turn_ids``
    (unknown ids and turns a rollback undid are skipped), in session and ``seq`` order."""
    rows = session.execute(
        select(Turn, GameSession.player_name, LoreEntry.title)
        .join(GameSession, GameSession.id == Turn.session_id)
        .outerjoin(LoreEntry, LoreEntry.id == Turn.npc_entry_id)
        .where(Turn.id.in_(list(turn_ids)), Turn.rolled_back_at.is_(None))
        .order_by(Turn.session_id, Turn.seq)).all()
    out = []
    for t, player_name, npc_title in rows:
        turn = {"turn_id": t.id, "seq": t.seq, "player_text": t.player_text,
                "npc_text": t.npc_text, "speaker": t.speaker, "event_id": t.event_id,
                "created_at": _unix(t.created_at), "game_minutes": t.game_minutes,
                "npc_entry_id": t.npc_entry_id, "kind": t.kind, "witnesses": t.witnesses}
        out += [(t.session_id, it) for it in turn_items(turn, player_name, npc_title)]
    return out


def embed_turns(session: Session, r, embedder, turn_ids: list[str]) -> dict:
    """Embed, store and publish the evidence of archived turns; idempotent.

    Items without a stored vector of ``embedder`` are embedded in batches of
    :data:`EMBED_BATCH` and inserted (``INSERT ... ON CONFLICT (turn_id, part, embedder) DO
    NOTHING``), then committed. Every item that is new, or missing from its session's Redis
    hash (a run that died after the commit), is written to Redis and its vector announced on
    ``vectors:updates``; the item's JSON is written before its vector, so a dialogue server
    that finds the vector finds the text. A second run over the same turns embeds nothing,
    inserts nothing and announces nothing.

    Args:
        turn_ids: archived turn ids (ids not in the archive are skipped).

    Returns:
        ``{"items": evidence items of the turns, "embedded": vectors inserted, "published":
        items written to Redis and announced}``.

    Raises:
        whatever the embedder raises (``inference.llm.ModelError`` for a remote one), and
        SQLAlchemy errors (``OperationalError`` while the database is down).
    """
    items = archived_items(session, turn_ids)
    if not items:
        return {"items": 0, "embedded": 0, "published": 0}
    keys = [(it["turn_id"], it["part"]) for _, it in items]
    stored = {(t, p): blob for t, p, blob in session.execute(
        select(EvidenceVector.turn_id, EvidenceVector.part, EvidenceVector.vector).where(
            EvidenceVector.turn_id.in_({t for t, _ in keys}),
            EvidenceVector.embedder == embedder.name, EvidenceVector.dim == embedder.dim))}
    todo = [n for n, key in enumerate(keys) if key not in stored]
    vectors: dict[tuple[str, int], np.ndarray] = {
        key: np.frombuffer(blob, dtype=np.float32) for key, blob in stored.items()}
    inserted: set[tuple[str, int]] = set()
    for start in range(0, len(todo), EMBED_BATCH):
        chunk = todo[start:start + EMBED_BATCH]
        embedded = embedder.embed([items[n][1]["text"] for n in chunk])
        rows = []
        for n, vec in zip(chunk, embedded):
            sid, it = items[n]
            vec = np.asarray(vec, dtype=np.float32)
            vectors[keys[n]] = vec
            rows.append({"turn_id": it["turn_id"], "part": it["part"], "session_id": sid,
                         "item_id": item_id(it["seq"], it["part"]), "embedder": embedder.name,
                         "dim": embedder.dim, "vector": vec.tobytes(), "created_at": utcnow()})
        stmt = (dialect_insert(session, EvidenceVector)
                .on_conflict_do_nothing(index_elements=["turn_id", "part", "embedder"])
                .returning(EvidenceVector.turn_id, EvidenceVector.part))
        inserted |= {tuple(row) for row in session.execute(stmt, rows).all()}
    session.commit()  # announce only what is durable
    published = _publish(r, embedder.name, items, vectors, inserted)
    return {"items": len(items), "embedded": len(inserted), "published": published}


def _publish(r, embedder_name: str, items: list[tuple[str, dict]],
             vectors: dict[tuple[str, int], np.ndarray], inserted: set) -> int:
    """Write the items that are new or missing in Redis, then announce their vectors."""
    check = r.pipeline(transaction=False)
    for sid, it in items:
        check.hexists(rkeys.evidence(sid), str(item_id(it["seq"], it["part"])))
    present = check.execute()
    due = [(sid, it) for (sid, it), here in zip(items, present)
           if not here or (it["turn_id"], it["part"]) in inserted]
    if not due:
        return 0
    ttl = nearline.session_ttl_s()
    pipe = r.pipeline(transaction=False)
    for sid, it in due:
        pipe.hset(rkeys.evidence(sid), str(item_id(it["seq"], it["part"])), json.dumps(it))
    for sid in {sid for sid, _ in due}:
        pipe.expire(rkeys.evidence(sid), ttl)
    for sid, it in due:
        publish_upsert(pipe, evidence_scope(sid), item_id(it["seq"], it["part"]),
                       vectors[(it["turn_id"], it["part"])], embedder_name)
    pipe.execute()
    return len(due)


def get_items(r, session_id: str, ids: list[int]) -> dict[int, dict]:
    """The items ``ids`` of a session from Redis (missing ids are left out)."""
    if not ids:
        return {}
    raw = r.hmget(rkeys.evidence(session_id), [str(i) for i in ids])
    return {i: json.loads(v) for i, v in zip(ids, raw) if v is not None}


def all_items(r, session_id: str) -> list[dict]:
    """Every evidence item of a session in Redis, in id order (``seq``, then part)."""
    raw = r.hgetall(rkeys.evidence(session_id))
    return [json.loads(v) for _, v in sorted(raw.items(), key=lambda kv: int(kv[0]))]


def load_vectors(index, session: Session) -> int:
    """Add the stored evidence vectors of ``index``'s embedder (any when None) and dimension
    to ``index`` (scope ``evidence:{session_id}``, ids = item ids); returns how many."""
    q = (select(EvidenceVector.session_id, EvidenceVector.item_id, EvidenceVector.vector)
         .where(EvidenceVector.dim == index.dim).order_by(EvidenceVector.id))
    if index.embedder is not None:
        q = q.where(EvidenceVector.embedder == index.embedder)
    by_scope: dict[str, dict[int, bytes]] = {}
    for sid, iid, blob in session.execute(q):
        by_scope.setdefault(evidence_scope(sid), {})[iid] = blob
    for scope, blobs in by_scope.items():
        index.upsert(scope, list(blobs), np.frombuffer(b"".join(blobs.values()),
                                                       dtype=np.float32).reshape(-1, index.dim))
    return sum(len(b) for b in by_scope.values())
