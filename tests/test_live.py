"""Live use of the embedded stack: ``npc-memory up`` stops cleanly, ``npc-memory chat`` works in
a terminal, pipeline model calls yield to dialogue calls on a shared server, and the model
servers' thread rule."""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import psutil
import pytest

from memory import nearline
from tests.broker import pipeline_quiet
from tests.procs import ROOT, WebServer, process_env

API_KEY = os.environ["API_KEYS"].split(",")[0]


# ----------------------------------------------------------------------------- thread rule


def test_llm_threads_leave_a_core_and_never_drop_below_one():
    from workers.embedded import llm_threads

    assert llm_threads(2, cores=2) == 1
    assert llm_threads(1, cores=2) == 1
    assert llm_threads(2, cores=8) == 3
    assert llm_threads(1, cores=8) == 7
    assert llm_threads(2, cores=1) == 1


def test_dialogue_gets_its_own_server_only_on_four_cores_or_more():
    from workers.embedded import split_dialogue_server

    assert not split_dialogue_server(2) and not split_dialogue_server(3)
    assert split_dialogue_server(4) and split_dialogue_server(16)


def test_model_server_command_keeps_a_prompt_cache_and_no_per_token_logits():
    from workers.embedded import llm_argv

    argv = llm_argv(8089, "m", 2048, 1, prompt_cache_mb=64)
    flags = dict(zip(argv[3::2], argv[4::2]))
    assert flags["--cache"] == "true" and flags["--cache_type"] == "ram"
    assert flags["--cache_size"] == str(64 * 1024 * 1024) and flags["--logits_all"] == "false"
    assert "--cache" not in llm_argv(8089, "m", 2048, 1, prompt_cache_mb=0)


def test_embedded_dialogue_defaults_never_override_the_environment():
    from workers.stack import EMBEDDED_DIALOGUE_DEFAULTS, embedded_dialogue_env

    assert embedded_dialogue_env({}) == EMBEDDED_DIALOGUE_DEFAULTS
    got = embedded_dialogue_env({"RECENT_TURNS": "12", "DIALOGUE_MAX_TOKENS": "200"})
    assert "RECENT_TURNS" not in got and "DIALOGUE_MAX_TOKENS" not in got
    assert got["RETRIEVAL_PROMPT_CHARS"] == "800"


def test_up_names_the_dialogue_settings_the_embedded_stack_applied(tmp_path):
    from workers.stack import EmbeddedStack, StackOptions
    from workers.up import connection_text

    stack = EmbeddedStack(StackOptions(data_dir=tmp_path))
    stack.base_url, stack.api_key = "http://127.0.0.1:1", "k"
    stack.dialogue_defaults = {"RECENT_TURNS": "6", "DIALOGUE_MAX_TOKENS": "60"}
    assert "RECENT_TURNS=6 DIALOGUE_MAX_TOKENS=60" in connection_text(stack, None)
    stack.dialogue_defaults = {}  # external model server, or all set by the environment
    assert "dialogue:" not in connection_text(stack, None)


def test_model_server_resumes_a_prompt_head_from_its_cache_after_another_prompt(llm_server):
    """The dialogue's stable head is evaluated once: after an unrelated call replaced the
    server's context, a prompt with the same head restarts from the cached state."""
    from bench.real_model import prompt_cache_use

    tag = uuid.uuid4().hex[:8]
    head = (f"{tag}. You are Marta Vell, the harbour master of Saltmere. " * 6).strip()

    def call(system: str, user: str) -> None:
        httpx.post(f"{llm_server}/chat/completions", timeout=120, json={
            "model": "smollm2-135m-instruct", "max_tokens": 4, "temperature": 0.0,
            "messages": [{"role": "system", "content": system},
                         {"role": "user", "content": user}]}).raise_for_status()

    log = Path(os.environ["DATA_DIR"]) / "llm.log"  # conftest's llm_server writes it there
    call(head, "Any news from the harbour?")
    call(f"Unrelated {uuid.uuid4().hex}: summarise the weather in one word.", "Go.")
    mark = len(log.read_text(errors="replace"))
    call(head, "Who owns the old lighthouse?")
    used = prompt_cache_use(log.read_text(errors="replace")[mark:])
    assert used["prefix_hits"] == 1 and used["tokens_reused"] >= 60, used


# ----------------------------------------------------------------------------- priority rule


