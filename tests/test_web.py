"""The dialogue server in-process (FastAPI TestClient, lifespan included) against the real
model server, Redis broker and database. No Celery worker is started here: the enqueued
messages are looked up in the broker's queues and the queues are cleaned up afterwards."""

from __future__ import annotations

import os
import uuid

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from memory import nearline
from memory.db import session_scope
from models import TaskRecord
from tests.broker import queued_messages
from tests.sqlcount import sql_statements
from workers.embedded import free_port



def _messages(queue: str) -> list[dict]:
    return queued_messages(nearline.get_redis(), queue)


def _enqueued(queue: str, task: str, match) -> bool:
    """``task`` was sent to ``queue`` with kwargs satisfying ``match``: the message waits in the
    queue, or (if a Celery worker of another test module is consuming in this process) the
    task ledger has it."""
    if any(m["task"] == task and match(m["kwargs"]) for m in _messages(queue)):
        return True
    with session_scope() as s:
        rows = s.scalars(select(TaskRecord).where(TaskRecord.task_name == task)).all()
        return any(r.queue == queue and match(r.payload or {}) for r in rows)


# --------------------------------------------------------------------------- sessions


def test_open_session(client, light_world):
    res = client.post("/v1/sessions", json={"world": light_world["key"], "player_name": "Ann"})
    assert res.status_code == 201, res.text
    body = res.json()
    assert body["session_id"] and body["world"] == light_world["key"]
    assert body["world_id"] == light_world["id"]
    spec_chars = {e.key: e.title for e in light_world["spec"].characters()}
    got = {c["npc_id"]: c["name"] for c in body["characters"]}
    assert got == spec_chars
    assert "baker_27" in got
    sess = nearline.get_session(nearline.get_redis(), body["session_id"])
    assert sess == {"world_id": light_world["id"], "player_name": "Ann", "game_minutes": 0,
                    "every_turns": 0, "tick_minutes": 120}  # SIMULATE_EVERY_TURNS=0 in tests


def test_open_session_unknown_world_is_404(client):
    res = client.post("/v1/sessions", json={"world": "no-such-world"})
    assert res.status_code == 404
    assert "no-such-world" in res.json()["detail"]


@pytest.mark.parametrize("body", [
    {},
    {"player_name": "Ann"},
    {"world": ""},
    {"world": "possibly-vampires", "extra": 1},
])
def test_open_session_invalid_body_is_422(client, body):
    res = client.post("/v1/sessions", json=body)
    assert res.status_code == 422
    assert res.json()["detail"]


# --------------------------------------------------------------------------- turns


def test_turn_answers_records_and_enqueues(client, session_id, light_world, wait_for):
    r = nearline.get_redis()
    res = client.post(f"/v1/sessions/{session_id}/turns",
                      json={"npc_id": "baker_27", "player_text": "Good morning! Is the bread fresh?"})
    assert res.status_code == 200, res.text
    out = res.json()
    assert out["npc_text"].strip()
    assert out["turn_id"] and out["seq"] == 1
    assert out["npc_id"] == "baker_27"
    assert out["npc_name"] == light_world["spec"].by_key("baker_27").title
    assert len(out["retrieved"]) <= 3

    turns = nearline.recent_turns(r, session_id, 10)
    assert len(turns) == 1
    turn = turns[0]
    assert turn["turn_id"] == out["turn_id"]
    assert turn["player_text"] == "Good morning! Is the bread fresh?"
    assert turn["npc_text"] == out["npc_text"]
    assert turn["session_id"] == session_id and turn["world_id"] == light_world["id"]

    def same_turn(kwargs):
        return kwargs.get("turn_id") == out["turn_id"] and kwargs.get("session_id") == session_id

    wait_for(lambda: _enqueued("analysis", "npc_memory.analyze_turn", same_turn), timeout=60)
    wait_for(lambda: _enqueued("archive", "npc_memory.archive_turn", same_turn), timeout=60)

    # a second turn gets the next sequence number
    res2 = client.post(f"/v1/sessions/{session_id}/turns",
                       json={"npc_id": "baker_27", "player_text": "I'll take two loaves."})
    assert res2.status_code == 200, res2.text
    assert res2.json()["seq"] == 2 and res2.json()["turn_id"] != out["turn_id"]
    assert [t["turn_id"] for t in nearline.recent_turns(r, session_id, 10)] == [
        out["turn_id"], res2.json()["turn_id"]]


