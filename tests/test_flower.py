"""Flower, started from the Procfile's own ``flower`` line, against a private Redis broker
with a real Celery worker subprocess: its HTTP API with basic auth, and its dashboard in
headless Chromium (skipped with a reason when ``/usr/bin/chromium`` is absent)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from celeryconfig import Queues
from tests.procs import ROOT, PrivateRedis, SubprocessWorker, _Subprocess, free_port, process_env

QUEUES = [q.value for q in Queues]
CHROMIUM = "/usr/bin/chromium"
USER, PASSWORD = "ops", "flower-test-pw"


def procfile_command(name: str) -> str:
    """The command of process ``name`` in the Procfile."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return line.split(":", 1)[1].strip()
    raise LookupError(f"no {name!r} process in the Procfile")


class Flower(_Subprocess):
    """The Procfile's ``flower`` line run by bash, as honcho would run it."""

    def __init__(self, env: dict[str, str]):
        self.port = free_port()
        env = {**env, "FLOWER_PORT": str(self.port), "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}",
               "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}
        super().__init__(env, "flower.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        self._spawn(["bash", "-c", f"exec {procfile_command('flower')}"])
        self.wait_http(f"{self.url}/healthcheck", timeout, "flower")


def test_procfile_flower_line_is_authenticated_and_bounded():
    cmd = procfile_command("flower")
    assert "--basic-auth=${FLOWER_BASIC_AUTH:?" in cmd
    assert "--max_tasks=" in cmd and "-A workers.celery_app flower" in cmd


@pytest.fixture(scope="module")
def flower():
    """A private broker, one worker on the six queues, and Flower; yields
    ``(flower, worker node name)``."""
    broker = PrivateRedis()
    broker.start()
    env = process_env(REDIS_URL=broker.url)
    worker = SubprocessWorker(env, ",".join(QUEUES), "flower-worker.log")
    fl = Flower(env)
    try:
        worker.start()
        fl.start()
        node = re.search(r"(test-[0-9a-f]{6}@\S+)", worker.tail(20000)).group(1)
        yield fl, node
    finally:
        fl.stop()
        worker.stop()
        broker.stop()


def test_api_needs_basic_auth(flower):
    fl, _node = flower
    for path in ("/api/workers", "/api/queues/length", "/workers", "/broker"):
        res = httpx.get(f"{fl.url}{path}", timeout=10)
        assert res.status_code == 401, path
    res = httpx.get(f"{fl.url}/api/workers", auth=(USER, "wrong"), timeout=10)
    assert res.status_code == 401


def test_api_lists_the_worker_and_the_queues(flower):
    fl, node = flower
    auth = (USER, PASSWORD)
    deadline = time.monotonic() + 60
    workers = {}
    while time.monotonic() < deadline and node not in workers:
        res = httpx.get(f"{fl.url}/api/workers", params={"refresh": 1}, auth=auth, timeout=30)
        assert res.status_code == 200, res.text
        workers = res.json()
        time.sleep(0.5)
    assert node in workers, workers.keys()
    assert sorted(q["name"] for q in workers[node]["active_queues"]) == sorted(QUEUES)
    res = httpx.get(f"{fl.url}/api/queues/length", auth=auth, timeout=30)
    assert res.status_code == 200, res.text
    lengths = {q["name"]: q["messages"] for q in res.json()["active_queues"]}
    assert set(lengths) == set(QUEUES)
    assert all(isinstance(n, int) for n in lengths.values())


def _chromium(*args: str) -> str:
    done = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         "--virtual-time-budget=3000", *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.mark.skipif(not os.path.exists(CHROMIUM),
                    reason=f"{CHROMIUM} not installed (apt-get install -y chromium)")
def test_dashboard_shows_the_worker_and_the_queues(flower, tmp_path):
    fl, node = flower
    httpx.get(f"{fl.url}/api/workers", params={"refresh": 1}, auth=(USER, PASSWORD), timeout=30)
    base = f"http://{USER}:{PASSWORD}@127.0.0.1:{fl.port}"
    workers_dom = _chromium("--dump-dom", f"{base}/workers")
    assert node in workers_dom
    broker_dom = _chromium("--dump-dom", f"{base}/broker")
    for q in QUEUES:
        assert f"<td>{q}</td>" in broker_dom, q
    assert PASSWORD not in broker_dom  # the broker URL is shown masked
    for page in ("workers", "broker"):
        shot = tmp_path / f"flower-{page}.png"
        _chromium("--window-size=1280,900", f"--screenshot={shot}", f"{base}/{page}")
        assert shot.stat().st_size > 10_000
        print(f"flower {page} screenshot: {shot}")
