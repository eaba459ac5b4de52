"""The lore-consistency guard: the rules of ``memory.canon`` on crafted cases and on the
labelled reply set, and the turn endpoint (``workers.lore_guard``) against the real llama.cpp
server behind a proxy that scripts the first reply, so the contradiction is certain and the
regeneration's prompt can be read; streamed turns against a fake vLLM that streams a
contradicting reply."""

from __future__ import annotations

import json

import pytest
from fakes import FakeServer, openai_stream, role_on

from memory.canon import check_reply, extract_facts, fact_prompt
from memory.importers.examples import load_example
from npc_memory_client import sse_events
from settings import environment
from tests.faultproxy import FaultProxy

SALTMERE = {e.key: {"key": e.key, "title": e.title, "content": e.content}
            for e in load_example()[0].entries}


def _check(npc: dict, reply: str, retrieved=(), note: str = "") -> list:
    facts = extract_facts(npc, [(d["title"], d["content"]) for d in retrieved], note)
    return check_reply(reply, facts, npc["title"])


# --------------------------------------------------------------------------- rules

TOM_NPC = {"title": "Hedda Rusk", "content": "Persona: Hedda mends nets on the quay. Her "
           "brother Old Tom drowned last spring when his boat went down off the point."}


def test_dead_character_said_alive_is_a_contradiction():
    [c] = _check(TOM_NPC, "Old Tom is well, I saw him mending his boat this morning.")
    assert c.fact.kind == "dead" and "Old Tom is dead" in c.describe()
    assert "Old Tom is dead" in fact_prompt([c])


@pytest.mark.parametrize("reply", [
    "Old Tom drowned off the point, and I miss him every day.",
    "Tom is not alive any more, stranger.",
    "My brother is gone. The sea took him last spring.",
])
def test_dead_character_consistent_paraphrases_pass(reply):
    assert _check(TOM_NPC, reply) == []


def test_living_character_said_dead_is_a_contradiction():
    [c] = _check(SALTMERE["marta_vell"], "Poor Wenna Pike drowned off the breakwater.",
                 [SALTMERE["wenna_pike"]])
    assert c.fact.kind == "alive" and c.fact.subject == "Wenna Pike"
    assert _check(SALTMERE["marta_vell"], "Wenna is upstairs with her papers again.",
                  [SALTMERE["wenna_pike"]]) == []


def test_owned_item_denied_is_a_contradiction():
    ilsa = SALTMERE["ilsa_brenn"]
    [c] = _check(ilsa, "I don't carry a spyglass, stranger. My eyes are enough.")
    assert c.fact.kind == "owns" and "spyglass" in c.fact.text
    assert _check(ilsa, "With my spyglass I see the breakwater end to end.") == []
    assert _check(ilsa, "The spyglass? Aye, it never leaves my belt.") == []
    # the session note overrides base lore: a spyglass the session took away may be denied
    assert _check(ilsa, "I have no spyglass now.", note="Ilsa lost her spyglass in the "
                  "harbour during the storm.") == []


def test_owned_item_of_a_retrieved_document_denied():
    [c] = _check(SALTMERE["dorin_haske"], "That ledger is not mine, friend.",
                 [SALTMERE["debt_ledger"]])
    assert c.fact.kind == "owns" and "ledger" in c.fact.subject


def test_wrong_place_name_is_a_contradiction():
    marta = SALTMERE["marta_vell"]
    [c] = _check(marta, "Welcome to the Salty Dog, finest inn on the coast.",
                 [SALTMERE["gull_and_lantern"]])
    assert c.fact.kind == "place"
    for ok in ("Welcome to the Gull and Lantern, love.",
               "I run the Gull and Lantern here in Saltmere.",
               "Welcome, the soup is hot and the back room is free."):
        assert _check(marta, ok, [SALTMERE["gull_and_lantern"]]) == [], ok


def test_other_name_is_a_contradiction():
    marta = SALTMERE["marta_vell"]
    [c] = _check(marta, "My name is Greta, and I pour the ale here.")
    assert c.fact.kind == "name" and "Marta" in c.fact.text
    assert _check(marta, "I'm Marta, and I remember every unpaid tab.") == []
    assert _check(marta, "I am sorry, love, the rooms are full.") == []


def test_labelled_set_precision_and_recall():
    from bench.canon import load_set, rules_guard, score, shared_dir

    if not (shared_dir() / "data" / "light" / "dragon-village.json").is_file():
        pytest.skip("LIGHT data not under the shared data folder")
    row = score(load_set(), rules_guard)
    assert row["replies"] == 40
    assert row["precision"] >= 0.9 and row["recall"] >= 0.6, row["_wrong"]


# --------------------------------------------------------------------------- turn endpoint

DENIAL = "I have no apron and I never bake bread."  # baker_27's lore: "a white apron"