@pytest.mark.parametrize("path, body", [
    ("turns", {"npc_id": "baker_27", "player_text": "Any news from the crypt?"}),
    ("events", {"npc_id": "baker_27", "text": "Any news from the crypt?",
                "npc_text": "Only bats.", "speaker": "the smith", "event_id": "e-1"}),
    ("events", {"npc_id": "baker_27", "text": "Good night."}),
], ids=["turn", "event", "event-minimal"])
def test_turn_makes_no_database_query(client, session_id, path, body):
    """Neither a played turn nor a posted event queries the database."""
    with sql_statements() as statements:
        res = client.post(f"/v1/sessions/{session_id}/{path}", json=body)
    assert res.status_code in (200, 201), res.text
    assert res.json()["turn_id"]
    assert statements == []


def test_turn_listener_sees_session_opening_queries(client, light_world):
    """The counting method works: opening a session does query the database."""
    with sql_statements() as statements:
        res = client.post("/v1/sessions", json={"world": light_world["key"]})
    assert res.status_code == 201
    assert statements


def test_turn_unknown_session_is_404(client):
    res = client.post(f"/v1/sessions/{uuid.uuid4().hex}/turns",
                      json={"npc_id": "baker_27", "player_text": "Hello"})
    assert res.status_code == 404
    assert "session" in res.json()["detail"]


def test_turn_unknown_npc_is_404(client, session_id):
    res = client.post(f"/v1/sessions/{session_id}/turns",
                      json={"npc_id": "nobody_999", "player_text": "Hello"})
    assert res.status_code == 404
    assert "nobody_999" in res.json()["detail"]


def test_turn_to_an_item_is_422(client, session_id, light_world):
    item = light_world["spec"].items()[0]
    res = client.post(f"/v1/sessions/{session_id}/turns",
                      json={"npc_id": item.key, "player_text": "Hello"})
    assert res.status_code == 422
    assert "item" in res.json()["detail"]
    assert nearline.recent_turns(nearline.get_redis(), session_id, 10) == []


@pytest.mark.parametrize("body", [
    {"npc_id": "baker_27", "player_text": ""},
    {"npc_id": "baker_27"},
    {"player_text": "Hello"},
    {"npc_id": "baker_27", "player_text": "Hello", "mood": "angry"},
])
def test_turn_invalid_body_is_422(client, session_id, body):
    res = client.post(f"/v1/sessions/{session_id}/turns", json=body)
    assert res.status_code == 422
    assert nearline.recent_turns(nearline.get_redis(), session_id, 10) == []


# --------------------------------------------------------------------------- search


