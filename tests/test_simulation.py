"""World simulation on a budget: who is simulated, the budgets, idle sessions, the
in-game clock, and beat running once even when started twice (real Redis, real PostgreSQL,
real ``celery beat`` and ``celery worker`` subprocesses)."""

from __future__ import annotations

import time
import uuid

import redis as redis_py
from sqlalchemy import select

from memory import nearline
from memory.db import session_scope
from memory.simulation import Weights, allot_budget, rank_candidates, sessions_to_tick
from models import LoreEntry, TaskRecord
from tests.broker import queued_messages
from tests.procs import PrivateRedis, SubprocessWorker, _Subprocess, process_env


def _turn(game, npc_id: int, text: str, seq: int) -> dict:
    return {"turn_id": uuid.uuid4().hex, "session_id": game["id"], "world_id": game["world_id"],
            "seq": seq, "npc_entry_id": npc_id, "player_text": text, "npc_text": "Hm.",
            "latency_ms": 1.0, "created_at": time.time()}


def _entry(world_id: int, key: str) -> LoreEntry:
    with session_scope() as s:
        return s.scalar(select(LoreEntry).where(LoreEntry.world_id == world_id, LoreEntry.key == key))


def _rank(game, recent_k: int = 6, weights: Weights = Weights(), now: float | None = None):
    with session_scope() as s:
        return rank_candidates(s, nearline.get_redis(), game["world_id"], game["id"], recent_k,
                               weights, now=now)


# ---- who is simulated ----------------------------------------------------------------------

def test_characters_in_recent_turns_are_not_candidates(game_session):
    r = nearline.get_redis()
    baker = _entry(game_session["world_id"], "baker_27")
    before = {c.entry.key for c in _rank(game_session)}
    assert "baker_27" in before
    nearline.record_turn(r, game_session["id"], _turn(game_session, baker.id, "Bread?", 1))
    after = {c.entry.key for c in _rank(game_session)}
    assert after == before - {"baker_27"}


def test_mentions_and_staleness_order_the_candidates(game_session):
    """An NPC the player keeps talking about goes first; one simulated a moment ago goes
    behind every NPC never simulated."""
    r = nearline.get_redis()
    baker = _entry(game_session["world_id"], "baker_27")
    ranked = _rank(game_session)
    assert len({c.score for c in ranked}) == 1  # nothing known yet: all equal, by id
    titles = [c.entry.title.lower() for c in ranked]
    target = next(c.entry for c in reversed(ranked)  # a name that contains no other NPC's name
                  if sum(t in c.entry.title.lower() for t in titles) == 1)
    name = target.title
    nearline.record_turn(r, game_session["id"], _turn(
        game_session, baker.id, f"Have you seen {name}? I owe {name} a favour.", 1))
    ranked = _rank(game_session)
    assert ranked[0].entry.key == target.key
    assert ranked[0].why["mentions"] == 2 and ranked[0].score > ranked[1].score
    stale = ranked[1].entry  # first among the equals
    r.zadd(f"session:{game_session['id']}:simulated", {str(stale.id): time.time()})
    ranked = _rank(game_session)
    assert ranked[-1].entry.key == stale.key
    assert ranked[-1].why["hours_since_simulated"] == 0.0
    later = _rank(game_session, now=time.time() + 48 * 3600)  # two days on it is stale again
    assert later[-1].entry.key != stale.key


def test_an_open_promise_puts_an_npc_ahead(game_session):
    """Relevance: an off-screen NPC the player owes a promise to is simulated before
    one without, other signals being equal; keeping the promise removes the advantage."""
    from memory.cards import RelationshipEvent, apply_events

    r = nearline.get_redis()
    ranked = _rank(game_session)
    last = ranked[-1].entry  # behind every other NPC by id
    apply_events(r, game_session["id"], last.id, relationship=[RelationshipEvent(
        event_id="t1:r0", kind="promise_made", detail="The player promised to bring wine.")])
    ranked = _rank(game_session)
    assert ranked[0].entry.key == last.key
    assert ranked[0].why["promises"] == 1
    apply_events(r, game_session["id"], last.id, relationship=[RelationshipEvent(
        event_id="t2:r0", kind="promise_kept", detail="The player brought the wine.")])
    assert _rank(game_session)[0].why["promises"] == 0


def test_budget_is_shared_and_the_rest_wait():
    sessions = [f"s{i}" for i in range(5)]
    allotted, waiting = allot_budget(sessions, per_session_npcs=2, per_session_tokens=1200,
                                     tick_npcs=5, tick_tokens=3000)
    assert [(a.session_id, a.max_npcs, a.max_tokens) for a in allotted] == [
        ("s0", 2, 1200), ("s1", 2, 1200), ("s2", 1, 600)]
    assert waiting == ["s3", "s4"]
    assert sum(a.max_npcs for a in allotted) <= 5 and sum(a.max_tokens for a in allotted) <= 3000
    allotted, waiting = allot_budget(sessions, 2, 1200, tick_npcs=10, tick_tokens=1400)
    assert [a.session_id for a in allotted] == ["s0"] and len(waiting) == 4  # 200 < 300 left


