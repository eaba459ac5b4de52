"""The game-backend client (``npc_memory_client``) against the real dialogue server (a
uvicorn subprocess), the real broker and a real Celery worker subprocess; and the task
contract file against the payload models it is generated from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import select

from memory import nearline
from memory.db import session_scope
from models import LoreEntry, TaskRecord
from npc_memory_client import (ApiError, Event, Fork, InvalidPayload, NpcMemoryClient,
                               Reanalysis, Rollback, Session, TaskSender, Token, TurnReply,
                               Unauthorized, UnknownTask, WorldTick, load_contract, sse_events)
from npc_memory_client.contract import CONTRACT_PATH
from tests.broker import queued_messages
from tests.procs import ROOT, SubprocessWorker, process_env

API_KEY = os.environ["API_KEYS"].split(",")[0]


# --------------------------------------------------------------------------- the contract


def test_contract_file_matches_the_payload_models():
    """``npc-memory task-contract --out npc_memory_client/task_contract.json`` is up to date."""
    from contract.registry import task_contract

    on_disk = json.loads(CONTRACT_PATH.read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(task_contract())), (
        "task contract changed: run npc-memory task-contract --out "
        "npc_memory_client/task_contract.json")


def test_contract_names_every_task_with_the_model_it_validates_with():
    from contract.names import Queues, TaskName
    from contract.registry import TASKS
    from tasks.base import declare_task
    from workers.celery_app import app

    assert set(TASKS) == set(TaskName)
    assert {n for n in app.tasks if n.startswith("npc_memory.")} == {n.value for n in TASKS}
    contract = load_contract()
    assert contract.queues == tuple(q.value for q in Queues)
    for name, spec in TASKS.items():
        assert declare_task(name.value) is spec  # what the task validates its payload with
        assert contract.queue_of(name.value) == spec.queue.value


def test_contract_validation_reports_every_violation():
    contract = load_contract()
    good = {"session_id": "s1", "lore_entry_key": "baker_27", "update_summary": "Paid a debt.",
            "idempotency_key": "k1"}
    contract.validate("npc_memory.update_note", good)
    with pytest.raises(InvalidPayload) as err:
        contract.validate("npc_memory.update_note",
                          {**good, "update_summary": "", "cause": "magic", "mood": 1})
    text = "; ".join(err.value.errors)
    assert "update_summary" in text and "cause" in text and "mood" in text
    with pytest.raises(InvalidPayload, match="idempotency_key"):
        contract.validate("npc_memory.update_note", {k: v for k, v in good.items()
                                                      if k != "idempotency_key"})
    with pytest.raises(UnknownTask, match="npc_memory.update_note"):
        contract.validate("npc_memory.nothing", good)


def test_client_imports_no_worker_code():
    code = ("import sys, npc_memory_client\n"
            "ours = {'tasks', 'workers', 'memory', 'inference', 'models', 'settings',"
            " 'celeryconfig', 'prompts'}\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in ours)\n"
            "assert not bad, bad\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env=process_env())
    assert done.returncode == 0, done.stderr


# --------------------------------------------------------------------------- the HTTP models

# Each typed model of the client and the response it reads: (method, path, status) in the
# server's OpenAPI document. /tick, /search and /memory answer untyped objects: nothing to check.
_RESPONSES = [
    (Session, "post", "/v1/sessions", "201"),
    (TurnReply, "post", "/v1/sessions/{session_id}/turns", "200"),
    (Event, "post", "/v1/sessions/{session_id}/events", "201"),
    (Event, "post", "/v1/sessions/{session_id}/events", "200"),
    (Fork, "post", "/v1/sessions/{session_id}/fork", "201"),
    (Rollback, "post", "/v1/sessions/{session_id}/rollback", "200"),
    (Reanalysis, "post", "/v1/sessions/{session_id}/turns/{turn_id}/analyze", "202"),
    (WorldTick, "post", "/v1/world/tick", "202"),
    (WorldTick, "post", "/v1/worlds/{world_key}/tick", "202"),
]


@pytest.mark.pure
def test_client_models_declare_every_field_of_the_servers_responses():
    """Every field of each response schema of the server's ``/openapi.json`` is declared on the
    client model that reads it (the models ignore unknown fields, so a missing one would
    vanish silently); the streamed turn's ``done`` event too."""
    from workers.api.schemas import TurnStreamDone
    from workers.web import app

    spec = app.openapi()
    missing = {}
    for model, method, path, status in _RESPONSES:
        schema = spec["paths"][path][method]["responses"][status]["content"]["application/json"]
        ref = schema["schema"]["$ref"]
        props = spec["components"]["schemas"][ref.rsplit("/", 1)[-1]]["properties"]
        if lacking := sorted(set(props) - set(model.model_fields)):
            missing[f"{model.__name__} ({method.upper()} {path} {status})"] = lacking
    streamed = sorted(set(TurnStreamDone.model_json_schema()["properties"])
                      - set(TurnReply.model_fields))
    if streamed:
        missing["TurnReply (streamed done event)"] = streamed
    assert missing == {}


