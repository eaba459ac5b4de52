"""A world tick's budget without Celery: sharing the tick's budget among sessions
(``memory.simulation.world_tick``, a fake ``request`` instead of the broker) and how many
NPCs one simulation call can cover (``memory.simulation.fit_budget``). Real Redis."""

from __future__ import annotations

import time
import uuid

from memory import nearline, simulation


def test_a_tick_shares_its_budget_least_recently_simulated_first_and_skips_busy_sessions():
    r = nearline.get_redis()
    world = 900_000 + uuid.uuid4().int % 100_000  # sessions of a world no other test ticks
    recent, first, second = sorted(uuid.uuid4().hex for _ in range(3))
    for sid in (recent, first, second):
        nearline.open_session(r, sid, world, "p")
    r.zadd("sessions:simulated", {recent: time.time()})  # simulated a moment ago: last
    requested = []

    def request(sid, *, max_npcs, max_tokens):
        requested.append((sid, max_npcs, max_tokens))
        return sid != second  # the second one's previous simulation is still queued

    out = simulation.world_tick(r, request, idle_after_s=3600, world_id=world,
                                per_session_npcs=2, per_session_tokens=1000, tick_npcs=5,
                                tick_tokens=2200)
    # never simulated first (by id), then the recent one, which gets what is left: 200 tokens
    # cannot fit one NPC, so it waits for the next tick
    assert requested == [(first, 2, 1000), (second, 2, 1000)]
    assert out == {"sessions": 3, "enqueued": 1, "waiting": 1, "busy": 1, "npc_budget": 2,
                   "token_budget": 1000}


def test_a_tick_of_one_world_requests_nothing_for_other_worlds_or_idle_sessions():
    r = nearline.get_redis()
    world = 900_000 + uuid.uuid4().int % 100_000
    mine, other = uuid.uuid4().hex, uuid.uuid4().hex
    nearline.open_session(r, mine, world, "p")
    nearline.open_session(r, other, world + 1, "p")
    requested = []

    def request(sid, **budget):
        requested.append(sid)
        return True

    out = simulation.world_tick(r, request, idle_after_s=3600, world_id=world,
                                per_session_npcs=3, per_session_tokens=1200, tick_npcs=10,
                                tick_tokens=10_000)
    assert requested == [mine]
    assert out == {"sessions": 1, "enqueued": 1, "waiting": 0, "busy": 0, "npc_budget": 3,
                   "token_budget": 1200}
    r.zadd("sessions:active", {mine: time.time() - 7200})  # idle for two hours
    assert simulation.world_tick(r, request, idle_after_s=3600, world_id=world,
                                 per_session_npcs=3, per_session_tokens=1200, tick_npcs=10,
                                 tick_tokens=10_000)["sessions"] == 0
    assert requested == [mine]


def test_the_token_budget_decides_how_many_npcs_one_call_covers():
    def prompt_chars(targets, places):  # 300 characters of frame, 600 per NPC
        assert places == [{"key": "mill"}]
        return 300 + 600 * len(targets)

    chosen, places = ["a", "b", "c"], [{"key": "mill"}]
    # 3 NPCs: a 701-token prompt leaves 299 completion tokens (at least 80 per NPC)
    assert simulation.fit_budget(chosen, places, 1000, prompt_chars) == (3, 299)
    # 900 tokens: 3 NPCs would leave 199 < 240; 2 leave 399, capped at 160 per NPC
    assert simulation.fit_budget(chosen, places, 900, prompt_chars) == (2, 320)
    assert simulation.fit_budget(chosen, places, 200, prompt_chars) == (0, 0)
    assert simulation.fit_budget([], places, 5000, prompt_chars) == (0, 0)