@pytest.fixture()
def proxy(llm_server):
    p = FaultProxy(llm_server).start()
    try:
        yield p
    finally:
        p.stop()


def _guarded(proxy, mode: str):
    from inference.llm import chat_model

    return environment({"LLM_BASE_URL": proxy.url, "LORE_GUARD": mode}, clear=(chat_model,))


def _flags(client, action: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    req = client.build_request("GET", "/metrics")
    del req.headers["Authorization"]
    for fam in text_string_to_metric_families(client.send(req).text):
        if fam.name == "npc_canon_contradictions":
            return sum(s.value for s in fam.samples if s.name.endswith("_total")
                       and s.labels == {"by": "rules", "action": action})
    return 0.0


def _system(body: dict) -> str:
    return "\n".join(m["content"] for m in body["messages"] if m["role"] == "system")


def test_turn_regenerates_once_with_the_fact_and_records_the_flag(client, session_id, proxy):
    before = _flags(client, "regenerated")
    proxy.plan(("reply", DENIAL))  # the first reply contradicts; the second is the model's
    with _guarded(proxy, "rules"):
        res = client.post(f"/v1/sessions/{session_id}/turns",
                          json={"npc_id": "baker_27", "player_text": "Nice apron. Baking today?"})
    assert res.status_code == 200, res.text
    out = res.json()
    canon = out["canon"]
    assert canon["checked"] and canon["regenerated"] and canon["by"] == "rules"
    assert "apron" in canon["contradiction"] and DENIAL in canon["contradiction"]
    assert isinstance(canon["resolved"], bool)
    assert out["npc_text"] != DENIAL  # the answer is the second reply
    assert proxy.chat_requests == 2  # generated again once, not more
    first, second = proxy.chat_bodies
    assert "must not contradict" not in _system(first)
    assert "Baker has a white apron." in _system(second)
    assert "must not contradict" in _system(second)
    assert _flags(client, "regenerated") == before + 1


def test_consistent_turn_is_checked_and_not_regenerated(client, session_id, proxy):
    proxy.plan(("reply", "Fresh loaves this morning, and my white apron is covered in flour."))
    with _guarded(proxy, "rules"):
        res = client.post(f"/v1/sessions/{session_id}/turns",
                          json={"npc_id": "baker_27", "player_text": "Baking today?"})
    assert res.status_code == 200, res.text
    assert res.json()["canon"] == {"checked": True, "contradiction": None, "by": None,
                                   "regenerated": False, "resolved": None}
    assert proxy.chat_requests == 1


def test_guard_off_answers_the_first_reply(client, session_id, proxy):
    proxy.plan(("reply", DENIAL))
    with _guarded(proxy, "off"):
        res = client.post(f"/v1/sessions/{session_id}/turns",
                          json={"npc_id": "baker_27", "player_text": "Nice apron."})
    assert res.status_code == 200, res.text
    assert res.json()["canon"] is None and res.json()["npc_text"] == DENIAL
    assert proxy.chat_requests == 1


def test_streamed_turn_is_flagged_after_the_last_token_not_regenerated(client, session_id):
    before = _flags(client, "flagged")
    with FakeServer() as srv, role_on(f"{srv.url}/v1", "generation"), \
            environment({"LORE_GUARD": "rules"}):
        srv.script(openai_stream(["I have no", " apron", " and I never", " bake bread."]))
        res = client.post(f"/v1/sessions/{session_id}/turns",
                          json={"npc_id": "baker_27", "player_text": "Nice apron.",
                                "stream": True})
        assert res.status_code == 200, res.text
        events = [(e, json.loads(d)) for e, d in sse_events(res.text.splitlines())]
        assert len(srv.posts("/v1/chat/completions")) == 1
    event, done = events[-1]
    assert event == "done" and done["npc_text"] == DENIAL
    assert done["canon"]["contradiction"] and done["canon"]["regenerated"] is False
    assert _flags(client, "flagged") == before + 1


def test_model_pass_finds_what_the_rules_miss(client, session_id, proxy):
    verdict = json.dumps({"lore": "contradicts", "tone": "neutral",
                          "reason": "The baker works in the Town Square every day"})
    # generation (passes the rules), the analysis model's verdict, the regeneration
    proxy.plan(("reply", "I left the village years ago and never came back."),
               ("reply", verdict))
    with _guarded(proxy, "rules+model"):
        res = client.post(f"/v1/sessions/{session_id}/turns",
                          json={"npc_id": "baker_27", "player_text": "Where do you work?"})
    assert res.status_code == 200, res.text
    canon = res.json()["canon"]
    assert canon["by"] == "model" and canon["regenerated"]
    assert canon["contradiction"] == "The baker works in the Town Square every day"
    assert proxy.chat_requests == 3
    assert "The baker works in the Town Square every day" in _system(proxy.chat_bodies[2])
