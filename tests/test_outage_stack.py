"""The whole stack through a Redis outage, a killed worker, and the production supervisor.

- The Procfile's processes (web, worker, embedder, archiver, beat, flower; the model server is
  the test run's llama.cpp server) run as written in the Procfile on a private Redis with its
  append-only file. Redis is killed for ``OUTAGE_TEST_SECONDS`` (60 s by default; CI may
  shorten it) and started again: every process is still running, the dialogue server serves
  turns again, and every turn is archived and analysed (no turn, no task lost).
- A worker is killed with ``kill -9`` while it runs a task: the task shows ``running`` in the
  ledger, and the messages it held are given back by the next worker's start-up and every task
  completes within minutes (not after the visibility timeout).
- supervisord, with a configuration written from the Procfile by ``workers.procfile`` (as
  ``deploy/supervisord.conf`` is), restarts a process that dies without touching the others.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import redis as redis_py

from contract.send import turn_task_id
from tests.procs import (LINES, ROOT, PrivateRedis, SubprocessWorker, WebServer, _Subprocess,
                         _wait_port, api_headers, archived, free_port, ledger, open_session,
                         play_lines, play_turn, process_env)
from workers.procfile import read_procfile, shell_command, supervisord_conf

pytestmark = pytest.mark.slow

OUTAGE_S = float(os.environ.get("OUTAGE_TEST_SECONDS", "60"))
BIN = str(Path(sys.executable).parent)
TERMINAL = ("succeeded", "dead")




def _analysed(turn_ids: list[str]) -> bool:
    ids = [turn_task_id("npc_memory.analyze_turn", t) for t in turn_ids]
    rows = ledger(ids)
    return len(rows) == len(ids) and all(r.status in TERMINAL for r in rows.values())




def _stack_env(broker: PrivateRedis, **overrides: str) -> dict[str, str]:
    return process_env(REDIS_URL=broker.url, PATH=f"{BIN}:{os.environ.get('PATH', '')}",
                       WORKER_CONCURRENCY="1", ARCHIVE_PREFETCH="20", **overrides)


def test_stack_rides_out_a_redis_outage(light_world, llm_server, wait_for):
    """Every Procfile process survives ``OUTAGE_TEST_SECONDS`` without Redis; afterwards turns
    are served again and every turn (before, during the outage's 503s, after) is archived and
    analysed."""
    broker = PrivateRedis(persist=True)
    broker.start()
    web_port, flower_port = free_port(), free_port()
    env = _stack_env(broker, PORT=str(web_port), FLOWER_PORT=str(flower_port),
                     FLOWER_BASIC_AUTH="ops:outage-test", RECONCILE_SECONDS="10")
    procs: dict[str, _Subprocess] = {}
    r = redis_py.Redis.from_url(broker.url)
    try:
        for name, command in read_procfile().items():
            if name == "llm":  # the test run's model server (LLM_BASE_URL) stands in for it
                continue
            procs[name] = _Subprocess(env, f"stack-outage-{name}.log")
            procs[name]._spawn(["/bin/sh", "-c", shell_command(command)])
        web_url = f"http://127.0.0.1:{web_port}"
        procs["web"].wait_http(f"{web_url}/healthz", 120, "web")
        for name in ("worker", "embedder", "archiver"):
            wait_for(lambda n=name: b" ready." in procs[n].log_path.read_bytes(), timeout=120)
        wait_for(lambda: "acquired lock" in procs["beat"].tail(20000), timeout=60)
        _wait_port(flower_port, 60, "flower", procs["flower"].proc)

        client = httpx.Client(base_url=web_url, timeout=180, headers=api_headers())
        sid, npc = open_session(client, light_world["key"])
        turn_ids = play_lines(client, sid, npc, LINES[:2])

        broker.stop()  # kill -9, with the turns' tasks queued or in flight
        down_since = time.monotonic()
        resp = play_turn(client, sid, npc, LINES[2])
        assert resp.status_code == 503, resp.text
        while time.monotonic() - down_since < OUTAGE_S:
            dead = {n: p.proc.returncode for n, p in procs.items() if p.proc.poll() is not None}
            assert not dead, (dead, {n: procs[n].tail() for n in dead})
            time.sleep(1)
        broker.start()

        def served() -> bool:
            resp = play_turn(client, sid, npc, LINES[2])
            if resp.status_code == 200:
                turn_ids.append(resp.json()["turn_id"])
            return resp.status_code == 200

        wait_for(served, timeout=60, interval=2)

        wait_for(lambda: archived(sid) == set(turn_ids), timeout=180)
        wait_for(lambda: _analysed(turn_ids), timeout=240)
        for rec in ledger([turn_task_id("npc_memory.analyze_turn", t) for t in turn_ids]).values():
            assert rec.status == "succeeded" or "InvalidModelOutput" in (rec.error or ""), rec.error
        dead = {n: p.proc.returncode for n, p in procs.items() if p.proc.poll() is not None}
        assert not dead, (dead, {n: procs[n].tail() for n in dead})
        assert httpx.get(f"http://127.0.0.1:{flower_port}/healthcheck", timeout=10).status_code \
            == 200
        assert r.ping()
    finally:
        for p in procs.values():
            p.stop()
        broker.stop()


def test_beat_survives_redis_restart_and_its_lock_expiring(wait_for):
    """The Procfile's ``beat`` alone: Redis is killed for longer than the beat lock's timeout
    and started again; beat is still running, takes its lock again and keeps sending the
    reconcile task."""
    broker = PrivateRedis(persist=True)
    broker.start()
    env = _stack_env(broker, RECONCILE_SECONDS="1", BEAT_LOCK_TIMEOUT_S="6")
    beat = _Subprocess(env, "beat-outage.log")
    r = redis_py.Redis.from_url(broker.url)
    try:
        beat._spawn(["/bin/sh", "-c", shell_command(read_procfile()["beat"])])
        wait_for(lambda: r.llen("archive") >= 1, timeout=60)
        broker.stop()
        time.sleep(min(OUTAGE_S, 10))  # the lock (6 s) expires meanwhile
        assert beat.proc.poll() is None, beat.tail()
        broker.start()
        r.delete("archive")
        wait_for(lambda: r.llen("archive") >= 1, timeout=90)
        assert beat.proc.poll() is None, beat.tail()
        assert "lock taken again" in beat.tail(50000)
    finally:
        beat.stop()
        broker.stop()


def test_killed_worker_tasks_recovered_within_minutes(light_world, llm_server, wait_for):
    """``kill -9`` of a worker (main process and child) running an analysis: its ledger row
    says ``running``; a new worker gives back the messages nobody holds at start-up and every
    analysis completes, long before the visibility timeout would have."""
    broker = PrivateRedis()
    broker.start()
    env = _stack_env(broker, UNACKED_RESTORE_AFTER_S="3", BROKER_VISIBILITY_TIMEOUT_S="600")
    web = WebServer(env, "killed-worker-web.log")
    first = SubprocessWorker(env, "analysis", "killed-worker-1.log")
    second = SubprocessWorker(env, "analysis", "killed-worker-2.log")
    r = redis_py.Redis.from_url(broker.url)
    try:
        web.start()
        first.start()
        client = httpx.Client(base_url=web.url, timeout=180, headers=api_headers())
        sid, npc = open_session(client, light_world["key"])
        turn_ids = play_lines(client, sid, npc, LINES[:3])
        ids = [turn_task_id("npc_memory.analyze_turn", t) for t in turn_ids]

        def running() -> list[str]:
            return [t for t, rec in ledger(ids).items() if rec.status == "running"]

        wait_for(lambda: running(), timeout=120, interval=0.1)
        victims = [p for p in [psutil.Process(first.proc.pid), *first.children()]]
        for p in victims:
            p.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        held = r.hlen("unacked")
        assert held >= 1  # the killed worker's messages wait in Redis
        in_flight = running()
        assert in_flight  # visible in the ledger as running

        started = time.monotonic()
        second.start()
        wait_for(lambda: _analysed(turn_ids), timeout=240)
        recovered_in = time.monotonic() - started
        assert recovered_in < 600  # not the visibility timeout
        rows = ledger(ids)
        for t in in_flight:
            assert rows[t].attempts >= 2, rows[t].attempts  # delivered again after the kill
        assert "restored" in second.tail(50000)
    finally:
        second.stop()
        first.stop()
        web.stop()
        broker.stop()


@pytest.mark.skipif(shutil.which("supervisord", path=BIN) is None,
                    reason="supervisor not installed")
def test_supervisord_restarts_a_dead_process_alone(tmp_path, wait_for):
    """supervisord running Procfile processes (``beat`` and ``archiver``, configured by
    ``workers.procfile.supervisord_conf`` as ``deploy/supervisord.conf`` is): ``kill -9`` of
    beat gets a new beat, while the archiver keeps its process id."""
    broker = PrivateRedis()
    broker.start()
    procfile = read_procfile()
    conf = supervisord_conf({k: procfile[k] for k in ("beat", "archiver")})
    sock = tmp_path / "supervisor.sock"
    conf = (conf.replace("/tmp/npc-memory-supervisord.sock", str(sock))
            .replace("/tmp/npc-memory-supervisord.pid", str(tmp_path / "supervisord.pid"))
            .replace("stdout_logfile=/dev/stdout", f"stdout_logfile={tmp_path}/%(program_name)s.log"))
    (tmp_path / "deploy").mkdir()
    conf_path = tmp_path / "deploy" / "supervisord.conf"
    conf_path.write_text(conf.replace("directory=%(here)s/..", f"directory={ROOT}"))
    env = _stack_env(broker)
    sup = _Subprocess(env, "supervisord.log")
    ctl = [f"{BIN}/supervisorctl", "-c", str(conf_path)]

    def pids() -> dict[str, int]:
        out = subprocess.run([*ctl, "status"], capture_output=True, text=True, env=env).stdout
        found = {}
        for line in out.splitlines():
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "RUNNING":
                found[parts[0].split(":")[0]] = int(parts[3].rstrip(","))
        return found

    try:
        sup._spawn([f"{BIN}/supervisord", "-c", str(conf_path)])
        wait_for(lambda: set(pids()) == {"beat", "archiver"}, timeout=60, interval=0.5)
        before = pids()
        os.kill(before["beat"], signal.SIGKILL)
        wait_for(lambda: pids().get("beat") not in (None, before["beat"]), timeout=60,
                 interval=0.5)
        assert pids()["archiver"] == before["archiver"]
    finally:
        subprocess.run([*ctl, "shutdown"], capture_output=True, env=env)
        sup.stop()
        broker.stop()
