"""Retrieval ranking (``memory.ranking``): recency x importance x relevance (Park et al. 2023)
from the touch times and memory versions the nearline tier keeps, on the real Redis."""

from __future__ import annotations

import time
import uuid

import pytest

from memory import keys as rkeys
from memory import nearline
from memory.ranking import Weights, rank, rank_for_session


def test_components_are_min_max_normalised_and_weighted():
    now = 1_000_000.0
    cands = [(1, 0.90), (2, 0.80), (3, 0.70)]
    touched = [None, now - 60, now - 7200]
    versions = [0, 5, 1]
    only_rel = rank(cands, touched, versions, now=now, half_life_s=3600, weights=Weights(1, 0, 0))
    assert [x.lore_entry_id for x in only_rel] == [1, 2, 3]
    assert [x.relevance for x in only_rel] == pytest.approx([1.0, 0.5, 0.0])
    both = rank(cands, touched, versions, now=now, half_life_s=3600, weights=Weights())
    # entry 2: a bit less relevant, but touched a minute ago and written to five times
    assert both[0].lore_entry_id == 2
    assert both[0].recency == pytest.approx(1.0) and both[0].importance == pytest.approx(1.0)
    # the entry never touched in the session has recency 0, the 2 h old one 0.5 ** 2 scaled
    by_id = {x.lore_entry_id: x for x in both}
    assert by_id[1].recency == 0.0
    assert 0 < by_id[3].recency < 0.3
    # equal components do not discriminate
    flat = rank([(1, 0.5), (2, 0.5)], [None, None], [0, 0], now=now, half_life_s=3600,
                weights=Weights())
    assert [x.score for x in flat] == [0.0, 0.0] and [x.lore_entry_id for x in flat] == [1, 2]
    assert rank([], [], [], now=now, half_life_s=1, weights=Weights()) == []


def test_notes_and_turns_make_an_entry_recent_and_important_in_redis():
    r = nearline.get_redis()
    sid = uuid.uuid4().hex
    stale, fresh = 101, 102
    nearline.set_note(r, sid, stale, "Old news.")
    r.hset(rkeys.touched(sid), str(stale), time.time() - 10 * 3600)  # ten hours ago
    for i in range(3):
        nearline.set_note(r, sid, fresh, f"Revision {i}.")
    cands = [(stale, 0.80), (fresh, 0.75), (103, 0.79)]
    ranked = rank_for_session(r, sid, cands, half_life_s=3600, weights=Weights())
    assert ranked[0].lore_entry_id == fresh
    assert ranked[-1].lore_entry_id == 103  # never touched, never written
    pure = rank_for_session(r, sid, cands, half_life_s=3600, weights=Weights(1, 0, 0))
    assert [x.lore_entry_id for x in pure] == [stale, 103, fresh]
    # a turn addressed to an entry touches it
    tid = uuid.uuid4().hex
    nearline.record_turn(r, sid, {"turn_id": tid, "npc_entry_id": 103, "seq": 1})
    assert float(r.hget(rkeys.touched(sid), "103")) == pytest.approx(time.time(), abs=5)
    r.delete(*r.keys(f"session:{sid}*"))
    nearline.settle_turn(r, tid)  # out of the outbox: no reconcile task should send it
