"""Shared pieces of the benchmarks: the run environment (private Redis, a fresh PostgreSQL
database, the zero-latency model server, the example world), percentiles, results, tables and
JSON.

Every benchmark module has ``run(env: Env, quick: bool) -> Result``. A ``Result`` holds rows
of figures (one dict per configuration), the ``baseline`` measured in the same run, the
``ratio`` against it, and ``targets`` (the figures each benchmark aims for) with whether each
was met.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
console = Console(width=None if sys.stdout.isatty() else 160)  # wide tables in logs too

# queue keys of the project (contract.names.Queues) and kombu's reserved-message bookkeeping
QUEUES = ("analysis", "note_update", "entity_creation", "simulate_world", "embed", "archive")
PIPELINE_QUEUES = "analysis,note_update,embed"


def pct(values: list[float], p: float) -> float:
    """The ``p``-th percentile (nearest rank) of ``values``; NaN when empty."""
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def dist(values: list[float], digits: int = 3) -> dict:
    """``{"n", "p50", "p95", "p99", "max"}`` of ``values`` (same unit as the values)."""
    return {"n": len(values), "p50": round(pct(values, 50), digits),
            "p95": round(pct(values, 95), digits), "p99": round(pct(values, 99), digits),
            "max": round(max(values), digits) if values else float("nan")}


@dataclass
class Target:
    """A target: ``figure`` (its name), the measured ``value``, ``op`` (">=" or "<=")
    and ``threshold``; ``met`` says whether it holds (None when not measured)."""

    figure: str
    value: float | None
    op: str
    threshold: float
    unit: str = ""

    @property
    def met(self) -> bool | None:
        if self.value is None or self.value != self.value:  # None or NaN
            return None
        return self.value >= self.threshold if self.op == ">=" else self.value <= self.threshold


@dataclass
class Result:
    """One benchmark's figures: ``rows`` (list of flat dicts), ``baseline`` (dict or None),
    ``ratio`` (float or None: measured / baseline, as the benchmark defines it), ``targets``,
    ``notes`` (what the figures mean, caveats) and ``seconds`` (its wall time)."""

    name: str
    rows: list[dict]
    baseline: dict | None = None
    ratio: float | None = None
    targets: list[Target] = field(default_factory=list)
    notes: str = ""
    seconds: float = 0.0
    params: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "params": self.params, "rows": self.rows,
                "baseline": self.baseline, "ratio": self.ratio,
                "targets": [{**asdict(t), "met": t.met} for t in self.targets],
                "notes": self.notes, "seconds": round(self.seconds, 1), "machine": machine()}


def machine() -> dict:
    """Where the figures were taken: host, CPUs, Python, load average at the time."""
    return {"host": platform.node(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "load_avg": [round(x, 2) for x in os.getloadavg()], "time": time.time()}


def print_table(title: str, rows: list[dict]) -> None:
    """Print ``rows`` (dicts; the union of their keys is the header) as a rich table."""
    if not rows:
        console.print(f"[bold]{title}[/bold]: no rows")
        return
    cols: list[str] = []
    for row in rows:
        cols += [k for k in row if k not in cols]
    table = Table(title=title, title_justify="left")
    for c in cols:
        table.add_column(c, justify="right")
    for row in rows:
        table.add_row(*[_fmt(row.get(c, "")) for c in cols])
    console.print(table)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}" if abs(v) < 10 else f"{v:,.1f}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items())
    return str(v)


def write_json(result: Result, out_dir: Path) -> Path:
    """Write ``out_dir/<name>.json``; returns the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{result.name}.json"
    path.write_text(json.dumps(result.to_json(), indent=2, default=str))
    return path


