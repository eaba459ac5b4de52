"""The dialogue server's Level 1 hot cache (``memory.hot_cache``) on the real Redis: TTL and
LRU eviction (the background loop included), invalidation by the Redis counters when a worker
rewrites a note or cards or another server records a turn, and reconstruction from Redis by a
second cache."""

from __future__ import annotations

import time
import uuid

import pytest

from memory import cards as mc
from memory import nearline, turns
from memory.hot_cache import HotCache


@pytest.fixture()
def chars(light_world) -> list[str]:
    keys = [c.key for c in light_world["spec"].characters()]
    assert "baker_27" in keys and len(keys) >= 3
    return ["baker_27"] + [k for k in keys if k != "baker_27"][:2]


def _turn(target: turns.Target, seq: int, text: str) -> dict:
    return {"turn_id": uuid.uuid4().hex, "session_id": target.session_id,
            "world_id": target.world_id, "seq": seq, "npc_entry_id": target.npc_entry_id,
            "player_text": text, "npc_text": "Hm.", "latency_ms": 1.0, "created_at": time.time()}


def test_entries_expire_after_ttl_through_the_background_loop(game_session):
    hot = HotCache(ttl_s=0.5, evict_interval_s=0.1)
    hot.start()
    try:
        r = nearline.get_redis()
        hot.get(r, game_session["id"], "baker_27")
        time.sleep(0.3)
        hot.get(r, game_session["id"], "baker_27")  # a use restarts the TTL
        time.sleep(0.3)
        assert len(hot) == 1  # 0.6 s after the first use, 0.3 s after the last
        time.sleep(0.5)
        assert len(hot) == 0  # expired and swept without anyone touching the cache
    finally:
        hot.stop()


def test_least_recently_used_entry_is_evicted_at_the_size_bound(game_session, chars):
    hot = HotCache(max_entries=2, ttl_s=60)
    r, sid = nearline.get_redis(), game_session["id"]
    a, b, c = chars
    hot.get(r, sid, a)
    hot.get(r, sid, b)
    hot.get(r, sid, a)  # a is now the most recently used
    hot.get(r, sid, c)
    assert hot.keys() == [(sid, a), (sid, c)]
    assert hot.stats()["misses"] == 3 and hot.stats()["hits"] == 1


def test_note_cards_and_turns_written_elsewhere_are_seen_on_the_next_turn(game_session):
    hot = HotCache(ttl_s=60, turns=3)
    r, sid = nearline.get_redis(), game_session["id"]
    e = hot.get(r, sid, "baker_27")
    assert e.note == "" and e.turns == [] and e.cards_text(600) == ""
    target = e.target
    assert hot.get(r, sid, "baker_27").note == "" and hot.hits == 1

    nearline.set_note(r, sid, target.npc_entry_id, "The player owes the baker two coins.")
    assert hot.get(r, sid, "baker_27").note == "The player owes the baker two coins."
    mc.apply_events(r, sid, target.npc_entry_id, [mc.RelationshipEvent(
        event_id=f"{uuid.uuid4().hex}:r0", kind="gift", detail="A sack of rye flour.",
        intensity=5)])
    assert "rye flour" in hot.get(r, sid, "baker_27").cards_text(600)

    # turns recorded by another dialogue server: the turn counter moved
    for i in range(4):
        t = _turn(target, nearline.next_turn_seq(r, sid), f"line {i}")
        nearline.record_turn(r, sid, t)
    got = hot.get(r, sid, "baker_27")
    assert [t["player_text"] for t in got.turns] == ["line 1", "line 2", "line 3"]
    assert [t["player_text"] for t in got.recent_npc_turns()] == ["line 1", "line 2", "line 3"]
    # a turn this server recorded is appended without a re-read
    t = _turn(target, nearline.next_turn_seq(r, sid), "line 4")
    nearline.record_turn(r, sid, t)
    hot.record(sid, "baker_27", t)
    refreshes = hot.refreshes
    got = hot.get(r, sid, "baker_27")
    assert [t["player_text"] for t in got.turns] == ["line 2", "line 3", "line 4"]
    assert hot.refreshes == refreshes  # counters matched: served from the cache

    # the in-game clock moves with world ticks
    r.hincrby(f"session:{sid}", "game_minutes", 120)
    assert hot.get(r, sid, "baker_27").target.game_minutes == 120

    # a second (or restarted) server rebuilds the same view from Redis
    other = HotCache(ttl_s=60, turns=3).get(r, sid, "baker_27")
    assert (other.note, other.cards_text(600), other.turns, other.target) == (
        got.note, got.cards_text(600), got.turns, hot.get(r, sid, "baker_27").target)


def test_unknown_session_and_npc_are_not_cached(game_session):
    hot = HotCache()
    r = nearline.get_redis()
    with pytest.raises(turns.UnknownSession):
        hot.get(r, uuid.uuid4().hex, "baker_27")
    with pytest.raises(turns.UnknownNpc):
        hot.get(r, game_session["id"], "no_such_npc")
    assert len(hot) == 0