def test_search_returns_titled_hits_best_first(client, session_id, light_world):
    res = client.get(f"/v1/sessions/{session_id}/search", params={"q": "baker", "k": 5})
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["query"] == "baker"
    hits = body["hits"]
    assert 1 <= len(hits) <= 5
    assert all(h["title"] and h["key"] for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert "baker_27" in [h["key"] for h in hits]
    world_scope = f"world:{light_world['id']}"
    assert all(h["scope"] in (world_scope, f"session:{session_id}") for h in hits)
    assert len({h["lore_entry_id"] for h in hits}) == len(hits)


def test_search_k_defaults_to_3(client, session_id):
    res = client.get(f"/v1/sessions/{session_id}/search", params={"q": "bread"})
    assert res.status_code == 200
    assert len(res.json()["hits"]) == 3


@pytest.mark.parametrize("params", [{"q": ""}, {"q": "   "}, {}, {"q": "baker", "k": 0},
                                    {"q": "baker", "k": 51}])
def test_search_invalid_query_is_422(client, session_id, params):
    res = client.get(f"/v1/sessions/{session_id}/search", params=params)
    assert res.status_code == 422


def test_search_unknown_session_is_404(client):
    res = client.get(f"/v1/sessions/{uuid.uuid4().hex}/search", params={"q": "baker"})
    assert res.status_code == 404


# --------------------------------------------------------------------------- ticks, ops


def test_tick_enqueues_simulation(client, session_id, wait_for):
    res = client.post(f"/v1/sessions/{session_id}/tick")
    assert res.status_code == 202, res.text
    tick_id = res.json()["tick_id"]
    assert tick_id

    def same_tick(kwargs):
        return kwargs.get("tick_id") == tick_id and kwargs.get("session_id") == session_id

    wait_for(lambda: _enqueued("simulate_world", "npc_memory.simulate_world", same_tick), timeout=60)


def test_tick_unknown_session_is_404(client):
    assert client.post(f"/v1/sessions/{uuid.uuid4().hex}/tick").status_code == 404


def test_healthz_reports_loaded_vectors(client, light_world):
    res = client.get("/healthz")
    assert res.status_code == 200
    body = res.json()
    assert body["ok"] is True
    assert body["vectors"] >= len(light_world["spec"].entries)


def test_openapi_lists_routes(client):
    res = client.get("/openapi.json")
    assert res.status_code == 200
    paths = res.json()["paths"]
    assert "post" in paths["/v1/sessions"]
    assert "post" in paths["/v1/sessions/{session_id}/turns"]
    assert "post" in paths["/v1/sessions/{session_id}/events"]
    assert "get" in paths["/v1/sessions/{session_id}/export"]
    assert "get" in paths["/v1/sessions/{session_id}/search"]
    assert "post" in paths["/v1/sessions/{session_id}/tick"]
    assert "get" in paths["/healthz"]


def test_second_turn_is_served_from_the_hot_cache_with_no_database_query(client, session_id):
    """The Level 1 cache answers the second turn of a (session, NPC) after one counter check
    against Redis; a note written meanwhile by a worker is picked up, and still 0 SQL."""
    from workers.state import state

    body = {"npc_id": "baker_27", "player_text": "Do you bake on Sundays?"}
    assert client.post(f"/v1/sessions/{session_id}/turns", json=body).status_code == 200
    hits = state.hot.stats()["hits"]
    refreshes = state.hot.stats()["refreshes"]
    with sql_statements() as statements:
        res = client.post(f"/v1/sessions/{session_id}/turns", json=body)
        r = nearline.get_redis()
        world_id = nearline.get_session(r, session_id)["world_id"]
        entry_id = nearline.resolve_key(r, world_id, session_id, "baker_27")
        nearline.set_note(r, session_id, entry_id, "Owes the baker a coin.")  # a worker's write
        res2 = client.post(f"/v1/sessions/{session_id}/turns", json=body)
    assert res.status_code == 200 and res2.status_code == 200
    assert statements == []
    assert state.hot.stats()["hits"] == hits + 1  # the second turn
    assert state.hot.stats()["refreshes"] == refreshes + 1  # the third: the note changed
    key = (session_id, "baker_27")
    assert key in state.hot.keys()
    assert client.get("/healthz").json()["hot_cache"]["entries"] >= 1


# --------------------------------------------------------------------------- auth, probes


def _without_auth(client, method: str, url: str, **kwargs):
    """Send a request on ``client`` without its default Authorization header."""
    req = client.build_request(method, url, **kwargs)
    del req.headers["Authorization"]
    return client.send(req)


def test_openapi_is_public_and_declares_the_bearer_scheme(client):
    res = _without_auth(client, "GET", "/openapi.json")
    assert res.status_code == 200
    doc = res.json()
    assert doc["components"]["securitySchemes"]["ApiKey"] == {
        "type": "http", "scheme": "bearer",
        "description": "One of the dialogue server's API_KEYS: `Authorization: Bearer <key>`"}
    paths = doc["paths"]
    assert paths["/v1/sessions/{session_id}/turns"]["post"]["security"] == [{"ApiKey": []}]
    assert paths["/v1/dead-letters"]["get"]["security"] == [{"ApiKey": []}]
    assert "security" not in paths["/healthz"]["get"]
    assert "security" not in paths["/readyz"]["get"]
    assert "security" not in paths["/metrics"]["get"]  # public unless METRICS_PUBLIC=false


def test_openapi_declares_the_error_answers(client):
    """Each error a route gives is in the document with its body (tests/test_fuzz.py checks
    every answer against it): 401/503 on every /v1 route, 422 everywhere, and a 422 detail
    that is the validation errors or the route's message."""
    doc = client.get("/openapi.json").json()
    paths, schemas = doc["paths"], doc["components"]["schemas"]
    for path, ops in paths.items():
        for method, op in ops.items():
            assert "422" in op["responses"], (method, path)
            if path.startswith("/v1/"):
                assert {"401", "503"} <= set(op["responses"]), (method, path)
    turn = paths["/v1/sessions/{session_id}/turns"]["post"]["responses"]
    assert turn["404"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ErrorOut"}
    assert turn["422"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/UnprocessableOut"}
    detail = schemas["UnprocessableOut"]["properties"]["detail"]["anyOf"]
    assert {"type": "string"} in detail
    assert {"type": "array", "items": {"$ref": "#/components/schemas/FieldError"}} in detail
    assert set(paths["/metrics"]["get"]["responses"]["200"]["content"]) == {"text/plain"}


PROTECTED = [
    ("POST", "/v1/sessions", {"json": {"world": "possibly-vampires"}}),
    ("POST", "/v1/sessions/s1/turns", {"json": {"npc_id": "baker_27", "player_text": "Hi"}}),
    ("POST", "/v1/sessions/s1/events", {"json": {"npc_id": "baker_27", "text": "Hi"}}),
    ("GET", "/v1/sessions/s1/search", {"params": {"q": "baker"}}),
    ("POST", "/v1/sessions/s1/tick", {}),
    ("GET", "/v1/dead-letters", {}),
    ("GET", "/v1/queues", {}),
    ("GET", "/v1/sessions/s1/export", {}),
]


@pytest.mark.parametrize("method, url, kwargs", PROTECTED, ids=[p[1] + " " + p[0] for p in PROTECTED])
def test_routes_reject_a_missing_key(client, method, url, kwargs):
    res = _without_auth(client, method, url, **kwargs)
    assert res.status_code == 401
    assert res.json()["detail"] == "missing API key: send 'Authorization: Bearer <key>'"
    assert res.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("header", ["Bearer wrong-key", "Bearer ", "Basic dXNlcjpwYXNz", "wrong"])
@pytest.mark.parametrize("method, url, kwargs", PROTECTED[:4], ids=[p[1] for p in PROTECTED[:4]])
def test_routes_reject_a_wrong_key(client, method, url, kwargs, header):
    res = client.request(method, url, headers={"Authorization": header}, **kwargs)
    assert res.status_code == 401
    assert res.json()["detail"] in ("invalid API key",
                                    "missing API key: send 'Authorization: Bearer <key>'")
    assert res.headers["www-authenticate"].startswith("Bearer")
    if header == "Bearer wrong-key":
        assert res.json()["detail"] == "invalid API key"
        assert 'error="invalid_token"' in res.headers["www-authenticate"]


def test_every_configured_key_is_accepted(client):
    for key in os.environ["API_KEYS"].split(","):
        res = client.get(f"/v1/sessions/{uuid.uuid4().hex}/search", params={"q": "baker"},
                         headers={"Authorization": f"Bearer {key}"})
        assert res.status_code == 404  # past the key check: the session does not exist


def test_probes_need_no_key(client):
    assert _without_auth(client, "GET", "/healthz").status_code == 200
    assert _without_auth(client, "GET", "/readyz").status_code == 200


def _settings_env(**env: str):
    """Run with these environment variables and freshly read settings; restore both after."""
    from settings import environment

    return environment(env)


def test_server_refuses_to_start_without_keys():
    from workers.auth import AuthNotConfigured
    from workers.web import app

    with _settings_env(API_KEYS=" , ", API_AUTH="on"):
        with pytest.raises(AuthNotConfigured, match="API_KEYS is empty.*API_AUTH=off"):
            with TestClient(app):
                pass


def test_api_auth_off_serves_without_a_key(client):
    with _settings_env(API_KEYS="", API_AUTH="off"):
        res = _without_auth(client, "GET", f"/v1/sessions/{uuid.uuid4().hex}/search",
                            params={"q": "baker"})
    assert res.status_code == 404
    assert _without_auth(client, "GET", "/v1/dead-letters").status_code == 401  # back on


def test_readyz_checks_every_dependency(client):
    res = client.get("/readyz")
    assert res.status_code == 200, res.text
    body = res.json()
    assert body["ready"] is True and body["failed"] == []
    assert set(body["checks"]) == {"broker", "redis", "database", "model_server", "vector_index"}
    assert all(c["ok"] for c in body["checks"].values())
    assert "vectors" in body["checks"]["vector_index"]["detail"]


def test_readyz_names_the_failed_dependency(client):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    with _settings_env(LLM_BASE_URL=dead, DATABASE_URL="postgresql://nobody@127.0.0.1:9/none"):
        res = _without_auth(client, "GET", "/readyz")
    assert res.status_code == 503
    body = res.json()
    assert body["ready"] is False
    assert body["failed"] == ["database", "model_server"]
    assert body["checks"]["broker"]["ok"] and body["checks"]["redis"]["ok"]


# --------------------------------------------------------------------------- metrics


def _scrape(client) -> dict[tuple[str, tuple], float]:
    """``/metrics`` without a key, parsed: ``{(sample name, sorted labels): value}``."""
    from prometheus_client.parser import text_string_to_metric_families

    res = _without_auth(client, "GET", "/metrics")
    assert res.status_code == 200, res.text
    assert res.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(res.text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_lists_the_families_and_a_turn_counts(client, session_id):
    before = _scrape(client)
    names = {n for n, _ in before}
    for expected in ("npc_turns_served_total", "npc_queue_length", "npc_vector_index_vectors",
                     "npc_metrics_source_up", "npc_http_request_duration_seconds_bucket",
                     "process_resident_memory_bytes"):
        assert expected in names, expected
    for q in ("analysis", "note_update", "entity_creation", "simulate_world", "embed", "archive"):
        assert ("npc_queue_length", (("queue", q),)) in before
    assert _value(before, "npc_metrics_source_up", source="broker") == 1
    assert _value(before, "npc_metrics_source_up", source="database") == 1
    assert _value(before, "npc_vector_index_vectors") > 0

    res = client.post(f"/v1/sessions/{session_id}/turns",
                      json={"npc_id": "baker_27", "player_text": "How much is a loaf?"})
    assert res.status_code == 200, res.text
    after = _scrape(client)
    assert _value(after, "npc_turns_served_total", kind="turn") == \
        _value(before, "npc_turns_served_total", kind="turn") + 1
    route = "/v1/sessions/{session_id}/turns"
    assert _value(after, "npc_http_request_duration_seconds_count", method="POST", route=route,
                  status="200") >= 1
    calls = _value(after, "npc_model_call_duration_seconds_count", role="generation",
                   backend="llamacpp", outcome="ok")
    assert calls >= _value(before, "npc_model_call_duration_seconds_count", role="generation",
                           backend="llamacpp", outcome="ok") + 1
    assert _value(after, "npc_model_tokens_total", role="generation", kind="completion") > \
        _value(before, "npc_model_tokens_total", role="generation", kind="completion")
    # an unknown path is one label value, whatever the path
    _without_auth(client, "GET", f"/nothing/{uuid.uuid4().hex}")
    unmatched = [k for k in _scrape(client) if k[0] == "npc_http_request_duration_seconds_count"
                 and ("route", "unmatched") in k[1]]
    assert unmatched and not any("nothing" in str(k) for k in _scrape(client))


def test_metrics_ledger_counts_and_the_cache(client):
    """Task outcomes and dead letters come from the ledger, read at most once per
    METRICS_CACHE_S seconds."""
    from models import DeadLetter, TaskRecord
    from workers.web import store_metrics

    name = f"npc_memory.metrics_probe_{uuid.uuid4().hex[:6]}"
    with session_scope() as s:
        s.add_all([TaskRecord(task_id=uuid.uuid4().hex, task_name=name, status="succeeded",
                              tokens_used=120),
                   TaskRecord(task_id=uuid.uuid4().hex, task_name=name, status="succeeded",
                              tokens_used=30),
                   TaskRecord(task_id=uuid.uuid4().hex, task_name=name, status="dead"),
                   DeadLetter(task_id=uuid.uuid4().hex, task_name=name, queue="analysis",
                              payload={}, error="probe")])
    with _settings_env(METRICS_CACHE_S="0"):
        got = _scrape(client)
    assert _value(got, "npc_tasks", task=name, status="succeeded") == 2
    assert _value(got, "npc_tasks", task=name, status="dead") == 1
    assert _value(got, "npc_dead_letters", task=name, replayed="false") == 1
    assert _value(got, "npc_task_tokens", task=name) == 150
    with _settings_env(METRICS_CACHE_S="3600"):
        reads = dict(store_metrics.reads)
        for _ in range(3):
            _scrape(client)
        assert store_metrics.reads == reads  # served from the cache
    with session_scope() as s:  # leave the ledger as other modules expect it
        s.query(TaskRecord).filter(TaskRecord.task_name == name).delete()
        s.query(DeadLetter).filter(DeadLetter.task_name == name).delete()


def test_metrics_can_require_a_key(client):
    with _settings_env(METRICS_PUBLIC="false"):
        assert _without_auth(client, "GET", "/metrics").status_code == 401
        assert client.get("/metrics").status_code == 200


def test_database_outage_is_503(client, light_world):
    """A route that needs the database answers 503 with the reason while it is unreachable
    (here: a port nothing listens on), as the document declares, and works again after."""
    from workers.embedded import free_port

    dead = f"postgresql://postgres@127.0.0.1:{free_port()}/gone"
    with _settings_env(DATABASE_URL=dead):
        res = client.post("/v1/sessions", json={"world": light_world["key"]})
        assert res.status_code == 503, res.text
        assert res.json()["detail"].startswith("database unavailable: ")
        assert client.get("/v1/archetypes").status_code == 503
    assert client.post("/v1/sessions", json={"world": light_world["key"]}).status_code == 201
