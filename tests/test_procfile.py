"""``honcho start -c worker=3``: three worker processes from the Procfile's ``worker`` line
with unique Celery node names (``$HONCHO_PROCESS_NAME@%h``), on a private Redis broker."""

from __future__ import annotations

import socket
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
