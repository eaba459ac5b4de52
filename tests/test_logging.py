"""Structured JSON logs: context fields from requests and Celery tasks, secrets scrubbed;
the dialogue server and a worker run as real subprocesses and their log files are read."""

from __future__ import annotations

import io
import json
import logging
import os
import uuid

import httpx
import pytest
from sqlalchemy import select

from memory.db import session_scope
from models import LoreEntry, TaskRecord
from tests.procs import SubprocessWorker, WebServer, api_headers, process_env

API_KEY = os.environ["API_KEYS"].split(",")[0]
LLM_KEY = f"llm-secret-{uuid.uuid4().hex}"


def _json_lines(text: str) -> list[dict]:
    """The JSON log records in ``text`` (Celery's start-up banner is plain stdout)."""
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def test_handler_adds_context_and_scrubs_secrets():
    from settings import get_settings
    from workers import logging_setup

    os.environ["LLM_API_KEY"] = LLM_KEY
    get_settings.cache_clear()
    try:
        buf = io.StringIO()
        logger = logging.getLogger(f"test.logging.{uuid.uuid4().hex}")
        logger.propagate = False
        logger.addHandler(logging_setup.make_handler("web", buf, fmt="json"))
        logger.setLevel(logging.INFO)
        logging_setup.bind(session_id="s-1", turn_id="t-1", idempotency_key="turn:t-1")
        logger.info("calling the model with %s and key %s", LLM_KEY, API_KEY)
        logger.warning("broker redis://user:hunter2pw@10.0.0.1:6379/0, header Bearer abc.def-123")
        logging_setup.clear()
        try:
            raise RuntimeError(f"failed with {API_KEY}")
        except RuntimeError:
            logger.exception("boom", extra={"npc_id": "baker_27"})
    finally:
        os.environ.pop("LLM_API_KEY", None)
        get_settings.cache_clear()
    text = buf.getvalue()
    assert API_KEY not in text and LLM_KEY not in text
    assert "hunter2pw" not in text and "abc.def-123" not in text
    first, second, third = _json_lines(text)
    assert first["message"] == "calling the model with *** and key ***"
    assert first["session_id"] == "s-1" and first["turn_id"] == "t-1"
    assert first["idempotency_key"] == "turn:t-1"
    assert first["process"] == "web" and first["level"] == "INFO" and first["time"]
    assert "redis://user:***@10.0.0.1" in second["message"] and "Bearer ***" in second["message"]
    assert "session_id" not in third and third["npc_id"] == "baker_27"
    assert "RuntimeError: failed with ***" in third["exc_info"]


@pytest.fixture(scope="module")
def web(llm_server, light_world):
    server = WebServer(process_env(LLM_API_KEY=LLM_KEY, LOG_LEVEL="INFO"), "logging-web.log",
                       log_level="info")
    server.start()
    try:
        yield server
    finally:
        server.stop()
        from memory import nearline

        nearline.get_redis().delete("analysis", "archive")


def test_web_logs_json_with_session_and_turn_and_no_secret(web, light_world, wait_for):
    with httpx.Client(base_url=web.url, headers=api_headers(), timeout=180) as client:
        sid = client.post("/v1/sessions", json={"world": light_world["key"]}).json()["session_id"]
        res = client.post(f"/v1/sessions/{sid}/turns",
                          json={"npc_id": "baker_27", "player_text": "Fresh bread today?"})
        assert res.status_code == 200, res.text
        turn_id = res.json()["turn_id"]
        event = client.post(f"/v1/sessions/{sid}/events",
                            json={"npc_id": "baker_27", "text": "Bye.", "event_id": "bye-1"})
        assert event.status_code == 201
        # a careless client puts the key in the URL: the access log must not keep it
        client.get("/v1/dead-letters", params={"token": API_KEY})
        httpx.get(f"{web.url}/v1/dead-letters", headers={"Authorization": "Bearer wrong"})
        assert client.get("/readyz").status_code == 200

    def logged():
        records = _json_lines(web.tail(200_000))
        return [r for r in records if r.get("message") == "event recorded"] and records

    records = wait_for(logged, timeout=30)
    text = web.tail(200_000)
    assert API_KEY not in text and LLM_KEY not in text
    served = [r for r in records if r.get("message") == "turn served"]
    assert served and served[-1]["session_id"] == sid and served[-1]["turn_id"] == turn_id
    assert served[-1]["idempotency_key"] == f"turn:{turn_id}" and served[-1]["process"] == "web"
    assert served[-1]["npc_id"] == "baker_27"
    recorded = [r for r in records if r.get("message") == "event recorded"][-1]
    assert recorded["session_id"] == sid and recorded["event_id"] == "bye-1"
    assert any(r.get("message", "").startswith("Started server process") for r in records), \
        "uvicorn's start-up lines are JSON too (--log-config workers/uvicorn_logging.json)"
    access = [r for r in records if r.get("logger") == "uvicorn.access"]
    assert access, "uvicorn's access log goes through the JSON handler"
    assert any("token=***" in r["message"] for r in access)


def test_a_long_unauthenticated_url_is_logged_bounded_and_scrubbed(web, wait_for):
    """A 14 KB URL sent without a key (the longest request line uvicorn takes is 16 KB): 401,
    and every log line that holds it is cut to the log value limit, with the key it carries
    near its start still scrubbed."""
    from workers.logging_setup import LOG_VALUE_CHARS

    marker = uuid.uuid4().hex
    url = f"{web.url}/v1/dead-letters?token={API_KEY}&{marker}=" + "a" * 14_000
    res = httpx.get(url, timeout=30)
    assert res.status_code == 401

    def lines():
        return [r for r in _json_lines(web.tail(200_000)) if marker in json.dumps(r)]

    found = wait_for(lines, timeout=30)
    for record in found:
        for value in record.values():
            assert len(str(value)) <= LOG_VALUE_CHARS + 40, str(value)[:200]
    assert any("more chars]" in r["message"] and "token=***" in r["message"] for r in found)
    assert API_KEY not in web.tail(200_000)


def test_worker_logs_carry_the_task_ids(light_world, wait_for):
    from workers.celery_app import app

    with session_scope() as s:
        entry_id = s.scalar(select(LoreEntry.id).where(LoreEntry.world_id == light_world["id"],
                                                       LoreEntry.key == "baker_27"))
    worker = SubprocessWorker(process_env(LLM_API_KEY=LLM_KEY), "embed", "logging-worker.log")
    worker.start()
    try:
        task_id = f"log-{uuid.uuid4().hex}"
        sid = uuid.uuid4().hex
        app.send_task("npc_memory.embed", kwargs={"lore_entry_id": entry_id, "session_id": sid},
                      task_id=task_id)

        def finished():
            return [r for r in _json_lines(worker.tail(200_000))
                    if r.get("message") == "task finished" and r.get("task_id") == task_id]

        done = wait_for(finished, timeout=120)[0]
        assert done["task_name"] == "npc_memory.embed" and done["session_id"] == sid
        assert done["state"] in ("SUCCESS", "FAILURE")
        started = [r for r in _json_lines(worker.tail(200_000))
                   if r.get("message") == "task started" and r.get("task_id") == task_id]
        assert started and started[0]["process"] == "worker"
        assert LLM_KEY not in worker.tail(200_000)
        with session_scope() as s:
            s.query(TaskRecord).filter(TaskRecord.task_id == task_id).delete()
    finally:
        worker.stop()
