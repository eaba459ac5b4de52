"""The archive's two write paths for turns (``memory.archive.insert_turns``): PostgreSQL COPY
into a staging table and the multi-row INSERT store the same rows, are idempotent on the turn
id, report only the new ids, and survive several batches in one transaction."""

from __future__ import annotations

import time
import uuid

import pytest
from sqlalchemy import select

from memory.archive import insert_turns
from memory.db import session_scope
from models import LoreEntry, Turn


def _npc(game_session) -> int:
    with session_scope() as s:
        return s.scalar(select(LoreEntry.id).where(LoreEntry.world_id == game_session["world_id"],
                                                   LoreEntry.key == "baker_27"))


def _turns(game_session, npc, n, start=1):
    return [{"turn_id": uuid.uuid4().hex, "session_id": game_session["id"], "seq": start + i,
             "npc_entry_id": npc, "player_text": f"line {start + i}\x00 of the player",
             "npc_text": "A reply, \ud800 with a lone surrogate", "speaker": "Ann" if i % 2 else None,
             "event_id": f"ev-{i}" if i % 3 == 0 else None, "game_minutes": 7 * i,
             "latency_ms": 1.5, "created_at": time.time()} for i in range(n)]


def _stored(ids):
    with session_scope() as s:
        rows = s.scalars(select(Turn).where(Turn.id.in_(ids))).all()
        return {r.id: (r.seq, r.player_text, r.npc_text, r.speaker, r.event_id, r.game_minutes,
                       r.latency_ms, int(r.created_at.timestamp())) for r in rows}


@pytest.fixture
def postgres_only():
    with session_scope() as s:
        if s.get_bind().dialect.name != "postgresql":
            pytest.skip("COPY needs PostgreSQL")


def test_copy_and_insert_store_identical_rows(game_session, postgres_only):
    npc = _npc(game_session)
    by_copy, by_insert = _turns(game_session, npc, 60), _turns(game_session, npc, 60, start=61)
    with session_scope() as s:
        assert insert_turns(s, by_copy, copy=True) == {t["turn_id"] for t in by_copy}
        assert insert_turns(s, by_insert, copy=False) == {t["turn_id"] for t in by_insert}
    copied = _stored([t["turn_id"] for t in by_copy])
    inserted = _stored([t["turn_id"] for t in by_insert])
    assert len(copied) == len(inserted) == 60
    # the same turn shapes (seq shifted by 60) give the same stored values on both paths
    for a, b in zip(by_copy, by_insert):
        ca, cb = copied[a["turn_id"]], inserted[b["turn_id"]]
        assert ca[0] + 60 == cb[0]
        assert ca[2:] == cb[2:]
        assert ca[1].replace(str(ca[0]), "#") == cb[1].replace(str(cb[0]), "#")
    assert "\ufffd" in copied[by_copy[0]["turn_id"]][1]


def test_copy_is_idempotent_and_returns_only_new_ids(game_session, postgres_only):
    npc = _npc(game_session)
    first = _turns(game_session, npc, 80)
    with session_scope() as s:
        assert len(insert_turns(s, first, copy=True)) == 80
    more = _turns(game_session, npc, 20, start=81)
    with session_scope() as s:
        # a redelivered batch mixed with new turns: only the new ones are reported and written
        new = insert_turns(s, first[:50] + more + first[50:], copy=True)
        assert new == {t["turn_id"] for t in more}
        # a second batch in the same transaction: the staging table was emptied in between
        assert insert_turns(s, first, copy=True) == set()
    with session_scope() as s:
        count = s.query(Turn).filter(Turn.session_id == game_session["id"]).count()
    assert count == 100


def test_batch_size_chooses_the_path(game_session, postgres_only):
    """A batch at or above ARCHIVE_COPY_MIN takes COPY, which makes the staging table."""
    from sqlalchemy import text

    npc = _npc(game_session)
    with session_scope() as s:
        # a pooled connection keeps its staging table from earlier batches: start without one
        s.execute(text("DROP TABLE IF EXISTS pg_temp._stage_turns"))
        insert_turns(s, _turns(game_session, npc, 3))  # below the threshold: INSERT
        assert s.execute(text("SELECT to_regclass('pg_temp._stage_turns')")).scalar() is None
        insert_turns(s, _turns(game_session, npc, 60, start=4))  # at/above it: COPY
        assert s.execute(text("SELECT to_regclass('pg_temp._stage_turns')")).scalar() is not None
