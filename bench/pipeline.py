"""Benchmark 1, pipeline throughput: note updates per minute end to end (turn recorded ->
``analyze_turn`` -> ``update_note`` -> ``embed``) with zero-latency model and embedding
servers, beside raw Celery throughput of a no-op task on the same broker, same worker
settings, same run; the ratio is note updates/min over no-op tasks/min.

Turns are recorded through ``memory.turns.record_turn`` (the event endpoint's path) in many
sessions before the worker starts, so their ``analyze_turn`` tasks wait in the broker; each
analysis names two entries (``bench.zero``), so a turn makes up to two note updates (fewer
when coalescing folds them). The clock runs from the worker's "ready" to the moment the three
queues are empty with nothing reserved; the no-op baseline is queued and timed the same way.
CPU seconds of the worker, Redis, PostgreSQL and the zero server over the interval say what
was busy (the PostgreSQL figure is the whole local server's, other users included).
"""

from __future__ import annotations

import time

import psutil

from bench.common import PIPELINE_QUEUES, Env, Result, Target, clear_ledger, ledger_counts, \
    send_turns
from contract.names import TaskName

UPDATE = TaskName.UPDATE_NOTE.value


class CpuMeter:
    """CPU seconds (user + system) of named process groups between ``start()`` and
    ``stop()``, and of the whole machine (``machine``: every process, other users' included);
    ``cores()`` gives each one's average cores busy over the interval."""

    def __init__(self, groups: dict[str, list[int]]):
        self.groups = groups
        self._t0 = 0.0
        self._start: dict[str, float] = {}
        self.wall = 0.0
        self.used: dict[str, float] = {}

    @staticmethod
    def _procs(pids: list[int]) -> list[psutil.Process]:
        out = []
        for pid in pids:
            try:
                p = psutil.Process(pid)
                out += [p, *p.children(recursive=True)]
            except psutil.NoSuchProcess:
                pass
        return out

    def _read(self) -> dict[str, float]:
        t = psutil.cpu_times()
        res = {"machine": t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0)}
        for name, pids in self.groups.items():
            total = 0.0
            for p in self._procs(pids):
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.NoSuchProcess:
                    pass
            res[name] = total
        return res

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._start = self._read()

    def stop(self) -> None:
        self.wall = time.monotonic() - self._t0
        end = self._read()
        self.used = {k: end[k] - self._start.get(k, 0.0) for k in end}

    def cores(self) -> dict[str, float]:
        return {k: round(v / self.wall, 2) for k, v in self.used.items()} if self.wall else {}


def postgres_pids() -> list[int]:
    """Every local ``postgres`` process (the shared server: other users' load included)."""
    return [p.pid for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


def measure_pipeline(env: Env, sessions: int, turns: int, concurrency: int = 2,
                     pool: str = "prefork", timeout: float = 600) -> dict:
    """Run the pipeline once; returns a row: ``workers``, ``pool``, ``turns``, ``note_updates``
    (``update_note`` tasks that succeeded), ``embeds``, ``seconds``, ``updates_per_min``,
    ``tasks_per_s`` (all pipeline tasks) and ``cpu_<group>``: average cores busy per process
    group (worker with its pool children, redis, postgres, zero_model).

    Raises:
        RuntimeError: the queues did not drain within ``timeout`` seconds.
    """
    env.reset_queues()
    clear_ledger()
    sids = [env.new_session() for _ in range(sessions)]
    send_turns(env, sids, turns)  # queued before the worker starts: the driver is not timed
    w = env.worker(f"pipeline-{pool}-{concurrency}", PIPELINE_QUEUES, concurrency, pool)
    try:
        t0 = time.monotonic()  # the worker just said "ready"
        meter = CpuMeter({"worker": [w.proc.pid], "redis": [env.redis.proc.pid],
                          "postgres": postgres_pids(), "zero_model": [env.zero_proc.pid]})
        meter.start()
        done = env.wait_drained(timeout)
        meter.stop()
        if done is None:
            raise RuntimeError(f"pipeline did not drain in {timeout} s; log {w.log_path}")
        wall = done - t0
    finally:
        w.stop()
    counts = ledger_counts()
    updates = counts.get(UPDATE, {}).get("succeeded", 0)
    tasks = sum(counts.get(n, {}).get("succeeded", 0) for n in
                (TaskName.ANALYZE_TURN.value, UPDATE, TaskName.EMBED.value))
    failed = {n: {k: v for k, v in c.items() if k not in ("succeeded", "queued")}
              for n, c in counts.items()}
    return {"workers": concurrency, "pool": pool, "turns": sessions * turns,
            "note_updates": updates,
            "embeds": counts.get(TaskName.EMBED.value, {}).get("succeeded", 0),
            "seconds": round(wall, 2), "updates_per_min": round(updates / wall * 60, 1),
            "tasks_per_s": round(tasks / wall, 1),
            **{f"cpu_{k}": v for k, v in meter.cores().items()},
            "not_succeeded": {k: v for k, v in failed.items() if v}}


def measure_noop(env: Env, n: int, concurrency: int = 2, pool: str = "prefork",
                 timeout: float = 300) -> dict:
    """Raw Celery throughput: ``n`` no-op tasks (``bench.noop_app``) queued, then consumed by
    one worker of the same concurrency and pool (timed from its "ready"); returns
    ``{"tasks", "seconds", "tasks_per_min", "tasks_per_s"}``."""
    from bench.noop_app import QUEUE, app

    env.reset_queues()
    for i in range(n):
        app.send_task("bench.noop", kwargs={"i": i})
    w = env.worker(f"noop-{pool}-{concurrency}", QUEUE, concurrency, pool, app="bench.noop_app")
    try:
        t0 = time.monotonic()
        done = env.wait_drained(timeout, queues=(QUEUE,))
        if done is None:
            raise RuntimeError(f"no-op tasks did not drain in {timeout} s")
        wall = done - t0
    finally:
        w.stop()
    return {"tasks": n, "seconds": round(wall, 2), "tasks_per_min": round(n / wall * 60, 1),
            "tasks_per_s": round(n / wall, 1)}


def run(env: Env, quick: bool) -> Result:
    """Pipeline vs no-op throughput with one worker of 2 prefork processes."""
    sessions, turns, noops = (10, 3, 300) if quick else (100, 10, 3000)
    row = measure_pipeline(env, sessions, turns, concurrency=2)
    base = measure_noop(env, noops, concurrency=2)
    ratio = row["updates_per_min"] / base["tasks_per_min"] if base["tasks_per_min"] else None
    return Result(
        "pipeline", [row], baseline={"noop": base}, ratio=round(ratio, 3) if ratio else None,
        targets=[Target("note updates/min", row["updates_per_min"], ">=", 2000, "/min"),
                 Target("share of no-op rate", ratio, ">=", 0.40)],
        params={"sessions": sessions, "turns_per_session": turns, "noop_tasks": noops,
                "worker": "1 worker, -c 2 --pool prefork, queues " + PIPELINE_QUEUES},
        notes="ratio = note updates/min / no-op tasks/min; each note update also costs half an "
              "analyze_turn and one embed task, so the ceiling is well below 1.")