def _shared_server_settings(monkeypatch, url: str, priority: str = "auto", backend="llamacpp"):
    from settings import get_settings

    for role in ("GENERATION", "ANALYSIS", "MAINTENANCE"):
        monkeypatch.delenv(f"{role}_BASE_URL", raising=False)
    monkeypatch.setenv("LLM_BASE_URL", url)
    monkeypatch.setenv("LLM_BACKEND", backend)
    monkeypatch.setenv("DIALOGUE_PRIORITY", priority)
    get_settings.cache_clear()


@pytest.fixture()
def settings_env(monkeypatch):
    from settings import get_settings

    yield monkeypatch
    get_settings.cache_clear()


def test_rule_is_on_only_for_a_shared_llamacpp_server(settings_env):
    from inference import priority

    url = "http://127.0.0.1:9/v1"
    _shared_server_settings(settings_env, url)
    assert priority.active("generation", url) and priority.active("analysis", url)
    settings_env.setenv("GENERATION_BASE_URL", "http://127.0.0.1:10/v1")  # own dialogue server
    from settings import get_settings

    get_settings.cache_clear()
    assert not priority.active("analysis", url)
    assert not priority.active("generation", "http://127.0.0.1:10/v1")
    _shared_server_settings(settings_env, url, backend="vllm")  # continuous batching
    assert not priority.active("analysis", url) and not priority.active("generation", url)
    _shared_server_settings(settings_env, url, priority="on", backend="vllm")
    assert priority.active("analysis", url)
    _shared_server_settings(settings_env, url, priority="off")
    assert not priority.active("generation", url)


def test_pipeline_call_waits_for_the_dialogue_call_then_goes(settings_env):
    from inference import priority

    url = f"http://127.0.0.1:9/v1/{time.time_ns()}"
    _shared_server_settings(settings_env, url)
    r = nearline.get_redis()
    released = threading.Event()
    order: list[str] = []

    def dialogue():
        with priority.dialogue_slot(url, r):
            order.append("dialogue started")
            released.wait(10)
            order.append("dialogue done")

    t = threading.Thread(target=dialogue)
    t.start()
    while not order:
        time.sleep(0.01)
    assert priority.dialogue_in_flight(url, r) == 1
    threading.Timer(0.3, released.set).start()
    priority.yield_to_dialogue(url, r, max_wait_s=30)
    order.append("pipeline call")
    t.join()
    assert order == ["dialogue started", "dialogue done", "pipeline call"]
    assert priority.dialogue_in_flight(url, r) == 0


def test_pipeline_never_starves_behind_endless_dialogue(settings_env):
    from inference import priority

    url = f"http://127.0.0.1:9/v1/{time.time_ns()}"
    _shared_server_settings(settings_env, url)
    r = nearline.get_redis()
    with priority.dialogue_slot(url, r):
        waited = priority.yield_to_dialogue(url, r, max_wait_s=0.2)
        assert priority.dialogue_in_flight(url, r) == 1  # still busy, yet the call went ahead
    assert waited >= 0.2


def test_pipeline_waits_out_the_grace_period_after_a_dialogue_call(settings_env):
    """A pipeline call arriving just after a dialogue call ended waits for
    DIALOGUE_PRIORITY_GRACE_S, then goes; with 0 it goes at once."""
    from inference import priority
    from settings import get_settings

    url = f"http://127.0.0.1:9/v1/{time.time_ns()}"
    _shared_server_settings(settings_env, url)
    settings_env.setenv("DIALOGUE_PRIORITY_GRACE_S", "0.5")
    get_settings.cache_clear()
    r = nearline.get_redis()
    with priority.dialogue_slot(url, r):
        pass
    assert priority.dialogue_in_flight(url, r) == 0 and priority.dialogue_busy(url, r)
    waited = priority.yield_to_dialogue(url, r, max_wait_s=30)
    assert 0.3 <= waited < 10 and not priority.dialogue_busy(url, r)

    settings_env.setenv("DIALOGUE_PRIORITY_GRACE_S", "0")
    get_settings.cache_clear()
    url = f"http://127.0.0.1:9/v1/{time.time_ns()}"
    with priority.dialogue_slot(url, r):
        assert priority.dialogue_busy(url, r)
    assert not priority.dialogue_busy(url, r)


def test_a_dead_dialogue_process_cannot_hold_the_pipeline(settings_env):
    from inference import priority

    url = f"http://127.0.0.1:9/v1/{time.time_ns()}"
    _shared_server_settings(settings_env, url)
    settings_env.setenv("LLM_TIMEOUT_S", "1")
    from settings import get_settings

    get_settings.cache_clear()
    r = nearline.get_redis()
    slot = priority.dialogue_slot(url, r)
    slot.__enter__()  # never left: the process "died" holding it
    assert priority.dialogue_in_flight(url, r) == 1
    time.sleep(2.1)
    assert priority.dialogue_in_flight(url, r) == 0