# --------------------------------------------------------------------------- against the server


@pytest.fixture()
def npc(dialogue_server):
    """The typed client of conftest's ``dialogue_server`` (serving LIGHT's possibly-vampires)."""
    with NpcMemoryClient(dialogue_server, API_KEY, timeout=180) as c:
        yield c


def test_session_turn_event_tick(npc, light_world):
    session = npc.open_session(light_world["key"], player_name="Ann")
    assert session.world == light_world["key"]
    assert "baker_27" in {c.npc_id for c in session.characters}

    reply = npc.turn(session.session_id, "baker_27", "Is the bread fresh today?")
    assert reply.seq == 1 and reply.npc_text.strip() and reply.npc_id == "baker_27"

    event = npc.post_event(session.session_id, "baker_27", "The smith waves.",
                           speaker="the smith", event_id="ev-1")
    assert event.seq == 2 and not event.duplicate and event.speaker == "the smith"
    again = npc.post_event(session.session_id, "baker_27", "The smith waves.",
                           speaker="the smith", event_id="ev-1")
    assert again.duplicate and again.turn_id == event.turn_id

    tick = npc.tick(session.session_id)
    assert tick.tick_id.startswith("manual-") and tick.task_id
    assert npc.search(session.session_id, "bread", k=2)
    ready = npc.ready()  # the model server may be busy with the test worker's calls: not asserted
    assert set(ready["checks"]) == {"broker", "redis", "database", "model_server", "vector_index"}
    assert all(ready["checks"][k]["ok"] for k in ("broker", "redis", "database", "vector_index"))


def test_fork_and_rollback(npc, light_world):
    session = npc.open_session(light_world["key"], player_name="Ann")
    sid = session.session_id
    first = npc.post_event(sid, "baker_27", "Ann buys a loaf.", event_id="slot-1")
    second = npc.post_event(sid, "baker_27", "Ann steals a pie.", event_id="slot-2")

    slot = npc.fork(sid, first.turn_id)
    assert slot.forked_from == sid and slot.session_id != sid
    assert slot.at_seq == first.seq and slot.counts["turns"] == 1

    undone = npc.rollback(sid, first.turn_id)
    assert undone.turn_ids == [second.turn_id] and undone.epoch == 1
    assert undone.counts["turns"] == 1
    # the undone event can be posted again: it is a new turn with the next number
    again = npc.post_event(sid, "baker_27", "Ann steals a pie.", event_id="slot-2")
    assert not again.duplicate and again.seq > second.seq and again.turn_id != second.turn_id
    assert npc.post_event(sid, "baker_27", "Ann steals a pie.", event_id="slot-2").duplicate
    with pytest.raises(ApiError) as err:
        npc.rollback(sid, second.turn_id)
    assert err.value.status == 404


def test_turn_stream_yields_tokens_then_the_reply(npc, light_world):
    session = npc.open_session(light_world["key"])
    events = list(npc.turn_stream(session.session_id, "baker_27", "What do you bake?"))
    *tokens, reply = events
    assert isinstance(reply, TurnReply) and all(isinstance(t, Token) for t in tokens)
    assert len(tokens) >= 2
    assert "".join(t.text for t in tokens) == reply.npc_text
    assert reply.seq == 1 and reply.ttft_ms is not None and reply.ttft_ms <= reply.latency_ms
    recorded = nearline.recent_turns(nearline.get_redis(), session.session_id, 10)
    assert [(t["turn_id"], t["npc_text"]) for t in recorded] == [(reply.turn_id, reply.npc_text)]
    assert npc.turn(session.session_id, "baker_27", "Thanks.").ttft_ms is None


