"""Maintenance triggers: re-analyse a recorded turn
(``POST /v1/sessions/{id}/turns/{turn_id}/analyze``, ``npc-memory analyze-turn``) and run a world
tick now (``POST /v1/world/tick``, ``POST /v1/worlds/{key}/tick``, ``npc-memory tick-world``),
against the real Redis broker and database.

No worker consumes the queues here: what the routes send is read from the broker, and the
tasks are run in this process by Celery's own ``Task.apply`` under the task id that was sent
(through ``tasks.base``: ledger, duplicate-id skip, payload validation). The analysis model is
a vLLM-wire fake (``tests.fakes``).
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from memory import cards as mc
from memory import nearline
from memory.archive import insert_turns
from memory.db import session_scope
from tasks.base import _ledger
from contract.send import turn_task_id
from tests.broker import consumers_paused, queued_messages
from tests.fakes import FakeServer, openai_chat, role_on
from tests.procs import api_headers

ANALYZE = "npc_memory.analyze_turn"
QUEUES = ("analysis", "archive", "note_update", "entity_creation", "simulate_world")


@pytest.fixture(scope="module")
def client(light_world, celery_app):
    from workers.web import app

    celery_app.set_current()  # the tasks run by apply() enqueue through the current app
    # a session-wide worker left running by an earlier module must not run what the tests send
    with consumers_paused(celery_app), TestClient(app, headers=api_headers()) as c:
        yield c
    nearline.get_redis().delete(*QUEUES)  # never consumed here


def _message(queue: str, task_id: str) -> dict:
    found = [m for m in queued_messages(nearline.get_redis(), queue) if m["id"] == task_id]
    assert found, f"no message {task_id} in {queue}"
    return found[0]


def _analysis(relationship: list) -> str:
    return json.dumps({"updates": [], "creations": [], "relationship": relationship, "quests": []})


def _event(client, sid: str) -> dict:
    res = client.post(f"/v1/sessions/{sid}/events", json={
        "npc_id": "baker_27", "text": "Here, a loaf of rye for you.", "npc_text": "Thank you!",
        "event_id": uuid.uuid4().hex})
    assert res.status_code == 201, res.text
    return res.json()


def test_reanalysis_runs_again_and_applies_each_effect_once(client, celery_app, game_session):
    sid = game_session["id"]
    turn_id = _event(client, sid)["turn_id"]
    kwargs = _message("analysis", turn_task_id(ANALYZE, turn_id))["kwargs"]
    task = celery_app.tasks[ANALYZE]
    gift = {"kind": "gift", "detail": "The player gave the baker a loaf of rye.", "intensity": 2}
    insult = {"kind": "insult", "detail": "The player mocked the baker's oven.", "intensity": 3}
    with FakeServer() as srv, role_on(srv.url + "/v1", "analysis"):
        srv.script(openai_chat(_analysis([gift])), openai_chat(_analysis([gift, insult])))
        first = task.apply(kwargs=kwargs, task_id=turn_task_id(ANALYZE, turn_id)).get()
        assert first["card_events"] == 1
        # sending the turn's own task id again runs nothing: it already succeeded
        assert task.apply(kwargs=kwargs, task_id=turn_task_id(ANALYZE, turn_id)).get() == {
            "status": "duplicate"}
        assert len(srv.posts("/v1/chat/completions")) == 1

        res = client.post(f"/v1/sessions/{sid}/turns/{turn_id}/analyze")
        assert res.status_code == 202, res.text
        out = res.json()
        assert out["source"] == "redis" and out["turn_id"] == turn_id
        assert out["task_id"].startswith(turn_task_id(ANALYZE, turn_id) + ":re-")
        sent = _message("analysis", out["task_id"])
        assert sent["task"] == ANALYZE and sent["kwargs"] == kwargs
        again = task.apply(kwargs=sent["kwargs"], task_id=out["task_id"]).get()
        assert len(srv.posts("/v1/chat/completions")) == 2  # the model was asked again
    # the gift (event r0) was applied by the first analysis: not again; the insult (r1) is new
    assert (again["card_events"], again["card_duplicates"]) == (1, 1)
    card = mc.get_cards(nearline.get_redis(), sid, kwargs["npc_entry_id"]).relationship
    assert len(card.gifts) == 1 and len(card.insults) == 1
    # each request sends a new task
    assert client.post(f"/v1/sessions/{sid}/turns/{turn_id}/analyze").json()["task_id"] != out["task_id"]


def test_reanalysis_finds_the_turn_in_the_ledger_or_the_archive(client, game_session):
    sid, wid = game_session["id"], game_session["world_id"]
    baker = nearline.resolve_key(nearline.get_redis(), wid, sid, "baker_27")
    turn = {"turn_id": uuid.uuid4().hex, "session_id": sid, "world_id": wid, "seq": 7,
            "npc_entry_id": baker, "player_text": "Is the bread fresh?", "npc_text": "At dawn.",
            "latency_ms": 2.0, "created_at": time.time(), "game_minutes": 30, "speaker": "guard_3"}
    with session_scope() as s:  # archived only: speaker and clock in their own columns
        insert_turns(s, [turn])
    res = client.post(f"/v1/sessions/{sid}/turns/{turn['turn_id']}/analyze")
    assert res.status_code == 202, res.text
    assert res.json()["source"] == "archive"
    sent = _message("analysis", res.json()["task_id"])["kwargs"]
    assert sent["player_text"] == "Is the bread fresh?" and sent["seq"] == 7
    assert (sent["world_id"], sent["npc_entry_id"], sent["game_minutes"]) == (wid, baker, 30)
    assert sent["speaker"] == "guard_3" and "event_id" not in sent

    # the ledger keeps the turn's payload whole (speaker, clock): preferred over the archive
    _ledger(turn_task_id(ANALYZE, turn["turn_id"]), ANALYZE, payload=turn, status="dead")
    res = client.post(f"/v1/sessions/{sid}/turns/{turn['turn_id']}/analyze")
    assert res.json()["source"] == "ledger"
    sent = _message("analysis", res.json()["task_id"])["kwargs"]
    assert sent["speaker"] == "guard_3" and sent["game_minutes"] == 30


def test_reanalysis_of_unknown_things_is_404(client, game_session, light_world):
    sid = game_session["id"]
    turn_id = _event(client, sid)["turn_id"]
    res = client.post(f"/v1/sessions/{sid}/turns/{uuid.uuid4().hex}/analyze")
    assert res.status_code == 404 and "unknown turn" in res.json()["detail"]
    res = client.post(f"/v1/sessions/{uuid.uuid4().hex}/turns/{turn_id}/analyze")
    assert res.status_code == 404 and "unknown session" in res.json()["detail"]
    other = client.post("/v1/sessions", json={"world": light_world["key"]}).json()["session_id"]
    res = client.post(f"/v1/sessions/{other}/turns/{turn_id}/analyze")  # another session's
    assert res.status_code == 404
    assert client.post(f"/v1/sessions/{sid}/turns/{'x' * 65}/analyze").status_code == 422


def test_world_tick_now_for_every_world_or_one(client, celery_app, game_session, light_world):
    res = client.post("/v1/world/tick")
    assert res.status_code == 202, res.text
    out = res.json()
    assert out["world"] is None and out["task_id"].startswith("manual-world-")
    assert _message("simulate_world", out["task_id"])["kwargs"] == {}

    res = client.post(f"/v1/worlds/{light_world['key']}/tick", params={"idle_after_s": 600})
    assert res.status_code == 202, res.text
    out = res.json()
    assert (out["world"], out["world_id"]) == (light_world["key"], light_world["id"])
    sent = _message("simulate_world", out["task_id"])
    assert sent["task"] == "npc_memory.world_tick"
    assert sent["kwargs"] == {"world_id": light_world["id"], "idle_after_s": 600.0}

    assert client.post("/v1/worlds/no-such-world/tick").status_code == 404
    assert client.post("/v1/world/tick", params={"idle_after_s": 0}).status_code == 422

    # the tick itself: only that world's active sessions get a simulation
    r = nearline.get_redis()
    tick = celery_app.tasks["npc_memory.world_tick"]
    active = [sid for sid in nearline.active_sessions(r, 600)
              if nearline.get_session(r, sid)["world_id"] == light_world["id"]]
    assert game_session["id"] in active
    result = tick.apply(kwargs=sent["kwargs"], task_id=out["task_id"]).get()
    assert result["sessions"] == len(active)  # within the tick's budget or waiting for it
    assert result["enqueued"] + result["waiting"] + result["busy"] == len(active)
    simulations = [m for m in queued_messages(r, "simulate_world")
                   if m["task"] == "npc_memory.simulate_world"
                   and m["kwargs"]["tick_id"] == out["task_id"]]
    assert len(simulations) == result["enqueued"] >= 1
    assert all(nearline.get_session(r, m["kwargs"]["session_id"])["world_id"] == light_world["id"]
               for m in simulations)
    none = tick.apply(kwargs={"world_id": 10**9}, task_id=f"manual-world-{uuid.uuid4().hex}").get()
    assert none["sessions"] == 0 and none["enqueued"] == 0


def test_cli_analyze_turn_and_tick_world(client, game_session, light_world):
    from workers.cli import cli

    sid = game_session["id"]
    turn_id = _event(client, sid)["turn_id"]
    runner = CliRunner()
    res = runner.invoke(cli, ["analyze-turn", sid, turn_id])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["source"] == "redis" and _message("analysis", out["task_id"])["kwargs"]["turn_id"] == turn_id
    res = runner.invoke(cli, ["analyze-turn", sid, uuid.uuid4().hex])
    assert res.exit_code == 1 and "unknown turn" in res.stderr

    res = runner.invoke(cli, ["tick-world", "--world", light_world["key"]])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert _message("simulate_world", out["task_id"])["kwargs"] == {"world_id": light_world["id"]}
    res = runner.invoke(cli, ["tick-world", "--world", "no-such-world"])
    assert res.exit_code == 1 and "unknown world" in res.stderr


def test_broker_down_is_503(client, game_session, monkeypatch):
    from celery import Celery

    from workers.state import state

    sid = game_session["id"]
    turn_id = _event(client, sid)["turn_id"]
    dead = Celery("dead-broker", broker="redis://127.0.0.1:1/0",  # nothing listens on port 1
                  set_as_current=False)
    dead.conf.task_publish_retry = False
    monkeypatch.setattr(state, "celery", dead)
    res = client.post(f"/v1/sessions/{sid}/turns/{turn_id}/analyze")
    assert res.status_code == 503 and "broker unavailable" in res.json()["detail"]
    res = client.post("/v1/world/tick")
    assert res.status_code == 503 and "broker unavailable" in res.json()["detail"]
