"""``scripts/chaos.py`` judges loss only after the system drained: run as a subprocess (its own
Redis, SQLite database, llama.cpp server behind the fault proxy and Celery worker), once with
faults and kill -9 and time to drain (nothing lost, exit 0), and once with no time to drain
(the unfinished tasks are reported pending, not lost, exit 2)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.procs import ROOT

pytestmark = pytest.mark.slow


def _chaos(*args: str, timeout: float) -> tuple[int, str]:
    """Run ``scripts/chaos.py args``; returns its exit status and its output. The database is
    the script's own SQLite file (the test database is left alone)."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "chaos.py"), *args], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout + done.stderr


def _count(label: str, out: str) -> int:
    return int(re.search(rf"^{label}:\s+(\d+)", out, re.M).group(1))


def test_chaos_run_with_kills_drains_and_loses_nothing():
    code, out = _chaos("--updates", "6", "--seconds", "20", "--kill-every", "4",
                       "--drain-timeout", "420", "--seed", "1", "--llm-threads", "1",
                       timeout=720)
    assert code == 0, out[-4000:]
    assert "drained: True" in out and "RESULT: OK" in out, out[-4000:]
    assert _count("tasks lost", out) == 0 and _count("tasks still pending", out) == 0
    assert _count("effects applied twice", out) == 0


def test_chaos_reports_undrained_tasks_as_pending_not_lost():
    code, out = _chaos("--updates", "6", "--seconds", "0", "--kill-every", "0",
                       "--drain-timeout", "0", "--seed", "2", timeout=300)
    assert code == 2, out[-4000:]
    assert "drained: False" in out and "RESULT: NOT DRAINED" in out, out[-4000:]
    assert _count("tasks lost", out) == 0
    assert _count("tasks still pending", out) >= 1
