"""Approximate (IVF) search of large scopes in ``memory.vector_index.VectorIndex``: it is used
only when current, a write falls back to exact search at once, exclusions and removals hold,
and session scoping never leaks. Pure in-process tests (no Redis, no database)."""

from __future__ import annotations

import time

import numpy as np
import pytest

from memory.vector_index import AnnParams, VectorIndex, session_scope, world_scope

pytestmark = pytest.mark.pure

DIM = 32
WORLD = world_scope(1)


def _unit(rng, n, centres=None):
    """Unit vectors; around ``centres`` (cosine about 0.7) when given, as embeddings of
    related texts gather."""
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    if centres is not None:
        v = centres[rng.integers(0, len(centres), n)] + 0.11 * v
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _world(n=3000, min_size=1000, seed=0):
    rng = np.random.default_rng(seed)
    index = VectorIndex(DIM, ann=AnnParams(min_size=min_size, nprobe=24))
    vectors = _unit(rng, n, _unit(rng, 60))
    index.upsert(WORLD, list(range(1, n + 1)), vectors)
    return index, vectors, rng


def _wait_approx(index, scope, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not index.approximate(scope):
        assert time.monotonic() < deadline, "the background IVF rebuild never finished"
        time.sleep(0.05)


def test_small_scope_or_ann_off_stays_exact():
    index, _, _ = _world(n=500, min_size=1000)
    assert not index.build_approximate(WORLD)
    off, _, _ = _world(n=2000, min_size=0)
    assert not off.build_approximate(WORLD)
    assert not off.approximate(WORLD)


def test_ivf_answers_with_high_recall_against_exact():
    index, vectors, rng = _world()
    exact = VectorIndex(DIM)
    exact._scopes = index._scopes  # the same stored vectors, searched exactly
    queries = vectors[rng.choice(len(vectors), 100, replace=False)] + 0.02 * _unit(rng, 100)
    want = [[h.lore_entry_id for h in exact.search(WORLD, q, 10)] for q in queries]
    assert index.build_approximate(WORLD) and index.approximate(WORLD)
    got = [[h.lore_entry_id for h in index.search(WORLD, q, 10)] for q in queries]
    recall = np.mean([len(set(g) & set(w)) / 10 for g, w in zip(got, want)])
    assert recall >= 0.9, recall


def test_a_write_falls_back_to_exact_until_the_ivf_index_is_rebuilt():
    index, vectors, rng = _world()
    assert index.build_approximate(WORLD)
    new = _unit(rng, 1)[0]
    index.upsert(WORLD, [99_999], new)
    assert not index.approximate(WORLD)
    # the new vector is found at once (exact search), while a rebuild starts in the background
    assert index.search(WORLD, new, 1)[0].lore_entry_id == 99_999
    _wait_approx(index, WORLD)
    assert index.search(WORLD, new, 1)[0].lore_entry_id == 99_999

    index.remove(WORLD, [99_999])
    assert not index.approximate(WORLD)
    assert all(h.lore_entry_id != 99_999 for h in index.search(WORLD, new, 10))
    _wait_approx(index, WORLD)
    assert all(h.lore_entry_id != 99_999 for h in index.search(WORLD, new, 10))


def test_exclusion_holds_through_the_ivf_index():
    index, vectors, _ = _world()
    assert index.build_approximate(WORLD)
    q = vectors[41]
    top = [h.lore_entry_id for h in index.search(WORLD, q, 10)]
    assert top[0] == 42
    excluded = np.asarray(top[:5], dtype=np.int64)
    again = [h.lore_entry_id for h in index.search(WORLD, q, 10, exclude=excluded)]
    assert not set(again) & set(top[:5])
    assert len(again) == 10


def test_session_search_never_returns_another_sessions_documents():
    index, vectors, rng = _world()
    assert index.build_approximate(WORLD)
    mine, theirs = _unit(rng, 20), _unit(rng, 20)
    index.upsert(session_scope("mine"), list(range(1, 21)), mine)
    index.upsert(session_scope("theirs"), list(range(1, 21)), theirs)
    for q in theirs:  # queries aimed exactly at the other session's documents
        hits = index.search_session(1, "mine", q, 10)
        assert {h.scope for h in hits} <= {session_scope("mine"), WORLD}
        # entries 1-20 are overridden by this session: the world's versions never appear
        assert all(h.lore_entry_id > 20 for h in hits if h.scope == WORLD)
