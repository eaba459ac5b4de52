"""Evidence: every recorded turn's utterances stay retrievable with who said them and when.

The fusion and budget rule (``memory.retrieval``) alone; migration 0009 up and down on SQLite
and PostgreSQL; the evidence embedding (``memory.evidence.embed_turns``) against the real
database and Redis, redelivered and rebuilt into a fresh index; and, with the real Celery
worker and model server, an event posted to the dialogue server becoming searchable, listed
by ``/memory`` and shown in another NPC's prompt.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from sqlalchemy import create_engine, delete, func, insert, inspect, select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from alembic import command
from memory import keys as rkeys
from memory import nearline
from memory.db import alembic_config, migrate, normalise_url, session_scope
from memory.retrieval import RRF_K, fuse, merge, take_within
from memory.vector_index import VectorIndex, evidence_scope, load_from_db
from models import EvidenceVector, GameSession, LoreEntry, StoredVector, TaskRecord, World

# --------------------------------------------------------------------------- fusion and budget


def _ident(item):
    return item[:2]


def test_fuse_sums_reciprocal_ranks_and_keeps_first_appearance_on_ties():
    docs = [("d", 1), ("d", 2), ("d", 3)]
    ev = [("e", 7), ("d", 2)]  # an item in both lists gets both contributions
    fused = fuse([docs, ev], _ident)
    assert [f.item for f in fused] == [("d", 2), ("d", 1), ("e", 7), ("d", 3)]
    assert fused[0].score == pytest.approx(1 / (RRF_K + 2) + 1 / (RRF_K + 2))
    assert fused[1].score == pytest.approx(1 / (RRF_K + 1))
    assert fused[2].score == pytest.approx(1 / (RRF_K + 1))  # tie: documents came first
    assert [f.rank for f in fused] == [1, 2, 3, 4]
    assert fuse([[], []], _ident) == []
    with pytest.raises(ValueError):
        fuse([docs], _ident, k=0)


def test_take_within_skips_what_does_not_fit_and_takes_later_smaller_items():
    items = ["aaaa", "bbbbbbbbbb", "cc", "d", "eeeee"]
    assert take_within(items, str, max_chars=7) == ["aaaa", "cc", "d"]
    assert take_within(items, str, k=2) == ["aaaa", "bbbbbbbbbb"]
    assert take_within(items, str, k=2, max_chars=7) == ["aaaa", "cc"]
    assert take_within(items, str) == items
    assert take_within(items, str, max_chars=0) == []
    with pytest.raises(ValueError):
        take_within(items, str, k=-1)


def test_merge_interleaves_documents_and_evidence_under_one_budget():
    docs = [("document", 1, "x" * 50), ("document", 2, "y" * 10)]
    ev = [("evidence", 4, "z" * 20), ("evidence", 5, "w" * 5)]
    out = merge(docs, ev, text=lambda c: c[2], key=_ident, max_chars=40)
    # fused order d1, e4, d2, e5; d1 (50) does not fit, the rest do (35 chars)
    assert [(f.item[:2], f.rank) for f in out] == [
        (("evidence", 4), 1), (("document", 2), 2), (("evidence", 5), 3)]
    assert out[0].score == pytest.approx(1 / (RRF_K + 1))
    assert [f.item[:2] for f in merge(docs, ev, text=lambda c: c[2], key=_ident, k=3)] == [
        ("document", 1), ("evidence", 4), ("document", 2)]


def test_merge_lets_evidence_claim_the_budget_before_documents():
    """Under a budget the evidence taken is what plain retrieval over the utterances takes:
    a better-ranked document never pushes an utterance out, it only fills what is left."""
    docs = [("document", 1, "x" * 30), ("document", 2, "y" * 5)]
    ev = [("evidence", 4, "z" * 20), ("evidence", 5, "w" * 15), ("evidence", 6, "v" * 30)]
    out = merge(docs, ev, text=lambda c: c[2], key=_ident, max_chars=40)
    plain = take_within(ev, lambda c: c[2], max_chars=40)
    assert [f.item for f in out if f.item[0] == "evidence"] == plain
    # fused order d1, e4, d2, e5, e6: d1 no longer fits after e4 and e5; d2 fills the rest
    assert [f.item[:2] for f in out] == [("evidence", 4), ("document", 2), ("evidence", 5)]
    assert [f.rank for f in out] == [1, 2, 3]
    # a k limit counts both kinds
    assert [f.item[:2] for f in merge(docs, ev, text=lambda c: c[2], key=_ident, k=2,
                                      max_chars=100)] == [("evidence", 4), ("evidence", 5)]


def test_turn_items_and_their_prompt_lines():
    import prompts
    from memory.evidence import item_id, prompt_line, turn_items

    turn = {"turn_id": "t1", "seq": 3, "player_text": "Lunch at one?", "npc_text": "Gladly.",
            "created_at": 1.5, "game_minutes": 1890}
    items = turn_items(turn, "Ann", "Klaus Mueller")
    assert [(i["part"], i["speaker"], i["text"], item_id(i["seq"], i["part"])) for i in items] == [
        (0, "Ann", "Ann: Lunch at one?", 6), (1, "Klaus Mueller", "Klaus Mueller: Gladly.", 7)]
    assert items[0]["event_id"] is None and items[0]["game_minutes"] == 1890
    said = turn_items({**turn, "npc_text": "  ", "speaker": "Maria", "event_id": "e"}, "Ann", "K")
    assert [(i["speaker"], i["event_id"]) for i in said] == [("Maria", "e")]  # no reply: part 0
    line = prompt_line(items[0])
    assert line == "[day 2, 07:30] Ann: Lunch at one?"
    system = prompts.messages(
        "dialogue", npc={"title": "Klaus Mueller", "content": "A student."}, note="", cards="",
        memories="", recent_turns=[], retrieved=[], evidence=[line],
        player_text="Hi")[0]["content"]
    assert f"[What was said earlier in this session]\n{line}" in system


# --------------------------------------------------------------------------- migration


def test_migration_0009_adds_and_removes_the_evidence_schema(blank_database):
    migrate(blank_database, "0008")
    engine = create_engine(normalise_url(blank_database), poolclass=NullPool)
    try:
        with Session(engine) as s, s.begin():
            world = World(key="evidence-world", title="Evidence world")
            s.add(world)
            s.flush()
            # Core inserts naming their columns: the models have columns of later revisions
            eid = s.execute(insert(LoreEntry.__table__).values(
                world_id=world.id, key="npc", entity_type="character", title="Npc",
                content="c").returning(LoreEntry.__table__.c.id)).scalar_one()
            s.execute(text("INSERT INTO game_sessions (id, world_id, player_name, status, "
                           "game_minutes, created_at) VALUES ('s1', :w, 'player', 'active', 0, "
                           "CURRENT_TIMESTAMP)"), {"w": world.id})
        with engine.begin() as conn:  # the archive as 0008 wrote it (no columns of 0009)
            conn.execute(text("INSERT INTO turns (id, session_id, seq, npc_entry_id, player_text, "
                              "npc_text, latency_ms, created_at) VALUES ('t1', 's1', 1, :e, "
                              "'Mara: hello', 'hi', 0, CURRENT_TIMESTAMP)"), {"e": eid})
        migrate(blank_database)  # up to head
        insp = inspect(engine)
        cols = {c["name"] for c in insp.get_columns("turns")}
        assert {"speaker", "event_id", "game_minutes"} <= cols
        uniques = {u["name"]: u["column_names"]
                   for u in insp.get_unique_constraints("evidence_vectors")}
        assert uniques == {"uq_evidence_vectors_turn_part_embedder":
                           ["turn_id", "part", "embedder"]}
        with engine.connect() as conn:  # the old row is kept as it was
            row = conn.execute(text("SELECT player_text, speaker, game_minutes FROM turns")).one()
            assert tuple(row) == ("Mara: hello", None, None)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO evidence_vectors (turn_id, part, session_id, item_id, "
                              "embedder, dim, vector, created_at) VALUES ('t1', 0, 's1', 2, "
                              "'e', 1, :v, CURRENT_TIMESTAMP)"), {"v": b"\0\0\0\0"})

        command.downgrade(alembic_config(blank_database), "0008")
        insp = inspect(engine)
        assert "evidence_vectors" not in insp.get_table_names()
        assert not {"speaker", "event_id", "game_minutes"} & {
            c["name"] for c in insp.get_columns("turns")}
        with engine.connect() as conn:
            assert conn.execute(text("SELECT player_text FROM turns")).scalar() == "Mara: hello"
        migrate(blank_database)  # and up again
        assert "evidence_vectors" in inspect(engine).get_table_names()
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- the store


def _turn(game_session, npc_entry_id: int, seq: int, player_text: str, npc_text: str,
          **extra) -> dict:
    return {"turn_id": uuid.uuid4().hex, "session_id": game_session["id"],
            "world_id": game_session["world_id"], "seq": seq, "npc_entry_id": npc_entry_id,
            "player_text": player_text, "npc_text": npc_text, "latency_ms": 0.0,
            "created_at": 1_700_000_000.0 + seq, "game_minutes": 60 * seq, **extra}


def _stream_ids(r, scope: str) -> list[int]:
    return [int(f[b"id"]) for _, f in r.xrange(rkeys.VECTOR_UPDATES) if f[b"scope"].decode() == scope]


def test_embed_turns_stores_publishes_once_and_a_rebuilt_index_has_the_evidence(game_session):
    from inference.embedding import get_embedder
    from memory.archive import insert_turns
    from memory.evidence import all_items, embed_turns, get_items

    r, embedder, sid = nearline.get_redis(), get_embedder(), game_session["id"]
    baker = nearline.resolve_key(r, game_session["world_id"], sid, "baker_27")
    title = nearline.get_entry(r, game_session["world_id"], baker)["title"]
    turns = [
        _turn(game_session, baker, 1, "Is the rye bread fresh today?", "Baked at dawn, friend."),
        _turn(game_session, baker, 2, "The moon rose red over the chapel.", "",
              speaker="guard_3", event_id="ev-2"),
    ]
    with session_scope() as s:
        insert_turns(s, turns)
    scope = evidence_scope(sid)
    with session_scope() as s:
        first = embed_turns(s, r, embedder, [t["turn_id"] for t in turns] + ["not-archived"])
    assert first == {"items": 3, "embedded": 3, "published": 3}

    items = all_items(r, sid)
    with session_scope() as s:  # a player's line is said by the session's player
        player = s.get(GameSession, sid).player_name
    assert [(i["seq"], i["part"], i["speaker"], i["text"]) for i in items] == [
        (1, 0, player, f"{player}: Is the rye bread fresh today?"),
        (1, 1, title, f"{title}: Baked at dawn, friend."),
        (2, 0, "guard_3", "guard_3: The moon rose red over the chapel."),
    ]
    assert [(i["turn_id"], i["event_id"], i["game_minutes"], i["created_at"]) for i in items] == [
        (turns[0]["turn_id"], None, 60, 1_700_000_001.0),
        (turns[0]["turn_id"], None, 60, 1_700_000_001.0),
        (turns[1]["turn_id"], "ev-2", 120, 1_700_000_002.0)]
    assert sorted(_stream_ids(r, scope)) == [2, 3, 4]

    # redelivered: nothing embedded, written or announced twice
    with session_scope() as s:
        again = embed_turns(s, r, embedder, [t["turn_id"] for t in turns])
    assert again == {"items": 3, "embedded": 0, "published": 0}
    with session_scope() as s:
        assert s.scalar(select(func.count()).select_from(EvidenceVector).where(
            EvidenceVector.session_id == sid)) == 3
    assert sorted(_stream_ids(r, scope)) == [2, 3, 4]

    # an item lost from Redis after the commit is written and announced again, not re-embedded
    r.hdel(rkeys.evidence(sid), "4")
    with session_scope() as s:
        repaired = embed_turns(s, r, embedder, [turns[1]["turn_id"]])
    assert repaired == {"items": 1, "embedded": 0, "published": 1}
    assert get_items(r, sid, [4])[4]["speaker"] == "guard_3"

    # a dialogue server started now rebuilds the evidence from the database
    index = VectorIndex(embedder.dim, embedder.name)
    with session_scope() as s:
        load_from_db(index, s)
    assert sorted(index.ids(scope).tolist()) == [2, 3, 4]
    q = embedder.embed(["Is the bread fresh?"])[0]
    assert index.search(scope, q, 1)[0].lore_entry_id == 2
    q = embedder.embed(["a red moon over the chapel"])[0]
    assert index.search(scope, q, 1)[0].lore_entry_id == 4


def test_reindex_embeds_the_evidence_for_another_embedder(light_world, game_session):
    """Switching the embedder (``npc-memory reindex``) brings the evidence along: the
    ``mistral-embed`` wire format is served by ``tests.fakes``, reached by the real SDK."""
    from inference.embedding import MistralEmbedder
    from memory.archive import insert_turns
    from memory.reindex import reindex
    from tests.fakes import FakeServer, mistral_embeddings, text_vectors

    r, sid = nearline.get_redis(), game_session["id"]
    baker = nearline.resolve_key(r, game_session["world_id"], sid, "baker_27")
    turns = [_turn(game_session, baker, 1, "Where is the ferry?", "Down by the docks."),
             _turn(game_session, baker, 2, "Thank you.", "")]
    with session_scope() as s:
        insert_turns(s, turns)
    ids = [t["turn_id"] for t in turns]
    with FakeServer() as server:
        server.default = mistral_embeddings(text_vectors(1024))
        mistral = MistralEmbedder("mistral-embed", "mistral-test-key", server.url)
        with session_scope() as s:
            first = reindex(s, r, mistral, world_key=light_world["key"])
        with session_scope() as s:
            rows = s.execute(select(EvidenceVector.turn_id, EvidenceVector.part,
                                    EvidenceVector.dim).where(
                EvidenceVector.turn_id.in_(ids),
                EvidenceVector.embedder == "mistral-embed")).all()
        assert sorted(rows) == sorted([(ids[0], 0, 1024), (ids[0], 1, 1024), (ids[1], 0, 1024)])
        assert first.evidence >= 3 and first.worlds[light_world["key"]]["evidence"] >= 3
        calls = len(server.posts("/v1/embeddings"))
        with session_scope() as s:
            again = reindex(s, r, mistral, world_key=light_world["key"])
        assert again.evidence == 0 and len(server.posts("/v1/embeddings")) == calls
    index = VectorIndex(1024, "mistral-embed")
    with session_scope() as s:
        load_from_db(index, s)
        # the world's mistral-embed vectors go again: tests/test_reindex.py counts a first
        # reindex of this world from nothing
        for model in (StoredVector, EvidenceVector):
            s.execute(delete(model).where(model.embedder == "mistral-embed"))
        s.commit()
    assert sorted(index.ids(evidence_scope(sid)).tolist()) == [2, 3, 4]


def test_archive_batch_sends_one_evidence_task_for_its_turns(game_session):
    from types import SimpleNamespace

    from tasks.archive import evidence_task_id, send_evidence
    from contract.payloads import TurnPayload

    sent = []

    class App:  # records what the archive would send through the worker's Celery app
        def send_task(self, name, kwargs, task_id):
            sent.append((name, kwargs, task_id))
            return SimpleNamespace(id=task_id)

    r = nearline.get_redis()
    baker = nearline.resolve_key(r, game_session["world_id"], game_session["id"], "baker_27")
    payloads = [TurnPayload(**_turn(game_session, baker, n, "hi", "")) for n in (1, 2)]
    task_id = send_evidence(App(), payloads + payloads[:1])
    ids = [p.turn_id for p in payloads]
    assert sent == [("npc_memory.embed_evidence", {"turn_ids": ids}, task_id)]
    assert task_id == evidence_task_id(list(reversed(ids)))  # the same set, the same id
    assert task_id != evidence_task_id(ids[:1])


# --------------------------------------------------------------------------- end to end


def test_posted_event_becomes_searchable_evidence(worker, client, light_world, wait_for):
    from npc_memory_client.http import Memory, SearchResult
    from tests.sqlcount import sql_statements

    sid = client.post("/v1/sessions", json={"world": light_world["key"],
                                            "player_name": "Ann"}).json()["session_id"]
    r = nearline.get_redis()
    r.hset(f"session:{sid}", "game_minutes", 95)  # the in-game clock: day 1, 01:35
    other = next(c.key for c in light_world["spec"].characters() if c.key != "baker_27")
    body = {"npc_id": "baker_27", "speaker": "Tobias Crane",
            "text": "I buried the silver key under the old mill wheel.",
            "npc_text": "Then I shall never speak of the mill again.", "event_id": "ev-key",
            "witnesses": [other]}  # present: it may recall the exchange (memory.witnesses)
    posted = client.post(f"/v1/sessions/{sid}/events", json=body)
    assert posted.status_code == 201, posted.text
    turn = posted.json()
    baker = light_world["spec"].by_key("baker_27").title

    def evidence_hits():
        res = client.get(f"/v1/sessions/{sid}/search",
                         params={"q": "where is the silver key buried?", "k": 10})
        hits = [h for h in res.json()["hits"] if h["kind"] == "evidence"]
        return hits if len(hits) == 2 else None

    hits = wait_for(evidence_hits, timeout=300)  # the shared worker may be busy with models
    by_part = {h["part"]: h for h in hits}
    for part, speaker, said in ((0, "Tobias Crane", body["text"]), (1, baker, body["npc_text"])):
        h = by_part[part]
        assert (h["speaker"], h["text"]) == (speaker, f"{speaker}: {said}")
        assert (h["turn_id"], h["seq"], h["event_id"], h["game_minutes"]) == (
            turn["turn_id"], 1, "ev-key", 95)
        assert h["created_at"] == pytest.approx(turn["created_at"])

    res = client.get(f"/v1/sessions/{sid}/search",
                     params={"q": "where is the silver key buried?", "k": 10}).json()
    assert [h["rank"] for h in res["hits"]] == list(range(1, len(res["hits"]) + 1))
    scores = [h["score"] for h in res["hits"]]
    assert scores == sorted(scores, reverse=True)
    docs = [h for h in res["hits"] if h["kind"] == "document"]
    # the notes the worker may have written meanwhile fold in this turn only
    assert docs and all(h["text"].startswith("[Base Lore]\n")
                        and set(h["turn_ids"]) <= {turn["turn_id"]} for h in docs)
    assert SearchResult.model_validate(res).hits[0].rank == 1  # the client's typed models

    # a character budget: hits in rank order whose texts fit, the rest skipped
    budget = len(body["text"]) + len("Tobias Crane: ") + 5
    small = client.get(f"/v1/sessions/{sid}/search",
                       params={"q": "where is the silver key buried?", "k": 100,
                               "max_chars": budget}).json()["hits"]
    assert small and sum(len(h["text"]) for h in small) <= budget
    assert client.get(f"/v1/sessions/{sid}/search",
                      params={"q": "key", "k": 100}).status_code == 422  # no max_chars: <= 50

    memory = client.get(f"/v1/sessions/{sid}/memory").json()
    assert [(e["turn_id"], e["part"], e["speaker"]) for e in memory["evidence"]] == [
        (turn["turn_id"], 0, "Tobias Crane"), (turn["turn_id"], 1, baker)]
    keys = [d["key"] for d in memory["documents"]]
    assert "baker_27" in keys and len(keys) == len(set(keys))
    assert len(keys) >= len(light_world["spec"].entries)  # + entities the worker created
    assert all(d["rank"] == 0 and d["score"] == 0 for d in memory["documents"])
    assert Memory.model_validate(memory).evidence[1].part == 1
    assert client.get(f"/v1/sessions/{uuid.uuid4().hex}/memory").status_code == 404

    # another NPC who witnessed it gets the evidence in its prompt (speaker and in-game
    # time), still without SQL; the baker's own prompt shows the exchange as recent turns,
    # so not again as evidence
    with sql_statements() as statements:
        out = client.post(f"/v1/sessions/{sid}/turns", json={
            "npc_id": other, "player_text": "Have you heard where the silver key is?"})
        own = client.post(f"/v1/sessions/{sid}/turns", json={
            "npc_id": "baker_27", "player_text": "Where did Tobias bury the silver key?"})
    assert out.status_code == 200 and own.status_code == 200, (out.text, own.text)
    assert statements == []
    assert f"[day 1, 01:35] Tobias Crane: {body['text']}" in out.json()["evidence"]
    assert not any(body["text"] in line or body["npc_text"] in line
                   for line in own.json()["evidence"])

    def drained():  # let the session's pipeline finish before the shared worker stops
        with session_scope() as s:
            return not s.scalars(select(TaskRecord.status).where(
                TaskRecord.session_id == sid,
                TaskRecord.status.in_(("queued", "running", "retrying")))).all()

    wait_for(drained, timeout=300)


def test_evidence_of_a_session_stays_in_that_session(client, light_world):
    from workers.state import state

    sid = client.post("/v1/sessions", json={"world": light_world["key"]}).json()["session_id"]
    other = uuid.uuid4().hex
    vec = np.zeros(state.index.dim, np.float32)
    vec[0] = 1.0
    state.index.upsert(evidence_scope(other), [2], vec)  # another session's evidence
    hits = client.get(f"/v1/sessions/{sid}/search", params={"q": "anything", "k": 50}).json()
    assert hits["hits"] and all(h["kind"] == "document" for h in hits["hits"])
    assert client.get(f"/v1/sessions/{sid}/memory").json()["evidence"] == []
