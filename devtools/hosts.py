"""Several dialogue servers on one machine, as a studio runs them on several: a "host" (a
dialogue server and its workers in one process group, with its own ports and data directory)
and HAProxy in front of several hosts' dialogue servers. Used by ``tests/test_hosts.py`` and
``bench/hosts.py``; logs and configuration go to ``DATA_DIR``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import time

import psutil

from devtools.procs import ROOT, SubprocessWorker, WebServer, _tmp, _wait_port
from workers.embedded import free_port


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
