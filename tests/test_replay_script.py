"""``npc-memory replay-script``: the shipped example script (``scripts/replay_saltmere.yaml``)
replayed over HTTP against a real dialogue server (uvicorn subprocess) on the bundled example
world, with the real llama.cpp model server answering the player turns; and the script format's
validation. No Celery worker runs: the pipeline's messages are left in the broker and dropped
at the end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest

from memory import nearline
from workers.replay_script import ReplayScript, load_replay_script
from npc_memory_client import NpcMemoryClient

from tests.procs import ROOT, WebServer, process_env

API_KEY = os.environ["API_KEYS"].split(",")[0]

SCRIPT = ROOT / "scripts" / "replay_saltmere.yaml"
QUEUES = ("analysis", "archive", "simulate_world", "note_update")


@pytest.fixture(scope="module")
def saltmere():
    """The bundled example world, imported with its base vectors."""
    from inference.embedding import get_embedder
    from memory.db import session_scope
    from memory.importers.examples import load_example
    from memory.vectors import embed_world_base
    from memory.worlds import import_world

    spec, _ = load_example()
    with session_scope() as s:
        world, _ = import_world(s, spec)
        embed_world_base(s, nearline.get_redis(), get_embedder(), world.id)
        return {"id": world.id, "key": world.key}


@pytest.fixture(scope="module")
def web(saltmere, llm_server):
    w = WebServer(process_env(), "replay-script-web.log")
    w.start()
    yield w
    w.stop()
    nearline.get_redis().delete(*QUEUES)  # never consumed here


def _replay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "workers.cli", "replay-script", *args], cwd=ROOT,
                          env=process_env(), capture_output=True, text=True, timeout=600)


def test_example_script_replays_turns_and_events(web, saltmere):
    script = load_replay_script(SCRIPT)
    proc = _replay(str(SCRIPT), "--server", web.url, "--api-key", API_KEY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert (out["world"], out["turns"], out["events"], out["duplicates"]) == ("saltmere", 2, 2, 0)
    steps = out["steps"]
    assert [s["kind"] for s in steps] == [s.kind for s in script.steps]
    assert [s["npc_id"] for s in steps] == [s.npc for s in script.steps]
    assert all(s["reply"] for s in steps if s["kind"] == "turn")  # the model answered
    assert steps[1]["reply"] == script.steps[1].npc_text and steps[3]["reply"] is None
    assert "Marta Vell" in proc.stderr and "replaying replay_saltmere.yaml" in proc.stderr
    # the recorded turns, in order, in the session's recent turns
    recent = nearline.recent_turns(nearline.get_redis(), out["session_id"], 10)
    assert [t["turn_id"] for t in recent] == [s["turn_id"] for s in steps]
    assert recent[1]["speaker"] == "dorin_haske"

    # again into the same session: the events are recorded once, the turns are played again
    again = _replay(str(SCRIPT), "--server", web.url, "--api-key", API_KEY,
                    "--session", out["session_id"])
    assert again.returncode == 0, again.stderr[-3000:]
    out2 = json.loads(again.stdout)
    assert (out2["turns"], out2["events"], out2["duplicates"]) == (2, 0, 2)
    assert [s["turn_id"] for s in out2["steps"] if s["kind"] == "event"] == [
        s["turn_id"] for s in steps if s["kind"] == "event"]

    # the maintenance routes through the client
    with NpcMemoryClient(web.url, API_KEY) as client:
        re = client.analyze_turn(out["session_id"], steps[0]["turn_id"])
        assert re.source == "redis" and ":re-" in re.task_id
        tick = client.tick_world("saltmere")
        assert tick.world == "saltmere" and tick.task_id == tick.tick_id


def test_replay_refusals_exit_1_with_the_reason(web, tmp_path):
    proc = _replay(str(SCRIPT), "--server", web.url, "--api-key", API_KEY, "--world", "nowhere")
    assert proc.returncode == 1 and "HTTP 404" in proc.stderr and "nowhere" in proc.stderr
    bad_npc = tmp_path / "bad_npc.json"
    bad_npc.write_text(json.dumps({"world": "saltmere", "steps": [
        {"kind": "event", "npc": f"nobody_{uuid.uuid4().hex[:6]}", "text": "Hello?"}]}))
    proc = _replay(str(bad_npc), "--server", web.url, "--api-key", API_KEY)
    assert proc.returncode == 1 and "step 0" in proc.stderr and "HTTP 404" in proc.stderr
    proc = _replay(str(SCRIPT), "--server", web.url, "--api-key", "wrong-key")
    assert proc.returncode == 1 and "HTTP 401" in proc.stderr


@pytest.mark.parametrize("doc, message", [
    ({"world": "w", "steps": []}, "steps"),
    ({"world": "w", "steps": [{"npc": "a", "text": "hi", "npc_text": "yo"}]}, "only steps with kind 'event'"),
    ({"world": "w", "steps": [{"npc": "a", "text": ""}]}, "text"),
    ({"world": "w", "steps": [{"npc": "a", "text": "hi", "mood": "x"}]}, "mood"),
    ({"steps": [{"npc": "a", "text": "hi"}]}, "world"),
])
def test_malformed_scripts_are_refused_naming_the_file(tmp_path, doc, message):
    path = tmp_path / "script.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=message) as exc:
        load_replay_script(path)
    assert str(path) in str(exc.value)
    proc = _replay(str(path))  # refused before any request
    assert proc.returncode == 1 and str(path) in proc.stderr


def test_yaml_json_and_session_scripts_load_alike(tmp_path):
    from memory.importers.examples import example_paths

    as_json = tmp_path / "s.json"
    as_json.write_text(load_replay_script(SCRIPT).model_dump_json())
    assert load_replay_script(as_json) == load_replay_script(SCRIPT)
    session = load_replay_script(example_paths()[1])  # npc-memory.session: player turns
    assert isinstance(session, ReplayScript) and session.world == "saltmere"
    assert session.steps and all(s.kind == "turn" for s in session.steps)
    bad = tmp_path / "s.yaml"
    bad.write_text("world: [unclosed")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_replay_script(bad)