class Env:
    """The run's services, started once by the runner and shared by the benchmarks.

    - a private ``redis-server`` (``devtools.procs.PrivateRedis``) as broker and nearline store,
      so no queue of the shared Redis is touched;
    - a fresh PostgreSQL database ``npcmem_bench_<hex>`` on ``BENCH_PG_ADMIN_URL`` (default
      ``postgresql://postgres@127.0.0.1:5432/postgres``), migrated, dropped at the end (SQLite
      in the temporary folder when PostgreSQL does not answer);
    - the zero-latency model and embedding server (``bench.zero``), every model role pointed
      at it under its own model name so calls are counted per role.

    ``os.environ`` is set before any project module reads its settings. Use as a context
    manager.
    """

    def __init__(self, keep: bool = False):
        # the environment before the run's services override it (a benchmark on the
        # configured model servers reads their variables from here)
        self.outer_env = dict(os.environ)
        self.tmp = Path(tempfile.mkdtemp(prefix="npcmem-bench-"))
        self.keep = keep
        self.db_name: str | None = None
        self.redis = None
        self.zero_proc: subprocess.Popen | None = None
        self.zero_url = ""
        self._world: dict | None = None
        self.api_key = f"bench-{uuid.uuid4().hex}"
        self._n = 0

    def _log_name(self, name: str) -> str:
        """A log file name not used before in this run (a worker is ready when its own log
        says so)."""
        self._n += 1
        return f"{self._n:02d}-{name}.log"

    # ---- set-up -------------------------------------------------------------------------
    def __enter__(self) -> "Env":
        os.environ["DATA_DIR"] = str(self.tmp)
        from workers.embedded import free_port
        from devtools.procs import PrivateRedis

        self.redis = PrivateRedis()
        self.redis.start()
        zport = free_port()
        self.zero_url = f"http://127.0.0.1:{zport}"
        os.environ.update(self.base_env())
        for k in ("BROKER_URL", "RESULT_BACKEND"):
            os.environ.pop(k, None)
        admin = os.environ.get("BENCH_PG_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
        try:
            import psycopg

            self.db_name = f"npcmem_bench_{uuid.uuid4().hex[:8]}"
            with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
                conn.execute(f'CREATE DATABASE "{self.db_name}"')
            self.admin_url = admin
            os.environ["DATABASE_URL"] = admin.rsplit("/", 1)[0] + f"/{self.db_name}"
        except Exception as exc:  # no PostgreSQL here: the embedded default
            console.print(f"[yellow]PostgreSQL unavailable ({exc}); using SQLite[/yellow]")
            self.db_name = None
            os.environ["DATABASE_URL"] = f"sqlite:///{self.tmp / 'bench.db'}"
        self.zero_proc = subprocess.Popen(
            [sys.executable, "-m", "bench.zero", "--port", str(zport)], cwd=ROOT,
            env=self.child_env(), stdout=subprocess.DEVNULL, stderr=open(self.tmp / "zero.log", "wb"),
            start_new_session=True)
        from memory.db import migrate
        from workers.embedded import wait_http

        wait_http(f"{self.zero_url}/v1/models", 60)
        migrate()
        return self

    def base_env(self) -> dict[str, str]:
        """The variables every process of the run gets (zero-latency model for every role)."""
        z = f"{self.zero_url}/v1"
        return {
            "DATA_DIR": str(self.tmp), "REDIS_URL": self.redis.url, "OPENBLAS_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT), "API_KEYS": self.api_key, "API_AUTH": "on",
            "EMBEDDER": "openai", "EMBEDDING_BASE_URL": z, "EMBEDDING_MODEL": "zero",
            "LLM_BACKEND": "openai", "LLM_BASE_URL": z, "LLM_MODEL": "zero",
            "GENERATION_MODEL": "zero-generation", "ANALYSIS_MODEL": "zero-analysis",
            "MAINTENANCE_MODEL": "zero-maintenance", "LLM_MAX_RETRIES": "2",
            "SIMULATE_EVERY_TURNS": "0", "SUMMARIZE_EVERY_TURNS": "0",
            "WORLD_TICK_SECONDS": "3600",
        }

    def child_env(self, **overrides: str) -> dict[str, str]:
        """Environment for a child process: this process's, with ``overrides``."""
        env = {**os.environ, **overrides}
        for k in ("BROKER_URL", "RESULT_BACKEND"):
            env.pop(k, None)
        return env

    def __exit__(self, *exc) -> None:
        if self.zero_proc is not None:
            self.zero_proc.terminate()
            try:
                self.zero_proc.wait(10)
            except subprocess.TimeoutExpired:
                self.zero_proc.kill()
        try:
            from memory.db import _engines

            for engine in _engines.values():
                engine.dispose()
        except Exception:
            pass
        if self.db_name and not self.keep:
            import psycopg

            with psycopg.connect(self.admin_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        if self.redis is not None:
            self.redis.stop()

    # ---- helpers ------------------------------------------------------------------------
    def r(self):
        """A Redis client on the run's private Redis."""
        from memory.nearline import get_redis

        return get_redis()

    def reset_queues(self) -> None:
        """Drop every queued and reserved message (between benchmarks)."""
        self.r().delete(*QUEUES, "unacked", "unacked_index", "bench_noop")

    def world(self) -> dict:
        """The example world (imported and its base lore embedded once): ``{"id", "key",
        "npcs": [character keys], "entries": n}``."""
        if self._world is None:
            from inference.embedding import get_embedder
            from memory.db import session_scope
            from memory.importers.examples import load_example
            from memory.vectors import embed_world_base
            from memory.worlds import import_world

            spec, _script = load_example()
            with session_scope() as s:
                world, _ = import_world(s, spec)
                embed_world_base(s, self.r(), get_embedder(), world.id)
                self._world = {"id": world.id, "key": world.key,
                               "npcs": [e.key for e in spec.characters()],
                               "entries": len(spec.entries)}
        return self._world

    def new_session(self, player: str = "bench") -> str:
        """A new game session on the example world, registered in the database and the
        nearline tier (as ``POST /v1/sessions`` does); returns its id."""
        from memory import nearline
        from memory.db import session_scope
        from memory.worlds import base_entries
        from models import GameSession

        w = self.world()
        sid = uuid.uuid4().hex
        r = self.r()
        with session_scope() as s:
            s.add(GameSession(id=sid, world_id=w["id"]))
            nearline.cache_entries(r, w["id"], base_entries(s, w["id"]))
        nearline.open_session(r, sid, w["id"], player)
        return sid

    def zero_stats(self, reset: bool = False) -> dict:
        """Chat calls per model name served by the zero server so far (``reset``: zero them
        afterwards)."""
        stats = httpx.get(f"{self.zero_url}/stats", timeout=10).json()
        if reset:
            httpx.post(f"{self.zero_url}/stats/reset", timeout=10)
        return stats

    def worker(self, name: str, queues: str = PIPELINE_QUEUES, concurrency: int = 1,
               pool: str = "prefork", app: str = "workers.celery_app",
               extra_args: tuple[str, ...] = (), **env: str):
        """A started ``celery worker`` subprocess (``devtools.procs.SubprocessWorker``);
        stop it with ``.stop()``."""
        from devtools.procs import SubprocessWorker

        w = SubprocessWorker(self.child_env(**env), queues, self._log_name(name), extra_args=extra_args,
                             concurrency=concurrency, pool=pool, app=app)
        w.start(120)
        return w

    def web(self, name: str = "web", **env: str):
        """A started dialogue server (``devtools.procs.WebServer``); stop it with ``.stop()``."""
        from devtools.procs import WebServer

        w = WebServer(self.child_env(**env), self._log_name(name))
        w.start(180)
        return w

    def headers(self) -> dict[str, str]:
        """The run's API key as an ``Authorization`` header."""
        return {"Authorization": f"Bearer {self.api_key}"}

    def drained(self, queues=("analysis", "note_update", "embed")) -> bool:
        """True when ``queues`` hold no message and no message is reserved by a worker."""
        r = self.r()
        pipe = r.pipeline(transaction=False)
        for q in queues:
            pipe.llen(q)
        pipe.hlen("unacked")
        return sum(pipe.execute()) == 0

    def wait_drained(self, timeout: float, queues=("analysis", "note_update", "embed"),
                     poll: float = 0.05) -> float | None:
        """Wait until :meth:`drained` holds twice in a row; returns the monotonic time it first
        held, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        first = None
        while time.monotonic() < deadline:
            if self.drained(queues):
                now = time.monotonic()
                if first is not None and now - first >= 0.2:
                    return first
                first = first or now
            else:
                first = None
            time.sleep(poll)
        return None


def ledger_counts(names: list[str] | None = None) -> dict[str, dict[str, int]]:
    """``{task_name: {status: count}}`` from the task ledger."""
    from sqlalchemy import func, select

    from memory.db import session_scope
    from models import TaskRecord

    with session_scope() as s:
        q = select(TaskRecord.task_name, TaskRecord.status, func.count()).group_by(
            TaskRecord.task_name, TaskRecord.status)
        if names:
            q = q.where(TaskRecord.task_name.in_(names))
        out: dict[str, dict[str, int]] = {}
        for name, status, n in s.execute(q).all():
            out.setdefault(name, {})[status] = n
    return out


def clear_ledger() -> None:
    """Delete every task ledger row (between runs of a benchmark, so counts start at 0)."""
    from sqlalchemy import delete

    from memory.db import session_scope
    from models import TaskRecord

    with session_scope() as s:
        s.execute(delete(TaskRecord))


def send_turns(env: Env, sessions: list[str], turns: int, rate: float | None = None) -> list[float]:
    """Record ``turns`` turns in each session through ``memory.turns.record_turn`` (what the
    dialogue server's event endpoint does: Redis writes, then ``analyze_turn`` and
    ``archive_turn`` sent to the broker), round-robin over the sessions, at most ``rate``
    turns/s; returns the monotonic time each turn was accepted, in order."""
    from contract.send import celery_sender
    from memory import turns as turns_mod

    send = celery_sender(_app())
    r = env.r()
    w = env.world()

    accepted = []
    t0 = time.monotonic()
    n = 0
    for t in range(turns):
        for i, sid in enumerate(sessions):
            target = turns_mod.resolve_target(r, sid, w["npcs"][(i + t) % len(w["npcs"])])
            turns_mod.record_turn(r, send, target, player_text=f"What news of the road, friend? ({t})",
                                  npc_text="Aye, the road north is quiet.")
            accepted.append(time.monotonic())
            n += 1
            if rate:
                wait = t0 + n / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
    return accepted


def _app():
    """The project's Celery app (``workers.celery_app.app``; importing it makes it current)."""
    from workers.celery_app import app

    app.set_current()
    return app
