"""``honcho start -c worker=3``: three worker processes from the Procfile's ``worker`` line
with unique Celery node names (``$HONCHO_PROCESS_NAME@%h``), on a private Redis broker."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.procs import ROOT, PrivateRedis, _Subprocess, process_env


def test_honcho_scales_workers_with_unique_node_names():
    from celery import Celery

    import celeryconfig

    broker = PrivateRedis()
    broker.start()
    env = process_env(REDIS_URL=broker.url, WORKER_CONCURRENCY="1",
                      PATH=f"{Path(sys.executable).parent}:{process_env().get('PATH', '')}")
    honcho = _Subprocess(env, "honcho-workers.log")
    app = Celery("honcho_probe", set_as_current=False)
    app.config_from_object(celeryconfig)
    app.conf.broker_url = broker.url
    app.conf.result_backend = broker.url
    host = socket.gethostname()
    expected = {f"worker.{i}@{host}" for i in (1, 2, 3)}
    try:
        honcho._spawn([str(Path(sys.executable).parent / "honcho"), "-f", str(ROOT / "Procfile"),
                       "-d", str(ROOT), "start", "-c", "worker=3", "worker"])
        seen: set[str] = set()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and seen != expected:
            assert honcho.proc.poll() is None, honcho.tail()
            seen = {name for reply in app.control.ping(timeout=1.0) or [] for name in reply}
        assert seen == expected, (seen, honcho.tail())
        queues = app.control.inspect(timeout=2.0, destination=sorted(expected)).active_queues()
        for node in expected:
            assert sorted(q["name"] for q in queues[node]) == [
                "analysis", "entity_creation", "note_update", "simulate_world"]
    finally:
        honcho.stop()
        app.close()
        broker.stop()


def test_supervisord_conf_is_the_procfile():
    """``deploy/supervisord.conf`` is what ``workers.procfile`` writes from the Procfile: one
    restarted-on-exit program per Procfile line, with the line's command."""
    from workers.procfile import SUPERVISORD_CONF, read_procfile, supervisord_conf

    processes = read_procfile()
    assert {"web", "worker", "embedder", "archiver", "beat", "flower", "llm"} <= set(processes)
    assert SUPERVISORD_CONF.read_text() == supervisord_conf(processes), \
        "deploy/supervisord.conf is stale: python -m workers.procfile > deploy/supervisord.conf"
    text = SUPERVISORD_CONF.read_text()
    for name in processes:
        block = text.split(f"[program:{name}]\n", 1)[1].split("\n\n", 1)[0]
        assert "autorestart=true" in block and "stopasgroup=true" in block


def test_supervisord_runs_each_command_as_the_program_itself():
    """A plain Procfile command is exec'd (supervisord signals the program, not a shell); a
    shell list runs as written, so the Flower line's password check still refuses to start."""
    from workers.procfile import read_procfile, shell_command

    procs = read_procfile()
    assert shell_command(procs["worker"]) == f"exec {procs['worker']}"
    flower = shell_command(procs["flower"])
    assert flower == procs["flower"] and "&& exec celery" in flower
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    done = subprocess.run(["/bin/sh", "-c", flower.replace("exec celery", "echo celery")],
                          env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0 and "FLOWER_BASIC_AUTH" in done.stderr


def _consumed_queues(command: str) -> list[str] | None:
    """The ``-Q`` list of a ``celery ... worker`` command (None: not a worker)."""
    import shlex

    argv = shlex.split(command)
    if "celery" not in argv or "worker" not in argv:
        return None
    for flag in ("-Q", "--queues"):
        if flag in argv:
            return argv[argv.index(flag) + 1].split(",")
    return []


def test_procfile_workers_consume_the_worker_groups():
    """Each Procfile worker's ``-Q`` list is its group of ``contract.registry.WORKER_GROUPS``,
    and every queue is consumed by exactly one group."""
    from contract.names import Queues
    from contract.registry import WORKER_GROUPS
    from workers.procfile import read_procfile

    consumed = {name: q for name, cmd in read_procfile().items()
                if (q := _consumed_queues(cmd)) is not None}
    assert {n: sorted(q) for n, q in consumed.items()} == \
        {n: sorted(q.value for q in qs) for n, qs in WORKER_GROUPS.items()}
    every = [q for qs in consumed.values() for q in qs]
    assert sorted(every) == sorted(q.value for q in Queues), "a queue consumed twice or never"