def test_model_calls_take_and_respect_slots_on_a_shared_server(settings_env, llm_server):
    """A real llama.cpp call of the generation role holds a slot while it runs."""
    from inference import priority
    from inference.llm import ChatModel

    _shared_server_settings(settings_env, llm_server)
    r = nearline.get_redis()
    seen = []

    def watch():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not seen:
            if priority.dialogue_in_flight(llm_server, r):
                seen.append(True)
            time.sleep(0.005)

    t = threading.Thread(target=watch)
    t.start()
    done = ChatModel("generation").complete([{"role": "user", "content": "Say hello."}],
                                            max_tokens=24)
    t.join()
    assert done.text and seen == [True]
    assert priority.dialogue_in_flight(llm_server, r) == 0


# ----------------------------------------------------------------------------- npc-memory up


def _embedded_env(tmp_path, llm_url: str) -> dict[str, str]:
    env = process_env(DATA_DIR=str(tmp_path), LLM_BASE_URL=llm_url, LOG_LEVEL="INFO")
    for var in ("REDIS_URL", "DATABASE_URL", "API_KEYS"):
        env.pop(var, None)  # the embedded Redis and SQLite, a key made by `up`
    return env


def _read_until(proc, pattern: str, timeout: float, out: list[str]) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        out.append(line)
        found = re.search(pattern, "".join(out))
        if found:
            return found
    pytest.fail(f"{pattern!r} not printed within {timeout} s:\n{''.join(out)}")


def test_up_serves_then_stops_every_process_on_sigterm(tmp_path, llm_server):
    data = tmp_path / "stack"
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "up", "--port", "0", "--data-dir", str(data)],
        cwd=ROOT, env=_embedded_env(tmp_path, llm_server), stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out: list[str] = []
    try:
        _read_until(proc, r"Ctrl-C stops everything", 240, out)
        text = "".join(out)
        url = re.search(r"dialogue server: (\S+)", text).group(1)
        key = re.search(r"API key:\s+(\S+)", text).group(1)
        assert f"{url}/docs" in text and "curl -s -X POST" in text
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.get(f"{url}/openapi.json", timeout=10).status_code == 200
        opened = httpx.post(f"{url}/v1/sessions", json={"world": "saltmere"}, headers=headers,
                            timeout=30)
        assert opened.status_code == 201, opened.text  # the built-in world was imported
        assert httpx.post(f"{url}/v1/sessions", json={"world": "saltmere"}, timeout=30
                          ).status_code == 401
        descendants = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in descendants)
        for part in ("uvicorn", "worker", "embedder", "archiver", "beat"):
            assert part in names
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=90)
        out.append(rest)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, "".join(out)
    assert "stopped" in "".join(out)
    alive = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], [p.cmdline() for p in alive]
    logs = {p.name: p.read_text(errors="replace") for p in (data / "logs").glob("*.log")}
    assert {"web.log", "worker.log", "beat.log"} <= set(logs)
    for name, text in logs.items():  # an expected shutdown is not an error
        assert "WorkerLostError" not in text, name
        assert '"level": "ERROR"' not in text and '"levelname": "ERROR"' not in text, name


# ----------------------------------------------------------------------------- npc-memory chat


@pytest.fixture(scope="module")
def saltmere_web(llm_server):
    from inference.embedding import get_embedder
    from memory.db import session_scope
    from memory.importers.examples import load_example
    from memory.vectors import embed_world_base
    from memory.worlds import import_world

    spec, _ = load_example()
    with session_scope() as s:
        world, _ = import_world(s, spec)
        embed_world_base(s, nearline.get_redis(), get_embedder(), world.id)
    web = WebServer(process_env(), "chat-web.log")
    web.start()
    yield web.url
    web.stop()
    nearline.get_redis().delete("analysis", "archive", "simulate_world")


def _pty_read(fd: int, until: str, timeout: float, buf: list[str]) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 4096).decode(errors="replace")
            except OSError:
                break
            buf.append(chunk)
            if until in "".join(buf):
                return "".join(buf)
    pytest.fail(f"{until!r} not shown within {timeout} s:\n{''.join(buf)}")


