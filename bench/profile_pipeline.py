"""Where a pipeline worker's time goes: ``python -m bench.profile_pipeline [--turns N]``.

Runs the pipeline benchmark's workload (``bench.pipeline.measure_pipeline``: turns recorded in
many sessions, then ``analyze_turn`` -> ``update_note`` -> ``embed`` on the zero-latency model
and embedding server) with one worker in the ``solo`` pool, so every task runs in the one
process that py-spy samples (``py-spy record --format raw``: collapsed stacks, 200 samples/s,
idle frames left out). Prints, over all samples:

- each task's share of the worker's busy samples (by the task's ``run`` frame);
- the functions with the largest *inclusive* share among this project's modules and the
  libraries they call (Celery, kombu, SQLAlchemy, psycopg, redis, pydantic, httpx, openai,
  json), so a per-task overhead (ledger writes, serialisation, connection setup, events)
  shows up by name.

The collapsed stacks are written to ``var/profile/pipeline.txt`` (load them into speedscope or
``flamegraph.pl`` for a picture). A sampling profiler slows nothing down much, but a loaded
machine changes the shares of waiting; read the figures from an otherwise idle machine.

Raises SystemExit 2 when ``py-spy`` is not installed (``pip install py-spy``) or cannot attach
(it needs ptrace permission over its child).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import PIPELINE_QUEUES, Env, clear_ledger, send_turns

LIBS = ("celery", "kombu", "sqlalchemy", "psycopg", "redis", "pydantic", "httpx", "openai",
        "json", "billiard", "faiss", "numpy", "jinja2", "structlog", "logging")
OURS = ("memory", "tasks", "inference", "prompts", "models", "workers")


def _frames(stack: str) -> list[tuple[str, str]]:
    """``(function, file)`` per frame of one collapsed py-spy stack (outermost first)."""
    out = []
    for frame in stack.split(";"):
        name, _, where = frame.partition(" (")
        out.append((name.strip(), where.rsplit(":", 1)[0].rstrip(")")))
    return out


def _module(path: str) -> str | None:
    """The library (one of :data:`LIBS`) or project file (``memory/notes.py``) a frame's
    file belongs to; py-spy shortens paths to the importable part (``sqlalchemy/orm/...``)."""
    parts = Path(path).parts
    if not parts:
        return None
    if parts[0] in LIBS:
        return parts[0]
    if parts[0] in OURS and len(parts) > 1:
        return "/".join(parts)
    return None


def summarize(raw: str, top: int = 25) -> tuple[int, dict[str, int], list[tuple[str, int]]]:
    """``(busy samples, samples per task, [(function @ module, inclusive samples)])`` from
    py-spy's raw (collapsed) output: lines ``frame;frame;... count``."""
    per_task: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    busy = 0
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = _frames(stack)
        busy += n
        task = next((f"{w}:{name}" for name, w in frames
                     if w.startswith("tasks/") and w != "tasks/base.py"), None)
        per_task[task or "(worker loop, broker, ack)"] += n
        seen = set()
        for name, where in frames:
            mod = _module(where)
            if mod is None:
                continue
            key = f"{name} @ {mod}"
            if key not in seen:
                seen.add(key)
                inclusive[key] += n
    return busy, dict(per_task.most_common()), inclusive.most_common(top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sessions", type=int, default=20)
    ap.add_argument("--turns", type=int, default=10, help="turns per session")
    ap.add_argument("--out", default="var/profile", help="folder for the collapsed stacks")
    args = ap.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stacks = out / "pipeline.txt"
    with Env() as env:
        env.reset_queues()
        clear_ledger()
        sids = [env.new_session() for _ in range(args.sessions)]
        send_turns(env, sids, args.turns)
        w = env.worker("profile-solo", PIPELINE_QUEUES, 1, "solo")
        try:
            rec = subprocess.Popen([spy, "record", "--pid", str(w.proc.pid), "--rate", "200",
                                    "--format", "raw", "--output", str(stacks), "--nonblocking"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            done = env.wait_drained(900)
            rec.send_signal(2)  # SIGINT: py-spy writes what it sampled and exits
            _, err = rec.communicate(timeout=60)
        finally:
            w.stop()
        if done is None:
            print("the pipeline did not drain in 900 s", file=sys.stderr)
            return 1
    if not stacks.exists():
        print(f"py-spy wrote nothing: {err.strip()[-500:]}", file=sys.stderr)
        return 2
    busy, per_task, inclusive = summarize(stacks.read_text())
    print(f"{busy} busy samples (200/s) over {args.sessions * args.turns} turns; "
          f"stacks in {stacks}")
    print("\nshare of busy samples per task:")
    for task, n in per_task.items():
        print(f"  {100 * n / busy:5.1f}%  {task}")
    print("\nlargest inclusive shares (project modules and the libraries they call):")
    for key, n in inclusive:
        print(f"  {100 * n / busy:5.1f}%  {key}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
