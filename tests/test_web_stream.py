"""Streamed turns (``POST /v1/sessions/{id}/turns`` with ``"stream": true`` or ``Accept:
text/event-stream``): in-process against the real llama.cpp server, Redis and the database;
model failures against a fake vLLM (``tests/fakes.py``); a client hanging up mid-stream
against a real uvicorn subprocess."""

from __future__ import annotations

import json
import threading
import uuid

import httpx
import pytest
from fakes import FakeServer, openai_error, openai_stream, role_on

from memory import nearline
from npc_memory_client import sse_events
from tests.broker import queued_messages
from tests.procs import WebServer, api_headers, process_env
from tests.sqlcount import sql_statements

QUEUES_TOUCHED = ("analysis", "archive", "simulate_world")
TURN_FIELDS = {"turn_id", "seq", "npc_id", "npc_name", "npc_text", "retrieved", "model",
               "latency_ms", "adapter", "route", "evidence", "canon"}


def _events(res) -> list[tuple[str, dict]]:
    assert res.headers["content-type"].startswith("text/event-stream"), res.text
    return [(event, json.loads(data)) for event, data in sse_events(res.text.splitlines())]


def _stream_turn(client, session_id: str, text: str, npc_id: str = "baker_27", **kwargs):
    return client.post(f"/v1/sessions/{session_id}/turns",
                       json={"npc_id": npc_id, "player_text": text, "stream": True}, **kwargs)


def _analyses_sent(turn_id: str) -> int:
    """``analyze_turn`` tasks sent for the turn: waiting in the queue, or in the task ledger
    when a Celery worker of another test module took them."""
    from sqlalchemy import select

    from memory.db import session_scope
    from models import TaskRecord

    queued = {m["id"] for m in queued_messages(nearline.get_redis(), "analysis")
              if m["kwargs"].get("turn_id") == turn_id}
    with session_scope() as s:
        rows = s.scalars(select(TaskRecord).where(
            TaskRecord.task_name == "npc_memory.analyze_turn")).all()
        ran = {r.task_id for r in rows if (r.payload or {}).get("turn_id") == turn_id}
    return len(queued | ran)  # a task taken by a worker is both reserved and in the ledger


def test_stream_sends_tokens_then_the_recorded_turn(client, session_id, light_world):
    res = _stream_turn(client, session_id, "Good morning! Is the bread fresh?")
    assert res.status_code == 200
    events = _events(res)
    names = [e for e, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"token"}
    tokens = [d["text"] for e, d in events if e == "token"]
    assert len(tokens) >= 2  # the reply came in pieces
    done = events[-1][1]
    assert set(done) == TURN_FIELDS | {"ttft_ms"}
    assert "".join(tokens) == done["npc_text"] and done["npc_text"].strip()
    assert done["seq"] == 1 and done["npc_id"] == "baker_27"
    assert done["npc_name"] == light_world["spec"].by_key("baker_27").title
    assert done["route"] == "llamacpp: no adapters" and done["adapter"] is None
    assert 0 < done["ttft_ms"] <= done["latency_ms"]
    timing = res.headers["server-timing"]
    assert [p.split(";")[0] for p in timing.split(", ")] == [
        "context", "embed", "retrieve", "route", "ttft"]

    turns = nearline.recent_turns(nearline.get_redis(), session_id, 10)
    assert [t["turn_id"] for t in turns] == [done["turn_id"]]  # recorded once
    assert turns[0]["npc_text"] == done["npc_text"]
    assert turns[0]["player_text"] == "Good morning! Is the bread fresh?"
    assert _analyses_sent(done["turn_id"]) == 1

    # the next turn, streamed or not, follows it
    res2 = client.post(f"/v1/sessions/{session_id}/turns",
                       json={"npc_id": "baker_27", "player_text": "Two loaves, please."})
    assert res2.status_code == 200 and res2.json()["seq"] == 2
    assert "ttft_ms" not in res2.json()


def test_accept_header_asks_for_a_stream(client, session_id):
    res = client.post(f"/v1/sessions/{session_id}/turns",
                      json={"npc_id": "baker_27", "player_text": "Hello there."},
                      headers={"Accept": "application/json;q=0.5, text/event-stream"})
    assert res.status_code == 200
    events = _events(res)
    assert events[-1][0] == "done" and events[0][0] == "token"


def test_streamed_turn_makes_no_database_query(client, session_id):
    with sql_statements() as statements:
        res = _stream_turn(client, session_id, "Any news from the crypt?")
    assert res.status_code == 200
    assert _events(res)[-1][0] == "done"
    assert statements == []


@pytest.mark.parametrize("target, body, status", [
    ("unknown-session", {"npc_id": "baker_27", "player_text": "Hi"}, 404),
    ("session", {"npc_id": "nobody_999", "player_text": "Hi"}, 404),
    ("session", {"npc_id": "baker_27", "player_text": ""}, 422),
    ("session", {"npc_id": "baker_27", "player_text": "Hi", "stream": "sometimes"}, 422),
], ids=["unknown-session", "unknown-npc", "empty-text", "bad-flag"])
def test_errors_before_generation_stay_json(client, session_id, target, body, status):
    sid = uuid.uuid4().hex if target == "unknown-session" else session_id
    res = client.post(f"/v1/sessions/{sid}/turns", json={"stream": True, **body},
                      headers={"Accept": "text/event-stream"})
    assert res.status_code == status
    assert res.headers["content-type"].startswith("application/json")
    assert res.json()["detail"]