def test_turn_stream_errors_are_typed(npc, light_world):
    with pytest.raises(ApiError) as err:
        list(npc.turn_stream(uuid.uuid4().hex, "baker_27", "Hello"))
    assert err.value.status == 404 and "session" in err.value.detail
    session = npc.open_session(light_world["key"])
    with pytest.raises(ApiError) as err:
        list(npc.turn_stream(session.session_id, "baker_27", ""))
    assert err.value.status == 422


@pytest.mark.parametrize("lines, events", [
    (["event: token", 'data: {"text": "Hi"}', "", "event: done", "data: {}", ""],
     [("token", '{"text": "Hi"}'), ("done", "{}")]),
    ([": ping - 2026-12-01", "", "data:a", "data:  b", "", "event: x", ""],
     [("message", "a\n b")]),  # comment, no-space value, joined data, data-less event
    (["event: token", "data: {}", "id: 7", "retry: 10", "", "event: done", "data: cut"],
     [("token", "{}")]),  # an event not ended by a blank line is dropped
    (["data", "", "event", "data: y", ""], [("message", ""), ("message", "y")]),
], ids=["two", "comment-and-multiline", "unterminated", "bare-fields"])
def test_sse_parser(lines, events):
    assert list(sse_events(lines)) == events


def test_errors_are_typed(npc, dialogue_server, light_world):
    with pytest.raises(ApiError) as err:
        npc.open_session("no-such-world")
    assert err.value.status == 404 and "no-such-world" in err.value.detail
    with pytest.raises(ApiError) as err:
        npc.turn(uuid.uuid4().hex, "baker_27", "Hello")
    assert err.value.status == 404
    session = npc.open_session(light_world["key"])
    with pytest.raises(ApiError) as err:
        npc.turn(session.session_id, "baker_27", "")
    assert err.value.status == 422
    with NpcMemoryClient(dialogue_server, "not-a-key") as wrong, pytest.raises(Unauthorized) as err:
        wrong.open_session(light_world["key"])
    assert err.value.status == 401 and err.value.detail == "invalid API key"
    with NpcMemoryClient(dialogue_server, None) as anonymous, pytest.raises(Unauthorized):
        anonymous.tick(session.session_id)


# --------------------------------------------------------------------------- tasks by name


def test_enqueue_validates_then_a_worker_runs_it(light_world, wait_for):
    """A valid payload reaches a real worker through the broker (the ledger shows it
    succeeded); an invalid one is refused before anything is sent."""
    broker_url = os.environ["REDIS_URL"]
    with session_scope() as s:
        entry_id = s.scalar(select(LoreEntry.id).where(LoreEntry.world_id == light_world["id"],
                                                       LoreEntry.key == "baker_27"))
    worker = SubprocessWorker(process_env(), "embed", "client-embedder.log")
    worker.start()
    try:
        with TaskSender(broker_url) as sender:
            task_id = f"client-{uuid.uuid4().hex}"
            assert sender.enqueue("npc_memory.embed", {"lore_entry_id": entry_id},
                                  task_id=task_id) == task_id

            def done():
                with session_scope() as s:
                    rec = s.scalar(select(TaskRecord).where(TaskRecord.task_id == task_id))
                    return rec is not None and rec.status == "succeeded" and rec

            rec = wait_for(done, timeout=120)
            assert rec.queue == "embed" and rec.task_name == "npc_memory.embed"

            before = len(queued_messages(nearline.get_redis(), "note_update"))
            with pytest.raises(InvalidPayload, match="lore_entry_key"):
                sender.enqueue("npc_memory.update_note", {"session_id": "s1",
                                                          "update_summary": "x",
                                                          "idempotency_key": "k"})
            with pytest.raises(UnknownTask):
                sender.enqueue("npc_memory.embedd", {"lore_entry_id": entry_id})
            assert len(queued_messages(nearline.get_redis(), "note_update")) == before
    finally:
        worker.stop()
