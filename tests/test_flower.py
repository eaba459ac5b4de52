"""Flower, started from the Procfile's own ``flower`` line by ``/bin/sh -c`` (as honcho runs
it), against a private Redis broker with a real Celery worker subprocess: its HTTP API with
basic auth, its password kept out of the process list, its address, the two routes it serves
without authentication, and its dashboard in headless Chromium (skipped with a reason when
``/usr/bin/chromium`` is absent)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from contract.names import Queues
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
    """The Procfile's ``flower`` line run by ``/bin/sh -c``, as honcho runs it."""

    def __init__(self, env: dict[str, str]):
        self.port = free_port()
        env = {**env, "FLOWER_PORT": str(self.port), "FLOWER_BASIC_AUTH": f"{USER}:{PASSWORD}",
               "PATH": f"{Path(sys.executable).parent}:{env.get('PATH', '')}"}
        super().__init__(env, "flower.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90) -> None:
        self._spawn(["/bin/sh", "-c", procfile_command("flower")])
        self.wait_http(f"{self.url}/healthcheck", timeout, "flower")


def test_procfile_flower_line_is_authenticated_and_bounded():
    cmd = procfile_command("flower")
    assert '"${FLOWER_BASIC_AUTH:?' in cmd  # refuses to start without it ...
    assert "basic-auth" not in cmd and "basic_auth" not in cmd  # ... which Flower reads itself
    assert "--address=${FLOWER_ADDRESS:-127.0.0.1}" in cmd
    assert "--max_tasks=" in cmd and "-A workers.celery_app flower" in cmd


def test_procfile_web_line_binds_web_host():
    assert "--host ${WEB_HOST:-127.0.0.1} --port ${PORT:-8000}" in procfile_command("web")


def test_flower_refuses_to_start_without_basic_auth():
    env = {k: v for k, v in process_env().items() if k != "FLOWER_BASIC_AUTH"}
    done = subprocess.run(["/bin/sh", "-c", procfile_command("flower")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "set FLOWER_BASIC_AUTH=user:password" in done.stderr


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


def test_password_is_not_on_the_command_line(flower):
    import psutil

    fl, _node = flower
    flower_proc = psutil.Process(fl.proc.pid)  # the shell exec'd celery: same pid
    assert "flower" in flower_proc.cmdline()
    for proc in [flower_proc, *flower_proc.children(recursive=True)]:
        assert not any(PASSWORD in arg for arg in proc.cmdline()), proc.cmdline()


def test_flower_listens_on_loopback_only(flower):
    import psutil

    fl, _node = flower
    listening = [c.laddr for c in psutil.Process(fl.proc.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening and {a.port for a in listening} == {fl.port}
    assert {a.ip for a in listening} <= {"127.0.0.1"}, listening


def test_healthcheck_and_metrics_are_open_and_hold_no_secret(flower):
    """Flower serves these two without authentication (probes and Prometheus; it has no
    setting to protect them): README, Flower. They hold counts, task names and worker names,
    not the password or task arguments."""
    fl, _node = flower
    assert httpx.get(f"{fl.url}/healthcheck", timeout=10).text == "OK"
    res = httpx.get(f"{fl.url}/metrics", timeout=30)
    assert res.status_code == 200
    assert "flower_events_total" in res.text or "flower_worker_online" in res.text
    assert PASSWORD not in res.text and USER + ":" not in res.text


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