def test_turn_to_an_item_is_422_json(client, session_id, light_world):
    item = light_world["spec"].items()[0]
    res = _stream_turn(client, session_id, "Hello", npc_id=item.key)
    assert res.status_code == 422 and "item" in res.json()["detail"]


@pytest.fixture()
def fake_model():
    """A fake vLLM server answering the generation role (the base model: no archetype)."""
    with FakeServer() as srv, role_on(f"{srv.url}/v1", "generation"):
        yield srv


def test_model_failing_before_the_first_token_is_a_503_json(client, session_id, fake_model):
    fake_model.script(openai_error(400, "prompt too long"))
    res = _stream_turn(client, session_id, "Hello")
    assert res.status_code == 503
    assert res.headers["content-type"].startswith("application/json")
    assert "prompt too long" in res.json()["detail"]
    assert nearline.recent_turns(nearline.get_redis(), session_id, 10) == []


def test_model_failing_mid_stream_ends_with_an_error_event(client, session_id, fake_model):
    fake_model.script(openai_stream(["Fresh", " bread", " and", " more"], drop_after=3))
    res = _stream_turn(client, session_id, "Hello")
    assert res.status_code == 200
    events = _events(res)
    assert events[:2] == [("token", {"text": "Fresh"}), ("token", {"text": " bread"})]
    assert events[-1][0] == "error"
    assert events[-1][1]["status"] == 503 and "model" in events[-1][1]["detail"]
    assert "done" not in [e for e, _ in events]
    assert nearline.recent_turns(nearline.get_redis(), session_id, 10) == []  # not recorded
    assert len(fake_model.posts("/v1/chat/completions")) == 1  # not retried mid-way


def test_vllm_stream_through_the_server(client, session_id, fake_model):
    fake_model.script(openai_stream(["Baker", " Rolf:", " Fresh", " bread", "."],
                                    prompt_tokens=40))
    res = _stream_turn(client, session_id, "Hello")
    events = _events(res)
    tokens = [d["text"] for e, d in events if e == "token"]
    done = events[-1][1]
    assert events[-1][0] == "done" and "".join(tokens) == done["npc_text"]
    [req] = fake_model.posts("/v1/chat/completions")
    assert req.body["stream"] is True and req.body["stream_options"] == {"include_usage": True}
    assert nearline.recent_turns(nearline.get_redis(), session_id, 10)[0]["npc_text"] == \
        done["npc_text"]


def _scrape(client) -> str:
    req = client.build_request("GET", "/metrics")
    del req.headers["Authorization"]
    return client.send(req).text


def _ttft_count(text: str, mode: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "npc_dialogue_ttft_seconds_count" and \
                    sample.labels.get("mode") == mode:
                return sample.value
    return 0.0


def test_ttft_histogram_counts_both_paths(client, session_id):
    before = _scrape(client)
    assert _stream_turn(client, session_id, "How much is a loaf?").status_code == 200
    assert client.post(f"/v1/sessions/{session_id}/turns",
                       json={"npc_id": "baker_27", "player_text": "Thanks."}).status_code == 200
    after = _scrape(client)
    assert _ttft_count(after, "stream") == _ttft_count(before, "stream") + 1
    assert _ttft_count(after, "reply") == _ttft_count(before, "reply") + 1


# --------------------------------------------------------------------------- hanging up


def test_client_hanging_up_records_what_was_generated(light_world, wait_for):
    """The client closes the connection after the first token event: the server stops the
    model's stream when its next token comes and records the turn once with the text so far,
    logged as disconnected."""
    gate = threading.Event()
    with FakeServer() as fake:
        fake.script(openai_stream(["Fresh", " bread", " for", " you", "."],
                                  gate=gate, gate_after=2))  # waits after role + "Fresh"
        web = WebServer(process_env(GENERATION_BACKEND="vllm",
                                    GENERATION_BASE_URL=f"{fake.url}/v1", LOG_LEVEL="INFO"),
                        f"stream-hangup-{uuid.uuid4().hex[:6]}.log")
        web.start()
        try:
            with httpx.Client(base_url=web.url, headers=api_headers(), timeout=60) as http:
                sid = http.post("/v1/sessions", json={"world": light_world["key"]}).json()[
                    "session_id"]
                with http.stream("POST", f"/v1/sessions/{sid}/turns",
                                 json={"npc_id": "baker_27", "player_text": "Bread?",
                                       "stream": True}) as res:
                    assert res.status_code == 200
                    first = next(sse_events(res.iter_lines()))
                    assert first == ("token", json.dumps({"text": "Fresh"}))
                # the connection is closed here, mid-stream
            wait_for(lambda: "stream client disconnected" in web.log_path.read_text(),
                     timeout=60)
            gate.set()  # the model's next token arrives
            r = nearline.get_redis()
            turns = wait_for(lambda: nearline.recent_turns(r, sid, 10), timeout=60)
            assert len(turns) == 1
            assert turns[0]["npc_text"] == "Fresh bread"  # what came before the server noticed
            served = wait_for(lambda: [json.loads(line) for line in
                                       web.log_path.read_text().splitlines()
                                       if '"turn served"' in line], timeout=60)
            assert served[0]["disconnected"] is True and served[0]["stream"] is True
            assert served[0]["turn_id"] == turns[0]["turn_id"]
            assert len(fake.posts("/v1/chat/completions")) == 1
            assert len(nearline.recent_turns(r, sid, 10)) == 1
        finally:
            gate.set()
            web.stop()
            nearline.get_redis().delete(*QUEUES_TOUCHED)