def test_chat_in_a_terminal(saltmere_web):
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "workers.cli", "chat", "--url", saltmere_web, "--api-key", API_KEY,
         "--world", "saltmere", "--npc", "marta_vell"],
        cwd=ROOT, env=process_env(), stdin=slave, stdout=slave, stderr=slave, close_fds=True)
    os.close(slave)
    buf: list[str] = []
    try:
        _pty_read(master, "you> ", 60, buf)
        assert "talking to Marta Vell" in "".join(buf)
        os.write(master, b"I left a jar of heather honey for you, Marta.\n")
        screen = _pty_read(master, "memories used", 180, buf)
        assert re.search(r"Marta Vell: \S", screen)
        os.write(master, b"/evidence\n")
        screen = _pty_read(master, "retrieved for 'I left a jar", 30, buf)
        os.write(master, b"/who\n")
        screen = _pty_read(master, "wenna_pike", 30, buf)
        os.write(master, b"/note\n")
        screen = _pty_read(master, "note of Marta Vell", 30, buf)
        os.write(master, b"/search harbour\n")
        screen = _pty_read(master, "[document]", 30, buf)
        os.write(master, b"/nonsense\n")
        screen = _pty_read(master, "unknown command /nonsense", 30, buf)
        os.write(master, b"/quit\n")
        screen = _pty_read(master, "bye", 30, buf)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert "Traceback" not in screen


def test_chat_refuses_an_unknown_npc(saltmere_web):
    done = subprocess.run(
        [sys.executable, "-m", "workers.cli", "chat", "--url", saltmere_web, "--api-key", API_KEY,
         "--world", "saltmere", "--npc", "nobody"],
        cwd=ROOT, env=process_env(), input="", capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no character 'nobody'" in done.stderr


LONG_TOKENS = 600
LONG_OUTPUT = {"type": "object", "required": ["words"], "properties": {
    "words": {"type": "array", "items": {"type": "string"}, "minItems": 300}}}
"""A pipeline output the grammar keeps going for all of ``LONG_TOKENS`` (at least 300 quoted
words): however fast the machine, the model cannot end it early (an instruction such as
"count to 400" is answered in a few tokens under the pipeline's repeat penalty)."""


def _dialogue_during_pipeline(settings_env, url: str, app, **env: str) -> tuple[list[str], dict]:
    """A long pipeline generation on the shared server, and a short dialogue call sent 1.5 s
    into it; returns the order the two finished in and their completions. No worker task
    uses the server meanwhile (an earlier module's analysis queued at the server ahead of the
    dialogue would decide the order instead)."""
    with pipeline_quiet(app, nearline.get_redis()):
        return _race(settings_env, url, **env)


def _race(settings_env, url: str, **env: str) -> tuple[list[str], dict]:
    from inference.llm import ChatModel
    from settings import get_settings

    _shared_server_settings(settings_env, url)
    for k, v in env.items():
        settings_env.setenv(k, v)
    get_settings.cache_clear()
    finished: list[str] = []
    out: dict = {}

    def pipeline():
        out["pipeline"] = ChatModel("analysis").complete(
            [{"role": "user", "content": "List many words."}], max_tokens=LONG_TOKENS,
            temperature=0.0, json_schema=LONG_OUTPUT)
        finished.append("pipeline")

    t = threading.Thread(target=pipeline)
    t.start()
    time.sleep(1.0)  # the pipeline's generation is under way: it cannot end before 600 tokens
    out["dialogue"] = ChatModel("generation").complete(
        [{"role": "user", "content": "Say hello."}], max_tokens=8, temperature=0.0)
    finished.append("dialogue")
    t.join(300)
    return finished, out


def test_a_dialogue_request_cuts_a_pipeline_generation_short(settings_env, llm_server, celery_app):
    """On the shared llama.cpp server a long pipeline generation is streamed; a dialogue call
    arriving mid-generation gets the model at once (the pipeline call closes its stream),
    the pipeline call is sent again after it and still returns a whole completion."""
    from inference import llm

    before = llm.preemptions
    finished, out = _dialogue_during_pipeline(settings_env, llm_server, celery_app,
                                              DIALOGUE_PRIORITY_GRACE_S="0",
                                              DIALOGUE_PRIORITY_MAX_WAIT_S="60")
    assert finished == ["dialogue", "pipeline"]
    assert llm.preemptions > before  # the pipeline call was cut and sent again
    done = out["pipeline"]
    assert done.finish_reason in ("stop", "length") and done.text.strip()
    assert out["dialogue"].text.strip()


def test_preemption_off_runs_the_pipeline_call_to_its_end_first(settings_env, llm_server,
                                                               celery_app):
    finished, _ = _dialogue_during_pipeline(settings_env, llm_server, celery_app,
                                            DIALOGUE_PREEMPT_MAX="0")
    assert finished == ["pipeline", "dialogue"]  # the dialogue waited for the whole generation
