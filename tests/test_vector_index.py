"""The in-process vector index (``memory.vector_index``): upserts by id, removal, best-first
search bounded by k, session scopes over world scopes, its Redis stream sync between
processes, and loading it from the stored vectors after embedding."""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sqlalchemy import select

from memory.composite import base_lore, composite_document, content_hash
from memory.db import session_scope
from memory.notes import apply_note_update
from memory.vector_index import (
    VectorIndex,
    VectorSync,
    load_from_db,
    publish_upsert,
    session_scope as vscope_session,
    world_scope,
)
from models import LoreEntry, StoredVector

pytestmark = pytest.mark.pure

DIM = 8


def _unit(*values: float, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[: len(values)] = values
    return v / np.linalg.norm(v)


def _basis(i: int, dim: int = DIM) -> np.ndarray:
    v = np.zeros(dim, dtype=np.float32)
    v[i] = 1.0
    return v



def _entry(world_id: int, key: str) -> LoreEntry:
    with session_scope() as s:
        return s.scalar(select(LoreEntry).where(LoreEntry.world_id == world_id, LoreEntry.key == key))


def test_upsert_replaces_by_id():
    index = VectorIndex(DIM)
    index.upsert("world:1", [10, 11], np.stack([_basis(0), _basis(1)]))
    assert index.size("world:1") == 2
    index.upsert("world:1", [10], _basis(2)[None, :])  # replace id 10
    assert index.size("world:1") == 2
    assert sorted(index.ids("world:1").tolist()) == [10, 11]
    hits = index.search("world:1", _basis(2), k=2)
    assert hits[0].lore_entry_id == 10
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[0].scope == "world:1"
    # the old vector of id 10 is gone: nothing matches the first axis any more
    assert all(h.score < 0.5 for h in index.search("world:1", _basis(0), k=2))


def test_upsert_rejects_mismatched_ids():
    index = VectorIndex(DIM)
    with pytest.raises(ValueError):
        index.upsert("world:1", [1, 2], _basis(0)[None, :])


def test_remove_and_size():
    index = VectorIndex(DIM)
    index.upsert("world:1", [1, 2, 3], np.stack([_basis(0), _basis(1), _basis(2)]))
    index.upsert("session:a", [1], _basis(3)[None, :])
    assert index.size() == 4
    assert index.remove("world:1", [2, 99]) == 1
    assert index.size("world:1") == 2
    assert sorted(index.ids("world:1").tolist()) == [1, 3]
    assert 2 not in [h.lore_entry_id for h in index.search("world:1", _basis(1), k=5)]
    assert index.remove("nope", [1]) == 0
    assert index.size("nope") == 0
    assert index.search("nope", _basis(0), k=3) == []


def test_search_is_best_first_and_bounded_by_k():
    index = VectorIndex(DIM)
    index.upsert("world:1", [1, 2, 3], np.stack([_unit(1, 0), _unit(1, 1), _unit(0, 1)]))
    hits = index.search("world:1", _unit(1, 0.2), k=2)
    assert [h.lore_entry_id for h in hits] == [1, 2]
    assert hits[0].score >= hits[1].score


def test_search_session_merges_scopes_and_session_overrides_world():
    index = VectorIndex(DIM)
    world_id, sid = 7, "s1"
    # world lore: entries 1, 2, 3
    index.upsert(world_scope(world_id), [1, 2, 3], np.stack([_basis(0), _basis(1), _basis(2)]))
    # the session has its own document for entry 1, pointing elsewhere, and a new entry 4
    index.upsert(vscope_session(sid), [1, 4], np.stack([_unit(0, 0, 0, 1, 1), _basis(5)]))

    hits = index.search_session(world_id, sid, _basis(0), k=10)
    ids = [h.lore_entry_id for h in hits]
    assert sorted(ids) == [1, 2, 3, 4]
    assert len(ids) == len(set(ids))  # entry 1 appears once
    one = next(h for h in hits if h.lore_entry_id == 1)
    assert one.scope == vscope_session(sid)  # from the session scope, not the world's
    assert one.score < 0.5  # the world's vector (a perfect match) is excluded
    assert {h.scope for h in hits if h.lore_entry_id in (2, 3)} == {world_scope(world_id)}
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)

    # the session document is found through its own vector
    best = index.search_session(world_id, sid, _unit(0, 0, 0, 1, 1), k=1)
    assert [(h.lore_entry_id, h.scope) for h in best] == [(1, vscope_session(sid))]
    # another session of the same world sees the world's document for entry 1
    other = index.search_session(world_id, "s2", _basis(0), k=1)
    assert [(h.lore_entry_id, h.scope) for h in other] == [(1, world_scope(world_id))]
    # k bounds the merged list
    assert len(index.search_session(world_id, sid, _basis(0), k=2)) == 2