def test_idle_sessions_stop_ticking_until_the_player_returns(game_session):
    r = nearline.get_redis()
    sid = game_session["id"]
    assert sid in sessions_to_tick(r, 3600)
    r.zadd("sessions:active", {sid: time.time() - 7200})
    assert sid not in sessions_to_tick(r, 3600)
    baker = _entry(game_session["world_id"], "baker_27")
    nearline.record_turn(r, sid, _turn(game_session, baker.id, "I am back.", 1))
    assert sid in sessions_to_tick(r, 3600)


def test_least_recently_simulated_sessions_tick_first(light_world):
    r = nearline.get_redis()
    a, b = uuid.uuid4().hex, uuid.uuid4().hex
    for sid in (a, b):
        nearline.open_session(r, sid, light_world["id"], "p")
    r.zadd("sessions:simulated", {a: time.time()})
    order = [s for s in sessions_to_tick(r, 3600) if s in (a, b)]
    assert order == [b, a]


def test_the_clock_moves_once_per_tick(game_session):
    r = nearline.get_redis()
    sid = game_session["id"]
    assert nearline.advance_clock_once(r, sid, "t1", 90) == 90
    assert nearline.advance_clock_once(r, sid, "t1", 90) == 90  # retried tick
    assert nearline.advance_clock_once(r, sid, "t2", 90) == 180
    assert nearline.get_session(r, sid)["game_minutes"] == 180
    assert nearline.format_game_time(180) == "day 1, 03:00"
    assert nearline.format_game_time(24 * 60 + 90) == "day 2, 01:30"
    assert nearline.format_duration(90) == "1 hour and 30 minutes"
    assert nearline.format_duration(26 * 60) == "1 day and 2 hours"


# ---- beat ----------------------------------------------------------------------------------

class Beat(_Subprocess):
    """``celery -A workers.celery_app beat`` (redbeat, from celeryconfig)."""

    def start(self) -> None:
        import sys

        self._spawn([sys.executable, "-m", "celery", "-A", "workers.celery_app", "beat",
                     "--loglevel", "DEBUG"])


def _tick_ids(r) -> list[str]:
    return [m["id"] for m in queued_messages(r, "simulate_world")
            if m["task"] == "npc_memory.world_tick"]


def _ticks_queued(r) -> int:
    return len(_tick_ids(r))


def test_one_beat_runs_when_two_are_started_and_stale_ticks_expire(database, wait_for):
    """Two beat processes on one Redis: world ticks (every second) are sent at one beat's
    rate; when that beat is killed the other takes over within the lock timeout. Ticks that
    waited in the queue longer than their ``expires`` are discarded by the worker unrun."""
    broker = PrivateRedis()
    broker.start()
    r = redis_py.Redis.from_url(broker.url)
    env = process_env(REDIS_URL=broker.url, WORLD_TICK_SECONDS="1", RECONCILE_SECONDS="3600",
                      BEAT_LOCK_TIMEOUT_S="6")
    first, second = Beat(env, "beat-1.log"), Beat(env, "beat-2.log")
    worker = SubprocessWorker(env, "simulate_world", "beat-worker.log")
    try:
        first.start()
        wait_for(lambda: _ticks_queued(r) >= 1, timeout=60)
        second.start()
        time.sleep(3)  # the second beat is up and waiting for the lock
        start = _ticks_queued(r)
        time.sleep(6)
        sent = _ticks_queued(r) - start
        assert 3 <= sent <= 8, sent  # one beat's rate (one a second), not two
        assert "Sending due task world-tick" not in second.tail(100000)

        first.proc.kill()  # kill -9: the lock is not released, it expires
        first.proc.wait()
        wait_for(lambda: "Sending due task world-tick" in second.tail(100000), timeout=30)
        second.stop()
        stale = _tick_ids(r)
        assert len(stale) >= 5
        time.sleep(1.5)  # every queued tick is now older than its expiry (1 s)

        worker.start()
        wait_for(lambda: r.llen("simulate_world") == 0, timeout=60)
        time.sleep(1.0)
        with session_scope() as s:
            ran = s.scalars(select(TaskRecord).where(TaskRecord.task_id.in_(stale))).all()
        assert ran == []  # none of the stale ticks ran
        assert "expired" in worker.tail(200000).lower() or "revoked" in worker.tail(200000).lower()
    finally:
        worker.stop()
        first.stop()
        second.stop()
        broker.stop()
