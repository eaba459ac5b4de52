"""Who knows what: every turn records who witnessed it, events need not be addressed to an
NPC, and an NPC's retrieval holds only what it witnessed, was told, or is public canon.

The selection pieces alone (``memory.witnesses``, the vector index's id selector, the
summary's audience); migration 0010 up and down on SQLite and PostgreSQL; and, with the real
Celery worker, model server and dialogue server (its model calls through a recording proxy,
so the test reads the prompts the model got): a secret told to one NPC stays out of another's
search view and prompt until someone tells it, and a game master's narration creates no
entity named after the narrator.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from sqlalchemy import create_engine, inspect, select, text
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from memory import evidence, nearline, witnesses
from memory import keys as rkeys
from alembic import command
from memory.db import alembic_config, migrate, normalise_url, session_scope
from memory.vector_index import VectorIndex
from models import LoreEntry, TaskRecord, Turn

SECRET = "the smuggler's gold lies under the chapel altar"
MARK = "chapel altar"

# --------------------------------------------------------------------------- pieces


def test_turn_witnesses_and_evidence_items_carry_who_was_there():
    from memory.evidence import turn_items

    assert witnesses.turn_witnesses({"npc_entry_id": 5, "witnesses": [9, 5, 7]}) == [5, 7, 9]
    assert witnesses.turn_witnesses({"npc_entry_id": 5}) == [5]  # before witnesses were kept
    assert witnesses.turn_witnesses({"npc_entry_id": None, "witnesses": [3]}) == [3]
    narration = {"turn_id": "t", "seq": 2, "player_text": "Fog rolls in.", "npc_text": "",
                 "created_at": 1.0, "kind": "narration", "npc_entry_id": None,
                 "witnesses": [4, 3]}
    (it,) = turn_items(narration, "Ann", None)
    assert (it["speaker"], it["text"], it["turn_kind"], it["witnesses"]) == (
        "Narrator", "Narrator: Fog rolls in.", "narration", [3, 4])
    assert witnesses.sees_item(it, 3) and not witnesses.sees_item(it, 5)
    assert witnesses.sees_item({"text": "stored before witnesses"}, 5)
    game = turn_items({**narration, "kind": "game", "speaker": "GM"}, "Ann", None)[0]
    assert game["speaker"] == "GM"  # a given speaker is kept as the evidence's label


def test_a_narrators_name_is_not_in_the_text_creations_are_grounded_on():
    from tasks.analysis import turn_text
    from contract.payloads import TurnPayload

    base = {"turn_id": "t", "session_id": "s", "world_id": 1, "seq": 1,
            "player_text": "The bridge collapses.", "npc_text": "", "created_at": 1.0}
    narration = TurnPayload(**base, kind="narration", speaker="Game Master")
    assert turn_text(narration) == "The bridge collapses."
    said = TurnPayload(**base, npc_entry_id=2, kind="npc_exchange", speaker="Marta")
    assert turn_text(said) == "Marta: The bridge collapses."


def test_index_include_selects_exactly_the_allowed_ids():
    index = VectorIndex(4)
    vecs = np.eye(4, dtype=np.float32)
    index.upsert("evidence:s", [10, 11, 12, 13], vecs)
    query = np.array([1, 0.9, 0.8, 0.7], np.float32)
    assert [h.lore_entry_id for h in index.search("evidence:s", query, 4)] == [10, 11, 12, 13]
    got = index.search("evidence:s", query, 2, include=np.array([12, 13]))
    assert [h.lore_entry_id for h in got] == [12, 13]  # the best allowed, not the best overall
    got = index.search("evidence:s", query, 4, include=np.array([11, 12, 13]),
                       exclude=np.array([12]))
    assert [h.lore_entry_id for h in got] == [11, 13]
    assert index.search("evidence:s", query, 4, include=np.array([], np.int64)) == []


def test_notes_summaries_and_creations_follow_their_turns_witnesses(game_session):
    from memory import summaries

    r = nearline.get_redis()
    sid = game_session["id"]
    pipe = r.pipeline()
    witnesses.queue_record(pipe, sid, {"turn_id": "ta", "seq": 1, "npc_entry_id": 1,
                                       "witnesses": [1]}, 60)
    witnesses.queue_record(pipe, sid, {"turn_id": "tb", "seq": 2, "npc_entry_id": 2,
                                       "witnesses": [1, 2]}, 60)
    pipe.execute()
    assert sorted(witnesses.witnessed_item_ids(r, sid, 1).tolist()) == [2, 3, 4, 5]
    assert sorted(witnesses.witnessed_item_ids(r, sid, 2).tolist()) == [4, 5]
    assert witnesses.unwitnessed(r, sid, 2, ["ta", "tb", "unknown"]) == {"ta"}
    docs = [{"id": 7, "note": "from ta"}, {"id": 8, "note": "from tb"},
            {"id": 9, "note": "", "created_by_turn_id": "ta"}, {"id": 10, "note": "n/a"}]
    turns_of = {7: ["tb", "ta"], 8: ["tb"], 10: ["unknown"]}
    seen = witnesses.scope_documents(r, sid, 2, docs, turns_of)
    assert [(d["id"], d["note"]) for d in seen] == [(7, ""), (8, "from tb"), (10, "n/a")]
    assert len(witnesses.scope_documents(r, sid, 1, docs, turns_of)) == 4

    assert witnesses.summary_audience([{"npc_entry_id": 1, "witnesses": [1, 2]},
                                       {"npc_entry_id": 2, "witnesses": [2, 3]}]) == [2]
    assert summaries.save_summary(r, sid, "Marta heard a secret.", 2, audience=[1])
    raw = r.get(rkeys.summary(sid))
    assert summaries.summary_for(raw, 1) == "Marta heard a secret."
    assert summaries.summary_for(raw, 2) == ""
    assert summaries.summary_for(json.dumps({"summary": "old", "upto_seq": 1}), 2) == "old"


# --------------------------------------------------------------------------- migration


def test_migration_0011_adds_witnesses_and_turns_without_an_npc(blank_database):
    from models import GameSession, Turn, World

    migrate(blank_database, "0011_witnesses")
    engine = create_engine(normalise_url(blank_database), poolclass=NullPool)
    try:
        with Session(engine) as s, s.begin():
            world = World(key="w10", title="W")
            s.add(world)
            s.flush()
            s.add(GameSession(id="s10", world_id=world.id))
            s.flush()
            s.add(Turn(id="t10", session_id="s10", seq=1, npc_entry_id=None,
                       player_text="The bridge falls.", npc_text="", kind="game",
                       witnesses=[3, 4], source="tick:t1"))
        with Session(engine) as s:
            got = s.get(Turn, "t10")
            assert (got.npc_entry_id, got.kind, got.witnesses, got.source) == (
                None, "game", [3, 4], "tick:t1")
        command.downgrade(alembic_config(blank_database), "0009_evidence")
        with Session(engine) as s:
            assert s.execute(text("SELECT count(*) FROM turns")).scalar() == 0  # no NPC: gone
        cols = {c["name"] for c in inspect(engine).get_columns("turns")}
        assert not cols & {"kind", "witnesses", "source"}
        assert not next(c for c in inspect(engine).get_columns("turns")
                        if c["name"] == "npc_entry_id")["nullable"]
        migrate(blank_database, "head")
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def proxy(llm_server):
    from tests.faultproxy import FaultProxy

    p = FaultProxy(llm_server).start()
    yield p
    p.stop()


@pytest.fixture(scope="module")
def client(llm_server, light_world, proxy):
    """The dialogue server in-process, its dialogue model calls through ``proxy``."""
    from fastapi.testclient import TestClient

    from inference.llm import chat_model
    from settings import environment
    from tests.procs import api_headers
    from workers.web import app

    with environment({"GENERATION_BASE_URL": proxy.url}, clear=(chat_model,)):
        with TestClient(app, headers=api_headers()) as c:
            yield c
    nearline.get_redis().delete("analysis", "archive", "simulate_world")


def _two_characters(light_world) -> tuple[str, str]:
    a, b = [c.key for c in light_world["spec"].characters()[:2]]
    return a, b


def _drained(sid: str) -> bool:
    with session_scope() as s:
        return not s.scalars(select(TaskRecord.status).where(
            TaskRecord.session_id == sid,
            TaskRecord.status.in_(("queued", "running", "retrying")))).all()


def _search(client, sid: str, q: str, npc_id: str | None = None) -> list[dict]:
    params = {"q": q, "k": 20} | ({"npc_id": npc_id} if npc_id else {})
    res = client.get(f"/v1/sessions/{sid}/search", params=params)
    assert res.status_code == 200, res.text
    return res.json()["hits"]


def _last_dialogue_prompt(proxy, npc_title: str) -> str:
    """The newest prompt the dialogue model got for ``npc_title`` (system and user text)."""
    for body in reversed(proxy.chat_bodies):
        msgs = body.get("messages") or []
        joined = "\n".join(m.get("content") or "" for m in msgs)
        if "response_format" not in body and npc_title in joined:
            return joined
    pytest.fail(f"no dialogue prompt for {npc_title!r} reached the model")


def test_a_secret_told_to_one_npc_stays_out_of_anothers_view_until_told(
        worker, client, proxy, light_world, wait_for):
    marta, wenna = _two_characters(light_world)
    titles = {c.key: c.title for c in light_world["spec"].characters()}
    sid = client.post("/v1/sessions", json={"world": light_world["key"],
                                            "player_name": "Ann"}).json()["session_id"]
    told = client.post(f"/v1/sessions/{sid}/events", json={
        "npc_id": marta, "text": f"Keep it to yourself: {SECRET}.", "event_id": "secret"})
    assert told.status_code == 201, told.text
    marta_id = nearline.resolve_key(nearline.get_redis(), light_world["id"], sid, marta)
    assert told.json()["witnesses"] == [marta_id] and told.json()["kind"] == "speech"

    def secret_in(hits):
        return [h for h in hits if MARK in h["text"]]

    wait_for(lambda: secret_in(_search(client, sid, "where is the smuggler's gold?")),
             timeout=300)  # session-wide (operators): there once embedded
    assert secret_in(_search(client, sid, "where is the smuggler's gold?", npc_id=marta))
    assert not secret_in(_search(client, sid, "where is the smuggler's gold?", npc_id=wenna))
    assert client.get(f"/v1/sessions/{sid}/search",
                      params={"q": "gold", "npc_id": "nobody_here"}).status_code == 404

    asked = client.post(f"/v1/sessions/{sid}/turns", json={
        "npc_id": wenna, "player_text": "Where is the smuggler's gold hidden?"})
    assert asked.status_code == 200, asked.text
    assert not any(MARK in line for line in asked.json()["evidence"])
    assert MARK not in _last_dialogue_prompt(proxy, titles[wenna]).split(
        "Where is the smuggler's gold hidden?")[0]  # the question itself says no more

    # Marta tells Wenna: from now on Wenna knows (the telling turn is hers)
    telling = client.post(f"/v1/sessions/{sid}/events", json={
        "kind": "npc_exchange", "speaker": marta, "npc_id": wenna,
        "text": f"Between us, {SECRET}.", "event_id": "telling"})
    assert telling.status_code == 201, telling.text
    wenna_id = nearline.resolve_key(nearline.get_redis(), light_world["id"], sid, wenna)
    assert telling.json()["witnesses"] == sorted([marta_id, wenna_id])
    wait_for(lambda: secret_in(_search(client, sid, "where is the smuggler's gold?",
                                       npc_id=wenna)), timeout=300)
    again = client.post(f"/v1/sessions/{sid}/turns", json={
        "npc_id": wenna, "player_text": "Tell me about the gold."})
    assert again.status_code == 200, again.text
    assert MARK in _last_dialogue_prompt(proxy, titles[wenna])
    # the first secret turn itself is still Marta's alone
    hits = secret_in(_search(client, sid, "where is the smuggler's gold?", npc_id=wenna))
    assert {h["event_id"] for h in hits if h["kind"] == "evidence"} == {"telling"}
    wait_for(lambda: _drained(sid), timeout=300)


def test_narration_and_game_events_need_no_npc_and_never_make_the_narrator_an_entity(
        worker, client, light_world, wait_for):
    marta, wenna = _two_characters(light_world)
    sid = client.post("/v1/sessions", json={"world": light_world["key"]}).json()["session_id"]
    url = f"/v1/sessions/{sid}/events"
    res = client.post(url, json={"kind": "narration", "speaker": "Game Master",
                                 "witnesses": [marta],
                                 "text": "The old bridge collapses into the river."})
    assert res.status_code == 201, res.text
    out = res.json()
    assert (out["npc_id"], out["npc_name"], out["kind"], out["speaker"]) == (
        None, None, "narration", "Game Master")
    r = nearline.get_redis()
    marta_id = nearline.resolve_key(r, light_world["id"], sid, marta)
    assert out["witnesses"] == [marta_id]
    game = client.post(url, json={"kind": "game", "text": "The mill bell rings twelve times."})
    assert game.status_code == 201 and game.json()["speaker"] == "Game"
    assert game.json()["witnesses"] == []  # nobody named present

    # bodies that do not fit their kind, and unknown witnesses
    assert client.post(url, json={"text": "Hello?"}).status_code == 422  # speech needs npc_id
    assert client.post(url, json={"kind": "npc_exchange", "npc_id": wenna,
                                  "text": "Psst."}).status_code == 422  # needs speaker
    assert client.post(url, json={"kind": "npc_exchange", "npc_id": wenna, "speaker": "Bob",
                                  "text": "Psst."}).status_code == 422  # not an NPC key
    assert client.post(url, json={"kind": "game", "text": "x", "npc_text": "y"}
                       ).status_code == 422
    assert client.post(url, json={"kind": "game", "text": "Thunder.",
                                  "witnesses": ["nobody_here"]}).status_code == 404

    def analysed():  # both went through the pipeline's analysis, and it succeeded
        with session_scope() as s:
            done = s.scalars(select(TaskRecord.status).where(
                TaskRecord.session_id == sid,
                TaskRecord.task_name == "npc_memory.analyze_turn")).all()
        return done if len(done) == 2 and set(done) <= {"succeeded", "dead"} else None

    assert wait_for(analysed, timeout=300) == ["succeeded", "succeeded"]
    wait_for(lambda: _drained(sid), timeout=300)
    with session_scope() as s:
        made = s.scalars(select(LoreEntry.title).where(
            LoreEntry.created_in_session_id == sid)).all()
    assert not [t for t in made if "master" in t.lower() or "narrator" in t.lower()]
    def both_items():
        items = evidence.all_items(r, sid)
        return items if len(items) >= 2 else None

    ev = wait_for(both_items, timeout=300)
    assert [(e["speaker"], e["turn_kind"], e["witnesses"]) for e in ev] == [
        ("Game Master", "narration", [marta_id]), ("Game", "game", [])], ev


def test_location_occupants_come_from_either_side_of_the_worlds_relations():
    from types import SimpleNamespace as E

    entries = [E(id=1, key="inn", entity_type="location", relations={"contains": ["bo", "mug"]}),
               E(id=2, key="al", entity_type="character", relations={"located_in": ["inn"]}),
               E(id=3, key="bo", entity_type="character", relations={}),
               E(id=4, key="mug", entity_type="item", relations={"located_in": ["inn"]}),
               E(id=5, key="cy", entity_type="character", relations={"located_in": ["al"]}),
               E(id=6, key="di", entity_type="character", relations={"located_in": ["mill"]})]
    # a character named by a location's contains, one located_in it; not the item, not a
    # character "located" in another character, not a location outside the world
    assert nearline.location_occupants(entries) == {1: {2, 3}}


def test_an_event_at_a_location_is_witnessed_by_the_characters_the_world_places_there(
        client, light_world):
    spec = light_world["spec"]
    yard = "stableyard_26"
    there = sorted(c.key for c in spec.characters()
                   if c.relations.get("located_in") == (yard,))
    assert len(there) >= 2  # the LIGHT world puts several characters in the stable yard
    sid = client.post("/v1/sessions", json={"world": light_world["key"]}).json()["session_id"]
    r = nearline.get_redis()
    ids = sorted(nearline.resolve_key(r, light_world["id"], sid, k) for k in there)
    url = f"/v1/sessions/{sid}/events"
    res = client.post(url, json={"kind": "game", "location": yard,
                                 "text": "A horse bolts through the yard."})
    assert res.status_code == 201, res.text
    assert res.json()["witnesses"] == ids
    baker = nearline.resolve_key(r, light_world["id"], sid, "baker_27")  # in the town square
    spoken = client.post(url, json={"npc_id": "baker_27", "location": yard,
                                    "text": "Did you see that horse?"})
    assert spoken.json()["witnesses"] == sorted([*ids, baker])  # the addressed NPC too
    assert client.post(url, json={"kind": "game", "location": "nowhere_0",
                                  "text": "x"}).status_code == 404
    bad = client.post(url, json={"kind": "game", "location": "baker_27", "text": "x"})
    assert bad.status_code == 422 and "not a location" in bad.text


def test_gossip_pairs_pass_on_the_newest_turn_one_witnessed_and_the_other_did_not():
    from types import SimpleNamespace as Entry

    from memory import gossip

    def npc(i, place):
        return Entry(id=i, key=f"k{i}", title=f"N{i}", relations={"located_in": [place]})

    a, b, c, far = npc(1, "mill"), npc(2, "mill"), npc(3, "mill"), npc(4, "tower")
    pairs = gossip.meetings([a], [a, b, c, far])
    assert [(x.id, y.id) for x, y in pairs] == [(1, 2), (2, 1), (1, 3), (3, 1)]
    recent = [{"turn_id": "old", "npc_entry_id": 2, "witnesses": [2], "player_text": "x"},
              {"turn_id": "new", "npc_entry_id": 2, "witnesses": [2, 3], "player_text": "y",
               "npc_text": "z", "speaker": "Ann"}]
    told = gossip.pick(pairs, recent, limit=5)
    # 2 tells 1 the newest turn 1 missed; 3 witnessed only "new", already told this tick
    assert [(t.teller.id, t.listener.id, t.turn["turn_id"]) for t in told] == [(2, 1, "new")]
    assert told[0].text({2: "N2"}, "Ann") == 'Ann said: "y" N2 answered: "z"'
    assert told[0].source("t1") == "tick t1; turn new"
    assert gossip.pick(pairs, recent, limit=0) == []


def test_a_tick_where_two_npcs_meet_carries_what_one_knows(worker, client, light_world,
                                                              wait_for):
    teller, listener = "prisoner_39", "sir edward_37"
    spec = light_world["spec"]
    assert spec.by_key(teller).relations["located_in"] == spec.by_key(
        listener).relations["located_in"]  # both in the dungeons
    sid = client.post("/v1/sessions", json={"world": light_world["key"]}).json()["session_id"]
    said = client.post(f"/v1/sessions/{sid}/events", json={
        "npc_id": teller, "event_id": "secret",
        "text": f"Sir Edward must never learn this: {SECRET}."})  # names him: he is simulated
    assert said.status_code == 201, said.text
    q = "where is the smuggler's gold?"
    wait_for(lambda: [h for h in _search(client, sid, q) if MARK in h["text"]], timeout=300)
    assert not [h for h in _search(client, sid, q, npc_id=listener) if MARK in h["text"]]

    tick = client.post(f"/v1/sessions/{sid}/tick")
    assert tick.status_code == 202, tick.text

    def ticked():
        with session_scope() as s:
            rec = s.scalar(select(TaskRecord).where(
                TaskRecord.task_id == tick.json()["task_id"]))
            return rec if rec is not None and rec.status in ("succeeded", "dead") else None

    rec = wait_for(ticked, timeout=300)
    told = (rec.result or {}).get("told")
    assert told and told[0]["teller"] == teller and told[0]["listener"] == listener, rec.result
    assert told[0]["turn_id"] == said.json()["turn_id"]

    def heard():
        return [h for h in _search(client, sid, q, npc_id=listener)
                if h["kind"] == "evidence" and MARK in h["text"]]

    (hit,) = wait_for(heard, timeout=300)
    assert (hit["turn_id"], hit["turn_kind"], hit["speaker"]) == (
        told[0]["told_turn_id"], "told", spec.by_key(teller).title)
    def archived():
        with session_scope() as s:
            row = s.get(Turn, told[0]["told_turn_id"])
            return (row.kind, row.source, row.witnesses) if row is not None else None

    assert wait_for(archived, timeout=300) == (
        "told", f"tick {tick.json()['tick_id']}; turn {said.json()['turn_id']}",
        sorted(nearline.resolve_key(nearline.get_redis(), light_world["id"], sid, k)
               for k in (teller, listener)))
    wait_for(lambda: _drained(sid), timeout=300)
