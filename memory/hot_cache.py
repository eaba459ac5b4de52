"""Level 1 of the three memory tiers (hot cache -> Redis -> PostgreSQL): the dialogue server's
in-process hot cache.

Per (session, NPC key) it keeps what a turn needs besides retrieval: the resolved target (the
session's world and player, the NPC's lore entry), the NPC's session note, its memory cards
(parsed, and rendered for the prompt), and the session's last ``turns`` turns. Everything in it
is a copy of the nearline tier (Redis, ``memory.nearline``): a restarted or second dialogue
server fills its own cache from Redis on the first turn, so nothing is lost with a process.

Eviction (cachetools ``TTLCache``):

- TTL: an entry lives ``ttl_s`` seconds (default 30 min) after the last turn that used it
  (every use re-inserts it, which restarts its TTL);
- LRU: at most ``max_entries`` entries; inserting one more evicts the least recently used;
- a background thread (``start``/``stop``, run in the FastAPI lifespan) calls ``expire()``
  every ``evict_interval_s`` seconds so idle sessions free their memory even when no turn
  touches the cache.

Invalidation (notes and cards are rewritten by workers, turns may be recorded by another
dialogue server): every write of a note or of cards (and so of the salient memories, written
with the cards) bumps the entry's counter in the Redis
hash ``session:{id}:mver`` in the same MULTI/EXEC as the write (``nearline.set_note``,
``memory.cards.apply_events``), and every recorded turn bumps ``session:{id}:seq``. A cached
entry is used only after one pipelined round trip (``HGET mver``, ``GET seq``, ``HGET session
game_minutes``) has shown both counters unchanged; a changed counter re-reads that part (in one
MULTI/EXEC, data and counter together). So a turn never sees a note, card or turn list older
than the Redis state at the start of that turn: the staleness bound is zero, for the price of
one small round trip per turn instead of the six to eight reads of an uncached turn.
The in-game clock (``game_minutes``) and the session summary (session-wide, rewritten by
``npc_memory.summarize_session``) are read in the same round trip.

Thread safety: FastAPI runs sync endpoints in a thread pool; the cache is guarded by a lock,
Redis reads happen outside it.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field, replace

import redis
from cachetools import TTLCache

from memory import cards as memory_cards
from memory import keys as rkeys
from memory import summaries, turns

log = logging.getLogger(__name__)


@dataclass
class HotEntry:
    """One cached (session, NPC): ``target`` (``memory.turns.Target``), ``note`` (str),
    ``cards`` (``memory.cards.Cards`` or None when stored cards are corrupt), ``turns`` (the
    session's last turns, oldest first, dicts as in ``session:{id}:turns``), and the counters
    they were read at: ``mver`` (the NPC's memory version) and ``seq`` (the session's turn
    counter)."""

    target: turns.Target
    note: str
    cards: memory_cards.Cards | None
    turns: list[dict]
    mver: int
    seq: int
    rendered: dict[int, str] = field(default_factory=dict)
    salient: list[dict] = field(default_factory=list)
    summary: str = ""

    def memories_text(self, budget_chars: int) -> str:
        """Session summary and salient memories as prompt text within ``budget_chars``."""
        return summaries.render_memories(self.summary, self.salient, budget_chars)

    def cards_text(self, budget_chars: int) -> str:
        """The cards as prompt text within ``budget_chars`` (rendered once per budget)."""
        if budget_chars <= 0 or self.cards is None:
            return ""
        if budget_chars not in self.rendered:
            self.rendered[budget_chars] = memory_cards.render_cards(self.cards, budget_chars)
        return self.rendered[budget_chars]

    def recent_npc_turns(self) -> list[dict]:
        """The cached turns addressed to this NPC, oldest first."""
        return [t for t in self.turns if t["npc_entry_id"] == self.target.npc_entry_id]


def _int(raw) -> int:
    return int(raw) if raw is not None else 0


class HotCache:
    """The dialogue server's Level 1 cache (see the module docstring).

    Args:
        max_entries: LRU bound on cached (session, NPC) pairs.
        ttl_s: seconds an entry lives after its last use.
        turns: how many of the session's newest turns to keep (the prompt's recent turns).
        evict_interval_s: period of the background eviction loop.
    """

    def __init__(self, max_entries: int = 10_000, ttl_s: float = 1800.0, turns: int = 12,
                 evict_interval_s: float = 30.0):
        self.turns = turns
        self.evict_interval_s = evict_interval_s
        self._cache: TTLCache = TTLCache(maxsize=max_entries, ttl=ttl_s)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.hits = self.misses = self.refreshes = 0

    # ------------------------------------------------------------------ eviction loop
    def start(self) -> None:
        """Start the background eviction thread (daemon)."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._evict_loop, name="hot-cache-evict",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the eviction thread (waits for it)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def _evict_loop(self) -> None:
        while not self._stop.wait(self.evict_interval_s):
            self.expire()

    def expire(self) -> int:
        """Drop the entries whose TTL has passed; returns how many were dropped."""
        with self._lock:
            return len(self._cache.expire())

    def __len__(self) -> int:
        with self._lock:
            return len(self._cache)

    def keys(self) -> list[tuple[str, str]]:
        """Cached ``(session_id, npc_key)`` pairs, least recently used first (unexpired
        ones only)."""
        with self._lock:
            self._cache.expire()
            return list(self._cache.keys())

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

    # ------------------------------------------------------------------ reads
    def _load(self, r: redis.Redis, session_id: str, npc_key: str) -> HotEntry:
        target = turns.resolve_target(r, session_id, npc_key)
        entry = HotEntry(target=target, note="", cards=None, turns=[], mver=0, seq=0)
        self._refresh(r, entry, memory=True, turn_list=True)
        return entry

    def _refresh(self, r: redis.Redis, e: HotEntry, *, memory: bool, turn_list: bool) -> None:
        """Re-read the note and cards (``memory``) and/or the turns (``turn_list``) together
        with their counters in one MULTI/EXEC."""
        sid, npc_id = e.target.session_id, e.target.npc_entry_id
        pipe = r.pipeline(transaction=True)
        pipe.hget(rkeys.memory_versions(sid), str(npc_id))
        pipe.get(rkeys.seq(sid))
        if memory:
            pipe.get(rkeys.note(sid, npc_id))
            pipe.mget(rkeys.card(sid, npc_id, "relationship"), rkeys.card(sid, npc_id, "quest"))
            pipe.zrevrange(rkeys.salient(sid, npc_id), 0, summaries.SALIENT_KEEP - 1,
                           withscores=True)
            pipe.get(rkeys.summary(sid))
        if turn_list and self.turns > 0:
            pipe.lrange(rkeys.turns(sid), -self.turns, -1)
        out = pipe.execute()
        mver, seq = _int(out[0]), _int(out[1])
        rest = out[2:]
        if memory:
            raw_note, (raw_rel, raw_quest), raw_salient, raw_summary = rest[:4]
            rest = rest[4:]
            e.salient = summaries.parse_salient(raw_salient)
            e.summary = summaries.summary_for(raw_summary, npc_id)
            e.note = raw_note.decode() if raw_note else ""
            try:
                e.cards = memory_cards.cards_from_raw(sid, npc_id, raw_rel, raw_quest)
            except memory_cards.CardCorrupt as exc:
                log.warning("turn without cards: %s", exc)
                e.cards = None
            e.rendered = {}
            e.mver = mver
        if turn_list:
            raw = rest[0] if self.turns > 0 else []
            e.turns = [json.loads(x) for x in raw]
            e.seq = seq

    def get(self, r: redis.Redis, session_id: str, npc_key: str) -> HotEntry:
        """The current entry of (session, NPC key): from the cache after one counter check, or
        loaded from Redis.

        Raises:
            memory.turns.UnknownSession / UnknownNpc / NotACharacter: as ``resolve_target``.
            redis.RedisError: Redis unreachable.
        """
        key = (session_id, npc_key)
        with self._lock:
            entry = self._cache.get(key)
        if entry is None:
            self.misses += 1
            entry = self._load(r, session_id, npc_key)
        else:
            sid, npc_id = entry.target.session_id, entry.target.npc_entry_id
            pipe = r.pipeline(transaction=False)
            pipe.hget(rkeys.memory_versions(sid), str(npc_id))
            pipe.get(rkeys.seq(sid))
            pipe.hget(rkeys.session(sid), "game_minutes")
            pipe.get(rkeys.summary(sid))  # session-wide, ~600 bytes: read every turn
            mver, seq, minutes, raw_summary = pipe.execute()
            entry.summary = summaries.summary_for(raw_summary, npc_id)
            if minutes is None:  # the session is gone from Redis
                with self._lock:
                    self._cache.pop(key, None)
                raise turns.UnknownSession(f"unknown session {session_id!r}")
            stale_memory, stale_turns = _int(mver) != entry.mver, _int(seq) != entry.seq
            if stale_memory or stale_turns:
                self.refreshes += 1
                self._refresh(r, entry, memory=stale_memory, turn_list=stale_turns)
            else:
                self.hits += 1
            if int(minutes) != entry.target.game_minutes:
                entry.target = replace(entry.target, game_minutes=int(minutes))
        with self._lock:
            self._cache[key] = entry  # a use: restarts the TTL, most recently used
        return entry

    def record(self, session_id: str, npc_key: str, turn: dict) -> None:
        """This server recorded ``turn`` (kwargs of ``TurnPayload``) for (session, NPC): append
        it to the cached turns when it directly follows them (otherwise the next ``get`` sees
        the turn counter moved and re-reads the list)."""
        with self._lock:
            entry = self._cache.get((session_id, npc_key))
            if entry is None or turn["seq"] != entry.seq + 1:
                return
            entry.turns = (entry.turns + [turn])[-self.turns:] if self.turns > 0 else []
            entry.seq = turn["seq"]

    def stats(self) -> dict:
        """``{entries, hits, misses, refreshes}`` since start."""
        return {"entries": len(self), "hits": self.hits, "misses": self.misses,
                "refreshes": self.refreshes, "at": time.time()}
