"""The rolling session summary without Celery (``memory.summaries.summarize_session``):
which turns a summary covers, who may see it, and when nothing is written. Real Redis, a
fake summarizing model."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace as NS

from sqlalchemy import select

from memory import nearline, summaries
from memory.db import session_scope
from models import LoreEntry


def _entry(world_id: int, key: str) -> LoreEntry:
    with session_scope() as s:
        return s.scalar(select(LoreEntry).where(LoreEntry.world_id == world_id,
                                                LoreEntry.key == key))


def _record(game, seq: int, npc_id: int | None, witnesses: list[int], text: str) -> None:
    nearline.record_turn(nearline.get_redis(), game["id"], {
        "turn_id": uuid.uuid4().hex, "session_id": game["id"], "world_id": game["world_id"],
        "seq": seq, "npc_entry_id": npc_id, "witnesses": witnesses, "player_text": text,
        "npc_text": "Hm.", "latency_ms": 1.0, "created_at": time.time()})


class Model:
    def __init__(self):
        self.calls = []

    def __call__(self, player_name, previous, turns):
        self.calls.append((player_name, previous, turns))
        return NS(summary=f"Summary of {len(turns)} turns."), 17


def test_a_summary_covers_the_turns_after_the_last_one_and_only_their_common_witnesses(
        game_session):
    r, sid, world = nearline.get_redis(), game_session["id"], game_session["world_id"]
    baker, miller = _entry(world, "baker_27").id, 10**9  # the second one is not cached
    _record(game_session, 1, baker, [baker, miller], "Bread?")
    _record(game_session, 2, None, [baker, miller], "The bell rings.")
    _record(game_session, 3, miller, [miller], "Flour?")
    model = Model()
    out = summaries.summarize_session(r, sid, 2, model)
    assert out == {"stored": True, "turns": 2, "chars": len("Summary of 2 turns."), "tokens": 17}
    (player, previous, turns), = model.calls
    assert (player, previous) == ("tester", "")
    assert [(t["seq"], t["npc"]) for t in turns] == [
        (1, _entry(world, "baker_27").title), (2, "everyone present")]
    stored = summaries.get_summary(r, sid)
    assert (stored["upto_seq"], stored["audience"]) == (2, sorted([baker, miller]))

    assert summaries.summarize_session(r, sid, 2, model) == {
        "stored": False, "skipped": "already summarized"}
    out = summaries.summarize_session(r, sid, 3, model)  # turn 3 only; previous text folded in
    assert out["turns"] == 1 and model.calls[-1][1] == "Summary of 2 turns."
    assert [t["npc"] for t in model.calls[-1][2]] == ["someone"]
    # the audience stays those who witnessed every turn, the earlier ones included
    assert summaries.get_summary(r, sid)["audience"] == [miller]
    assert summaries.summarize_session(r, sid, 5, model) == {"stored": False,
                                                             "skipped": "no turns"}
    assert len(model.calls) == 2


def test_nothing_is_summarized_for_an_unknown_session():
    model = Model()
    assert summaries.summarize_session(nearline.get_redis(), "no-such-session", 3, model) == {
        "stored": False, "skipped": "unknown session"}
    assert model.calls == []


def test_the_turns_to_summarize_are_those_after_the_last_summary_up_to_the_requested_one(
        game_session):
    r = nearline.get_redis()
    for seq in (1, 2, 3, 4):
        _record(game_session, seq, None, [], f"turn {seq}")
    picked = summaries.turns_to_summarize(r, game_session["id"], 1, 3)
    assert [t["seq"] for t in picked] == [2, 3]
