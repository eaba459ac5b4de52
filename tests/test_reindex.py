"""``npc-memory reindex``: the stored vectors rebuilt from the database for one
embedder, beside another embedder's; each in-process index holds only its own embedder's
vectors. The local MiniLM embedder is real; ``mistral-embed`` is the Mistral API wire format
served by ``tests.fakes`` (1024-d), reached by the real ``mistralai`` SDK."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid

import numpy as np
import pytest
from sqlalchemy import func, select

from inference.embedding import MistralEmbedder, get_embedder
from memory import nearline
from memory.composite import base_lore, composite_document
from memory.db import session_scope
from memory.entities import _nearest_stored
from memory.reindex import count_documents, reindex
from memory.report import session_summary
from memory.vector_index import (
    DEFAULT_EMBEDDER, VectorIndex, VectorSync, load_from_db, publish_upsert, session_scope as vscope,
)
from models import LoreEntry, SessionNote, StoredVector

from tests.broker import pipeline_quiet
from tests.fakes import FakeServer, mistral_embeddings, text_vectors
from tests.procs import ROOT, process_env


@pytest.fixture(autouse=True)
def _no_task_running(celery_app):
    """No worker task rewrites a note of this world while a test counts its documents."""
    with pipeline_quiet(celery_app, nearline.get_redis()):
        yield


@pytest.fixture()
def noted_session(game_session):
    """A session with a note on the first two canonical entries of the LIGHT world."""
    with session_scope() as s:
        entries = s.scalars(select(LoreEntry).where(
            LoreEntry.world_id == game_session["world_id"],
            LoreEntry.is_dynamically_generated.is_(False)).order_by(LoreEntry.id).limit(2)).all()
        for i, e in enumerate(entries):
            s.add(SessionNote(session_id=game_session["id"], lore_entry_id=e.id,
                              content=f"Reindex note {i} {uuid.uuid4().hex}", version=1))
        ids = [e.id for e in entries]
    return {**game_session, "noted": ids}


def _rows(world_id: int, embedder: str) -> list[tuple[str, int, int]]:
    with session_scope() as s:
        return s.execute(select(StoredVector.scope, StoredVector.lore_entry_id, StoredVector.dim)
                         .where(StoredVector.world_id == world_id,
                                StoredVector.embedder == embedder)).all()


def _run_cli(*args: str, **env: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "workers.cli", "reindex", *args], cwd=ROOT,
                          env=process_env(**env), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_reindex_writes_each_embedder_beside_the_other(light_world, noted_session):
    wid, sid = light_world["id"], noted_session["id"]
    r = nearline.get_redis()
    minilm = get_embedder()
    with session_scope() as s:
        total = count_documents(s, wid)
    # the configured embedder: base lore was embedded at import, the notes are new
    with session_scope() as s:
        first = reindex(s, r, minilm, world_key=light_world["key"], batch=16)
    assert first.embedder == DEFAULT_EMBEDDER and first.documents == total
    assert first.embedded >= 2 and first.embedded + first.unchanged == total
    with session_scope() as s:
        again = reindex(s, r, minilm, world_key=light_world["key"], batch=16)
    assert (again.embedded, again.unchanged) == (0, total)  # idempotent: content hashes
    before = sorted(_rows(wid, DEFAULT_EMBEDDER))
    assert {d for _, _, d in before} == {384}

    with FakeServer() as server:
        server.default = mistral_embeddings(text_vectors(1024))
        # documents only (--no-evidence): the request counts below are the documents'
        out = _run_cli("--world", light_world["key"], "--embedder", "mistral", "--batch", "32",
                       "--no-evidence", EMBEDDER="minilm", MISTRAL_API_KEY="mistral-test-key",
                       MISTRAL_SERVER_URL=server.url, EMBEDDING_MODEL="mistral-embed")
        calls = len(server.posts("/v1/embeddings"))
        assert out["embedder"] == "mistral-embed" and out["dim"] == 1024
        assert out["documents"] == total and out["embedded"] == total
        assert out["worlds"][light_world["key"]]["embedded"] == total
        assert calls >= total // 32  # batched: about one request per 32 documents
        scopes = {scope for scope, _, _ in _rows(wid, "mistral-embed")}
        assert calls <= total // 32 + len(scopes)  # at most one partial batch per scope
        # a second run embeds nothing and asks the API nothing
        out2 = _run_cli("--world", light_world["key"], "--embedder", "mistral",
                        "--no-evidence", EMBEDDER="minilm", MISTRAL_API_KEY="mistral-test-key",
                        MISTRAL_SERVER_URL=server.url)
        assert (out2["embedded"], out2["unchanged"]) == (0, total)
        assert len(server.posts("/v1/embeddings")) == calls
        mistral = MistralEmbedder("mistral-embed", "mistral-test-key", server.url)

        # both sets coexist; the old one untouched
        assert sorted(_rows(wid, DEFAULT_EMBEDDER)) == before
        mrows = _rows(wid, "mistral-embed")
        assert len(mrows) == total and {d for _, _, d in mrows} == {1024}
        # under the same plain scopes as MiniLM's (the key is (scope, entry, embedder))
        assert {(sc, e) for sc, e, _ in mrows} <= {(sc, e) for sc, e, _ in before}
        assert {f"world:{wid}", vscope(sid)} <= {sc for sc, _, _ in mrows}
        assert not [sc for sc, _, _ in mrows if "@" in sc]

        # each index loads only its own embedder's vectors, all under the plain scopes
        with session_scope() as s:
            small, large = VectorIndex(384, DEFAULT_EMBEDDER), VectorIndex(1024, "mistral-embed")
            load_from_db(small, s)
            load_from_db(large, s)
            assert load_from_db(VectorIndex(384, "mistral-embed"), s) == 0
            assert load_from_db(VectorIndex(1024, DEFAULT_EMBEDDER), s) == 0
            noted = s.get(LoreEntry, noted_session["noted"][0])
            note = s.scalar(select(SessionNote.content).where(
                SessionNote.session_id == sid, SessionNote.lore_entry_id == noted.id))
            n_canon = s.scalar(select(func.count()).select_from(LoreEntry).where(
                LoreEntry.world_id == wid, LoreEntry.is_dynamically_generated.is_(False)))
        for index in (small, large):
            assert index.size(f"world:{wid}") == n_canon
            assert sorted(index.ids(vscope(sid)).tolist()) == sorted(noted_session["noted"])
        doc = composite_document(base_lore(noted.title, noted.content), note)
        for index, emb in ((small, minilm), (large, mistral)):
            hit = index.search_session(wid, sid, emb.embed([doc])[0], 1)[0]
            assert hit.lore_entry_id == noted.id and hit.scope == vscope(sid)
            assert hit.score > 0.999

        # other reads of the shared plain scopes go by embedder too: the session's vector
        # count (the configured MiniLM's by default) and the entity dedup's embedding search
        with session_scope() as s:
            assert session_summary(s, sid)["session_vectors"] == 2
            assert session_summary(s, sid, "mistral-embed")["session_vectors"] == 2
            assert session_summary(s, sid, "no-such-embedder")["session_vectors"] == 0
            found = _nearest_stored(s, wid, sid, set(noted_session["noted"]), mistral, doc)
        assert found[0] == noted.id and found[1] > 0.999


def test_stream_updates_of_another_embedder_are_skipped():
    r = nearline.get_redis()
    index = VectorIndex(4, "embedder-a")
    sync = VectorSync(index, r, block_ms=10)
    sync.start_id()
    scope = f"session:{uuid.uuid4().hex}"
    publish_upsert(r, scope, 1, np.array([1, 0, 0, 0], np.float32), "embedder-b")
    publish_upsert(r, scope, 2, np.array([0, 1, 0, 0], np.float32), "embedder-a")
    publish_upsert(r, scope, 3, np.array([0, 1, 0, 0, 0], np.float32), "embedder-a")  # wrong dim
    while sync.poll():
        pass
    assert index.ids(scope).tolist() == [2]


def test_reindex_unknown_world_fails_with_a_message():
    proc = subprocess.run([sys.executable, "-m", "workers.cli", "reindex", "--world",
                           f"no-such-world-{uuid.uuid4().hex[:6]}"], cwd=ROOT,
                          env=process_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "unknown world" in proc.stderr
