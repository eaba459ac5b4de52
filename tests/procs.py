"""Real processes for the fault and outage tests; the helpers live in ``devtools.procs`` and
``devtools.hosts`` (shared with the benchmarks in ``bench/``). Logs go to ``DATA_DIR`` (the test run's temporary folder).
Also what those tests do through a running dialogue server: open a session, play turns, and
read what the archive and the task ledger hold afterwards.
"""

from __future__ import annotations

import httpx
from sqlalchemy import select

from memory.db import session_scope
from models import TaskRecord, Turn
from devtools.hosts import HAProxy, Host, haproxy_bin, start_hosts
from devtools.procs import (
    ROOT,
    PrivatePostgres,
    PrivateRedis,
    SubprocessWorker,
    WebServer,
    _Subprocess,
    _wait_port,
    api_headers,
    process_env,
    process_env_with_broker,
)
from workers.embedded import free_port

LINES = ["Good evening. Have you seen anything strange in the village tonight?",
         "I heard wolves howling near the old mill.",
         "Will you keep my secret if I tell you where I sleep?",
         "Thank you, friend. I will return before dawn."]
"""Player lines the outage tests play."""


def open_session(client: httpx.Client, world_key: str) -> tuple[str, str]:
    """Open a session on ``world_key``; ``(session id, first character's npc_id)``."""
    resp = client.post("/v1/sessions", json={"world": world_key, "player_name": "tester"})
    assert resp.status_code == 201, resp.text
    body = resp.json()
    return body["session_id"], body["characters"][0]["npc_id"]


def play_turn(client: httpx.Client, sid: str, npc: str, text: str) -> httpx.Response:
    """``POST /v1/sessions/{sid}/turns`` (the response, whatever its status)."""
    return client.post(f"/v1/sessions/{sid}/turns", json={"npc_id": npc, "player_text": text})


def play_lines(client: httpx.Client, sid: str, npc: str, lines: list[str]) -> list[str]:
    """Play ``lines`` as turns to ``npc``, each answered 200; their turn ids, in order."""
    ids = []
    for text in lines:
        resp = play_turn(client, sid, npc, text)
        assert resp.status_code == 200, resp.text
        ids.append(resp.json()["turn_id"])
    return ids


def archived(session_id: str, url: str | None = None) -> set[str]:
    """Turn ids of the session in the archive (``turns``)."""
    with session_scope(url) as s:
        return set(s.scalars(select(Turn.id).where(Turn.session_id == session_id)))


def ledger(task_ids: list[str], url: str | None = None) -> dict[str, TaskRecord]:
    """The task ledger's rows of ``task_ids`` (those present), by task id."""
    with session_scope(url) as s:
        rows = s.scalars(select(TaskRecord).where(TaskRecord.task_id.in_(task_ids))).all()
        return {r.task_id: r for r in rows}


__all__ = ["LINES", "ROOT", "HAProxy", "Host", "PrivatePostgres", "PrivateRedis",
           "SubprocessWorker", "WebServer", "_Subprocess", "_wait_port", "api_headers", "archived",
           "free_port", "haproxy_bin", "ledger", "open_session", "play_lines", "play_turn",
           "process_env", "process_env_with_broker", "start_hosts"]