@pytest.mark.services  # a Redis stream
def test_vector_sync_delivers_published_upsert_to_another_index():
    from memory.nearline import get_redis

    r = get_redis()
    index = VectorIndex(DIM)
    sync = VectorSync(index, r, block_ms=200)
    sync.start_id()
    scope = f"session:sync-{uuid.uuid4().hex}"
    vec = _unit(0.3, 0.4, 0.5)
    publish_upsert(r, scope, 4242, vec)
    applied = 0
    for _ in range(20):  # poll until the message is read (bounded)
        applied += sync.poll()
        if index.size(scope):
            break
    assert applied >= 1
    assert index.ids(scope).tolist() == [4242]
    hit = index.search(scope, vec, k=1)[0]
    assert hit.lore_entry_id == 4242 and hit.score == pytest.approx(1.0, abs=1e-5)
    # a replayed position is idempotent: re-reading from the start does not duplicate
    sync.last_id = "0-0"
    while sync.poll():
        pass
    assert index.size(scope) == 1


@pytest.mark.services  # a Redis stream
def test_vector_sync_ignores_other_dimensions():
    from memory.nearline import get_redis

    r = get_redis()
    index = VectorIndex(DIM)
    sync = VectorSync(index, r, block_ms=200)
    sync.start_id()
    scope = f"session:dim-{uuid.uuid4().hex}"
    publish_upsert(r, scope, 1, np.ones(DIM + 1, dtype=np.float32))
    publish_upsert(r, scope, 2, _basis(1))
    for _ in range(20):
        sync.poll()
        if index.size(scope):
            break
    assert index.ids(scope).tolist() == [2]


def test_load_from_db_after_embedding(light_world, game_session):
    from inference.embedding import get_embedder
    from memory.nearline import get_redis
    from memory.vectors import embed_entry, embed_world_base

    embedder = get_embedder()
    r = get_redis()
    world_id, sid = light_world["id"], game_session["id"]
    n_entries = len(light_world["spec"].entries)
    baker = _entry(world_id, "baker_27")

    with session_scope() as s:
        # the world's base lore is already embedded: re-embedding changes nothing
        assert embed_world_base(s, r, embedder, world_id) == 0
        apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                          event="The baker lost his rolling pin.", idempotency_key=uuid.uuid4().hex,
                          rewrite=lambda t, lore, note, ev: ("The baker lost his rolling pin.", 0))
    with session_scope() as s:
        result = embed_entry(s, r, embedder, baker.id, sid)
    assert result.status == "embedded"
    assert result.scope == vscope_session(sid)
    assert result.document == composite_document(base_lore(baker.title, baker.content),
                                                 "The baker lost his rolling pin.")
    with session_scope() as s:  # same document again: a no-op
        assert embed_entry(s, r, embedder, baker.id, sid).status == "unchanged"
        stored = s.scalar(select(StoredVector).where(StoredVector.scope == vscope_session(sid),
                                                     StoredVector.lore_entry_id == baker.id))
        assert stored.document == result.document
        assert stored.content_hash == content_hash(result.document, embedder.name)

    index = VectorIndex(embedder.dim)
    with session_scope() as s:
        loaded = load_from_db(index, s)
    assert loaded >= n_entries
    assert index.size(world_scope(world_id)) >= n_entries
    assert index.ids(vscope_session(sid)).tolist() == [baker.id]
    query = embedder.embed([result.document])[0]
    hits = index.search_session(world_id, sid, query, k=5)
    assert (hits[0].lore_entry_id, hits[0].scope) == (baker.id, vscope_session(sid))
    assert [h.lore_entry_id for h in hits].count(baker.id) == 1
