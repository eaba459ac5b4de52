"""The retrieved context of a dialogue turn (``memory.dialogue_context``), without HTTP: an
in-memory index and hand-written Redis keys."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest

from memory import evidence, nearline, ranking
from memory import keys as rkeys
from memory.dialogue_context import RetrievalParams, build_context
from memory.hot_cache import HotEntry
from memory.turns import Target
from memory.vector_index import VectorIndex, evidence_scope, world_scope

WORLD_ID = 990_001
NPC = {"id": 1, "key": "baker", "title": "Marta", "content": "The baker.",
       "entity_type": "character"}
ENTRIES = [NPC,
           {"id": 2, "key": "bakery", "title": "Bakery", "content": "Warm bread.",
            "entity_type": "location"},
           {"id": 3, "key": "crypt", "title": "Crypt", "content": "Cold stones.",
            "entity_type": "location"}]
PARAMS = RetrievalParams(candidates=5, k=2, evidence_k=3, half_life_s=3600.0,
                         weights=ranking.Weights(relevance=1.0, recency=0.0, importance=0.0),
                         prompt_chars=10_000)


def _item(seq: int, text: str, who: list[int]) -> dict:
    return {"seq": seq, "part": 0, "text": text, "game_minutes": 450, "witnesses": who,
            "turn_id": f"t{seq}"}


@pytest.fixture()
def scene():
    """A session whose NPC 1 witnessed turn 1 but not turn 2; the index holds the world's
    three entries and one evidence item of each turn."""
    r = nearline.get_redis()
    sid = uuid.uuid4().hex
    index = VectorIndex(4)
    index.upsert(world_scope(WORLD_ID), [1, 2, 3], np.eye(4, dtype=np.float32)[:3])
    seen, unseen = _item(1, "Player: the oven is broken", [1]), _item(2, "Player: secret", [3])
    index.upsert(evidence_scope(sid), [evidence.item_id(1, 0), evidence.item_id(2, 0)],
                 np.array([[0.9, 0.1, 0, 0], [1, 0, 0, 0]], np.float32))
    keys = [f"world:{WORLD_ID}:entry:{e['id']}" for e in ENTRIES]
    for key, entry in zip(keys, ENTRIES):
        r.set(key, json.dumps(entry))
    r.hset(rkeys.evidence(sid), mapping={
        str(evidence.item_id(it["seq"], 0)): json.dumps(it) for it in (seen, unseen)})
    r.sadd(rkeys.witnessed(sid, 1), 1)
    yield r, sid, index, seen
    r.delete(*keys, rkeys.evidence(sid), rkeys.witnessed(sid, 1))


def _hot(sid: str, recent: list[dict] | None = None) -> HotEntry:
    target = Target(session_id=sid, world_id=WORLD_ID, player_name="player", npc_entry_id=1,
                    npc=NPC)
    return HotEntry(target=target, note="", cards=None, turns=recent or [], mver=0, seq=0)


def test_context_leaves_out_the_npc_itself_and_what_it_did_not_witness(scene):
    r, sid, index, seen = scene
    query = np.array([0.9, 0.2, 0.1, 0], np.float32)
    ctx = build_context(r, index, _hot(sid), query, PARAMS)
    assert [title for title, _ in ctx.retrieved] == ["Bakery", "Crypt"]  # not Marta herself
    assert ctx.evidence == [evidence.prompt_line(seen)]  # not turn 2's secret
    assert ctx.note == ""


def test_context_leaves_out_evidence_the_prompt_shows_as_recent_turns(scene):
    r, sid, index, _seen = scene
    recent = [{"seq": 1, "npc_entry_id": 1, "player_text": "the oven is broken"}]
    ctx = build_context(r, index, _hot(sid, recent), np.array([1, 0, 0, 0], np.float32),
                        PARAMS)
    assert ctx.evidence == []
    tight = RetrievalParams(**{**PARAMS.__dict__, "prompt_chars": 1})
    assert build_context(r, index, _hot(sid), np.array([1, 0, 0, 0], np.float32),
                         tight).retrieved == []
