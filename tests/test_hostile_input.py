"""Hostile input at the HTTP edge, in the archive and dead-letter stores, and in the logs:
NUL, lone surrogates, NaN/Infinity, huge integers and megabyte values are refused with a 4xx
(never a 500), stored safely, or bounded. The dialogue server runs in-process (TestClient,
lifespan included) on the real database and Redis; no Celery worker is started here."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
import uuid

import pytest
from sqlalchemy import select

from memory import nearline
from memory.db import session_scope
from models import DeadLetter, LoreEntry, TaskRecord, Turn

API_KEY = os.environ["API_KEYS"].split(",")[0]
JSON = {"content-type": "application/json"}
NUL_TYPES = {"nul_character"}


@pytest.fixture()
def sid(client, light_world) -> str:
    res = client.post("/v1/sessions", json={"world": light_world["key"]})
    assert res.status_code == 201, res.text
    return res.json()["session_id"]


def _raw(client, method: str, url: str, body: bytes):
    return client.request(method, url, content=body, headers=JSON)


def _assert_bounded_422(res, max_bytes: int = 4000) -> list[dict]:
    """A 422 whose body is valid UTF-8 JSON of at most ``max_bytes``; returns its errors."""
    assert res.status_code == 422, res.text[:500]
    assert len(res.content) <= max_bytes
    body = json.loads(res.content.decode("utf-8"))
    return body["detail"] if isinstance(body["detail"], list) else [body]


# --------------------------------------------------------------------------- NUL, surrogates


@pytest.mark.parametrize("path, body, field", [
    ("turns", {"npc_id": "baker_27", "player_text": "hello\u0000world"}, "player_text"),
    ("turns", {"npc_id": "baker\u0000_27", "player_text": "hello"}, "npc_id"),
    ("events", {"npc_id": "baker_27", "text": "hello\u0000world"}, "text"),
    ("events", {"npc_id": "baker_27", "text": "hi", "npc_text": "a\u0000b"}, "npc_text"),
    ("events", {"npc_id": "baker_27", "text": "hi", "speaker": "\u0000"}, "speaker"),
    ("events", {"npc_id": "baker_27", "text": "hi", "event_id": "e\u0000"}, "event_id"),
])
def test_nul_in_turn_and_event_fields_is_422_and_records_nothing(client, sid, path, body, field):
    res = client.post(f"/v1/sessions/{sid}/{path}", json=body)
    errors = _assert_bounded_422(res)
    assert any(e["type"] == "nul_character" and field in e["loc"] for e in errors), errors
    assert "NUL" in errors[0]["msg"]
    assert nearline.recent_turns(nearline.get_redis(), sid, 10) == []


@pytest.mark.parametrize("body", [
    {"world": "possibly\u0000vampires"}, {"world": "x", "player_name": "A\u0000nn"}])
def test_nul_in_session_fields_is_422(client, body):
    errors = _assert_bounded_422(client.post("/v1/sessions", json=body))
    assert errors[0]["type"] == "nul_character"


@pytest.mark.parametrize("raw", [
    b'{"npc_id": "baker_27", "player_text": "\\ud800"}',
    b'{"npc_id": "baker_27", "player_text": "ok \\udfff tail"}',
    b'{"\\ud800": 1, "npc_id": "baker_27", "player_text": "hi"}',
])
def test_lone_surrogate_in_a_body_is_422_not_500(client, sid, raw):
    errors = _assert_bounded_422(_raw(client, "POST", f"/v1/sessions/{sid}/turns", raw))
    assert errors and all(e["msg"] for e in errors)
    assert nearline.recent_turns(nearline.get_redis(), sid, 10) == []


@pytest.mark.parametrize("url", [
    "/v1/sessions/{sid}%00/entries/baker_27",
    "/v1/sessions/{sid}/entries/baker%00_27",
    "/v1/sessions/{sid}/cards/baker%0027",
    "/v1/sessions/{sid}/tasks?status=queued%00",
    "/v1/sessions/{sid}/search?q=bread%00",
    "/v1/dead-letters?task_name=npc%00memory",
    "/v1/worlds/w%00/characters/c/route",
])
def test_nul_in_path_and_query_parameters_is_422(client, sid, url):
    errors = _assert_bounded_422(client.get(url.format(sid=sid)))
    assert errors[0]["type"] == "nul_character" and errors[0]["loc"][0] in ("path", "query")


@pytest.mark.parametrize("method, url, body", [
    ("POST", "/v1/archetypes/provision", {"root": "a\u0000"}),
    ("POST", "/v1/archetypes/provision", {"root": "a", "server_id": "\u0000"}),
    ("PUT", "/v1/worlds/w/characters/c/archetype", {"archetype": "v\u0000"}),
])
def test_nul_in_the_other_request_models_is_422(client, method, url, body):
    errors = _assert_bounded_422(client.request(method, url, json=body))
    assert errors[0]["type"] == "nul_character"


# --------------------------------------------------------------------------- NaN, Infinity, big ints


@pytest.mark.parametrize("raw", [
    b'{"npc_id": "baker_27", "text": "hi", "created_at": NaN}',
    b'{"npc_id": "baker_27", "text": "hi", "created_at": Infinity}',
    b'{"npc_id": "baker_27", "text": "hi", "created_at": -Infinity}',
    b'{"npc_id": "baker_27", "text": "hi", "created_at": 1e309}',
    b'{"npc_id": NaN, "text": 1e309}',
])
def test_non_finite_numbers_in_a_body_are_422_not_500(client, sid, raw):
    errors = _assert_bounded_422(_raw(client, "POST", f"/v1/sessions/{sid}/events", raw))
    assert all(isinstance(e["input"], (str, int, float, type(None), dict, list)) for e in errors)
    assert nearline.recent_turns(nearline.get_redis(), sid, 10) == []


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "Infinity", "1e309"])
def test_world_tick_refuses_non_finite_idle_after_s_and_sends_nothing(client, value):
    with session_scope() as s:
        before = s.query(TaskRecord).count(), s.query(DeadLetter).count()
    res = client.post("/v1/world/tick", params={"idle_after_s": value})
    assert res.status_code == 422, res.text
    assert res.json()["detail"][0]["loc"] == ["query", "idle_after_s"]
    with session_scope() as s:
        assert (s.query(TaskRecord).count(), s.query(DeadLetter).count()) == before


@pytest.mark.parametrize("url", [
    f"/v1/dead-letters/{2**70}", f"/v1/dead-letters/{2**31}", "/v1/dead-letters/0",
    f"/v1/dead-letters/-{2**70}",
])
def test_out_of_range_integer_path_parameters_are_422(client, url):
    _assert_bounded_422(client.get(url))
    _assert_bounded_422(client.post(url + "/replay"))


def test_out_of_range_rollback_version_is_422(client, sid):
    res = client.post(f"/v1/sessions/{sid}/notes/baker_27/rollback", json={"version": 2**70})
    _assert_bounded_422(res)


# --------------------------------------------------------------------------- bounded bodies


def test_a_megabyte_input_is_not_echoed_back(client, sid):
    big = "x" * 1_000_000
    res = client.post(f"/v1/sessions/{sid}/turns", json={"npc_id": "baker_27", "player_text": big})
    errors = _assert_bounded_422(res, max_bytes=2000)
    assert errors[0]["type"] == "string_too_long"
    assert errors[0]["input"].startswith("xxx") and len(errors[0]["input"]) <= 203
    junk = {"npc_id": "baker_27", "player_text": "hi",
            **{f"extra_{i}": [float("nan")] * 1000 for i in range(100)}}
    res = _raw(client, "POST", f"/v1/sessions/{sid}/turns",
               json.dumps(junk).encode())  # stdlib json writes NaN
    _assert_bounded_422(res, max_bytes=20_000)
    assert res.json()["more_errors"] == 80


@pytest.mark.parametrize("text", [" ", "   \t\n ", "\u3000"])
def test_whitespace_only_player_text_is_422(client, sid, text):
    res = client.post(f"/v1/sessions/{sid}/turns", json={"npc_id": "baker_27", "player_text": text})
    errors = _assert_bounded_422(res)
    assert errors[0]["type"] == "blank_string" and "player_text" in errors[0]["loc"]


# --------------------------------------------------------------------------- provisioning


@pytest.mark.parametrize("body", [
    {"root": "/etc"}, {"root": "/"}, {"root": "../../../../etc"},
    {"root": ".", "archetype": "../../../../etc"}, {"root": "/etc", "archetype": "ssl"},
])
def test_provisioning_outside_adapters_root_is_422_without_listing(client, body):
    res = client.post("/v1/archetypes/provision", json=body)
    assert res.status_code == 422, res.text
    assert "ADAPTERS_ROOT" in res.json()["detail"]
    listed = set(os.listdir("/etc"))
    assert not any(name in res.text for name in listed if len(name) > 3)


def test_provisioning_inside_adapters_root_still_reads_the_folder(client, tmp_path):
    (tmp_path / "empty").mkdir()
    res = client.post("/v1/archetypes/provision", json={"root": str(tmp_path / "empty")})
    assert res.status_code == 422 and "no archetype folders" in res.json()["detail"]


@pytest.mark.parametrize("body", [{"root": "0" * 1000}, {"root": "a/" + "b" * 300}])
def test_provisioning_a_name_the_file_system_refuses_is_422(client, body):
    """Names longer than the file system takes (found by the schema fuzzer's coverage phase:
    this was a 500 ``OSError: File name too long``)."""
    res = client.post("/v1/archetypes/provision", json=body)
    assert res.status_code == 422, res.text
    assert isinstance(res.json()["detail"], str)


# --------------------------------------------------------------------------- dead letters


def test_dead_letter_store_takes_any_payload_and_listings_are_bounded(client):
    from tasks.base import dead_letter

    task_id = f"hostile-{uuid.uuid4().hex}"
    payload = {"blob": "y" * 50_000, "nan": float("nan"), "inf": [float("inf")],
               "nul": "a\x00b", "lone": "\ud800", "huge": 2**70,
               "obj": object()}
    dead_letter(task_id, "npc_memory.analyze_turn", "analysis", payload, "invalid\x00 payload")
    with session_scope() as s:
        dl = s.scalar(select(DeadLetter).where(DeadLetter.task_id == task_id))
        row = s.scalar(select(TaskRecord).where(TaskRecord.task_id == task_id))
        assert dl is not None and row is not None and row.status == "dead"
        dl_id = dl.id
    stored = client.get(f"/v1/dead-letters/{dl_id}").json()
    assert stored["payload"]["nan"] == "NaN" and stored["payload"]["inf"] == ["Infinity"]
    assert stored["payload"]["nul"] == "ab" and stored["payload"]["lone"] == "\ufffd"
    assert stored["payload"]["huge"] == str(2**70) and len(stored["payload"]["blob"]) == 50_000
    assert stored["payload"]["obj"].startswith("<object object")
    assert stored["error"] == "invalid\ufffd payload"

    assert client.get("/v1/dead-letters", params={"limit": 200}).status_code == 422
    listed = client.get("/v1/dead-letters", params={"limit": 100})
    assert listed.status_code == 200
    item = next(d for d in listed.json() if d["id"] == dl_id)
    assert item["payload"]["truncated"] is True and item["payload"]["chars"] > 50_000
    assert len(item["payload"]["preview"]) == 2000
    assert len(listed.content) < 100 * 7000


def test_unserialisable_payload_is_dead_lettered_as_repr():
    from tasks.base import dead_letter

    task_id = f"hostile-{uuid.uuid4().hex}"
    dead_letter(task_id, "npc_memory.reconcile", "maintenance",
                {"n": 10**5000, "deep": _nested(200)}, "boom")
    with session_scope() as s:
        dl = s.scalar(select(DeadLetter).where(DeadLetter.task_id == task_id))
        assert dl is not None
        json.dumps(dl.payload, allow_nan=False)


def _nested(depth: int):
    out: list = []
    for _ in range(depth):
        out = [out]
    return out


def test_a_turn_with_nul_is_archived_with_replacement_characters(game_session):
    from memory.archive import insert_turns

    with session_scope() as s:
        npc = s.scalar(select(LoreEntry).where(LoreEntry.world_id == game_session["world_id"],
                                               LoreEntry.key == "baker_27"))
        turn_id = uuid.uuid4().hex
        new = insert_turns(s, [{"turn_id": turn_id, "session_id": game_session["id"], "seq": 1,
                                "npc_entry_id": npc.id, "player_text": "hello\x00world",
                                "npc_text": "\x00", "speaker": "Ann\x00", "latency_ms": 1.0,
                                "created_at": time.time()}])
    assert new == {turn_id}
    with session_scope() as s:
        row = s.get(Turn, turn_id)
        assert row.player_text == "hello\ufffdworld" and row.npc_text == "\ufffd"
        assert row.speaker == "Ann\ufffd"


def test_payload_models_refuse_non_finite_numbers_and_oversized_ids():
    from pydantic import ValidationError

    from contract.payloads import (
        CreationPayload,
        NoteUpdatePayload,
        ReconcilePayload,
        TickPayload,
        TurnPayload,
    )

    for model, kwargs in [(ReconcilePayload, {"older_than_s": float("nan")}),
                          (TickPayload, {"idle_after_s": float("inf")}),
                          (NoteUpdatePayload, {"session_id": "s", "lore_entry_key": "k",
                                               "update_summary": "u", "idempotency_key": "i",
                                               "turn_id": "t" * 1_000_000}),
                          (CreationPayload, {"session_id": "s\x00", "entity_type": "item",
                                             "creation_summary": "c", "idempotency_key": "i"})]:
        with pytest.raises(ValidationError):
            model.model_validate(kwargs)
    turn = TurnPayload.model_validate({
        "turn_id": "t", "session_id": "s", "world_id": 1, "seq": 1, "npc_entry_id": 1,
        "player_text": "a\x00b\ud800", "npc_text": "", "created_at": 1.0})
    assert turn.player_text == "a\ufffdb\ufffd"


# --------------------------------------------------------------------------- logs


def _log_lines(secrets_env: dict, emit) -> list[dict]:
    from settings import get_settings
    from workers import logging_setup

    os.environ.update(secrets_env)
    get_settings.cache_clear()
    try:
        buf = io.StringIO()
        logger = logging.getLogger(f"test.hostile.{uuid.uuid4().hex}")
        logger.propagate = False
        logger.addHandler(logging_setup.make_handler("worker", buf, fmt="json"))
        logger.setLevel(logging.INFO)
        emit(logger, logging_setup)
    finally:
        for k in secrets_env:
            os.environ.pop(k, None)
        get_settings.cache_clear()
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_a_megabyte_value_is_logged_truncated_and_still_scrubbed():
    from workers.logging_setup import CONTEXT_VALUE_CHARS, LOG_VALUE_CHARS

    key = f"llm-secret-{uuid.uuid4().hex}"
    # the key right across the cut, a URL password and a bearer token at the start
    value = ("redis://u:hunter2pw@h Bearer abcdefgh.ijk " + "a" * (LOG_VALUE_CHARS - 60)
             + key + "b" * 1_000_000)

    def emit(logger, setup):
        setup.bind(turn_id="t" * 1_000_000, task_id="x" * 1_000_000)
        logger.info("turn %s", value, extra={"payload": value, "nested": {"v": value}})
        setup.clear()
        try:
            raise ValueError(value)
        except ValueError:
            logger.exception("failed")

    lines = _log_lines({"LLM_API_KEY": key}, emit)
    text = json.dumps(lines)
    assert key not in text and key[:12] not in text
    assert "hunter2pw" not in text and "abcdefgh.ijk" not in text
    first = lines[0]
    for field in ("message", "payload", "nested"):
        assert len(first[field]) <= LOG_VALUE_CHARS + 40, field
        assert re.search(r"\.\.\.\[\d+ more chars\]$", first[field]), field
    assert first["message"].startswith("turn redis://u:***@h Bearer ***")
    assert len(first["turn_id"]) == CONTEXT_VALUE_CHARS == len(first["task_id"])
    assert len(lines[1]["exc_info"]) <= 16384 + 40 and "more chars" not in lines[1]["exc_info"]
    assert len(text) < 60_000


def test_scrub_patterns_are_structurally_linear():
    """No nested repetition; every unbounded repetition is in a pattern that starts with a
    literal (so its runs cannot overlap); a sanity check on adversarial input, not a timing."""
    import re._constants as c
    import re._parser as p

    from workers.logging_setup import SCRUB_PATTERNS, scrub

    repeats = (c.MAX_REPEAT, c.MIN_REPEAT, c.POSSESSIVE_REPEAT)

    def walk(items, inside_repeat: bool, unbounded: list) -> None:
        for op, av in items:
            if op in repeats:
                _lo, hi, sub = av
                assert not inside_repeat, "nested repetition"
                if hi == c.MAXREPEAT:
                    unbounded.append(op)
                walk(sub, True, unbounded)
            elif op == c.SUBPATTERN:
                walk(av[-1], inside_repeat, unbounded)
            elif op == c.BRANCH:
                for branch in av[1]:
                    walk(branch, inside_repeat, unbounded)

    for pattern in SCRUB_PATTERNS:
        parsed = p.parse(pattern.pattern)
        unbounded: list = []
        walk(parsed, False, unbounded)
        if unbounded:
            first_op = parsed[0][0]
            if first_op == c.SUBPATTERN:
                first_op = parsed[0][1][-1][0][0]
            assert first_op == c.LITERAL, pattern.pattern
    # the inputs that were quadratic before, bounded by the value limit anyway
    for hostile in ("a" * 50_000, "a:" * 25_000, "a://" + "b" * 50_000, "Bearer " * 10_000):
        assert scrub(hostile, []) == hostile
