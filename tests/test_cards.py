"""Memory cards (``memory.cards``) against the real Redis and PostgreSQL: effects and
bounds, the 2 KB size rule, atomic concurrent updates (threads and processes), idempotent
events, the dialogue prompt (read from Redis only), the archive, the analysis task through the
real Celery worker, and the ops route and CLI.

Where a test needs the model to say something exact, the model server is a local stand-in
speaking the OpenAI wire format (``tests/fakes.py``); the project's own code runs unchanged.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select

import settings
from fakes import FakeServer, openai_chat  # tests/ is on sys.path (rootdir conftest)
from fakes import role_on as _role_on
from memory import cards as mc
from memory import keys as rkeys
from memory import nearline
from memory.db import session_scope
from models import CardEvent, LoreEntry, NpcCard, TaskRecord
from tests.sqlcount import sql_statements


def _rel(event_id: str, kind: str, detail: str = "Something happened.", intensity: int = 1,
         seq: int = 1, turn_id: str | None = "turn-1") -> mc.RelationshipEvent:
    return mc.RelationshipEvent(event_id=event_id, kind=kind, detail=detail, intensity=intensity,
                                turn_id=turn_id, seq=seq)


def _quest(event_id: str, kind: str, name: str, detail: str = "", seq: int = 1) -> mc.QuestEvent:
    return mc.QuestEvent(event_id=event_id, kind=kind, name=name, detail=detail,
                         turn_id=f"turn-{seq}", seq=seq)


@pytest.fixture()
def pair():
    """A fresh (session id, NPC entry id) pair in Redis; its keys are deleted afterwards."""
    sid, npc = f"cards-{uuid.uuid4().hex}", 4242
    yield sid, npc
    r = nearline.get_redis()
    keys = r.keys(f"session:{sid}:*")
    if keys:
        r.delete(*keys)


def _entry(world_id: int, key: str) -> LoreEntry:
    with session_scope() as s:
        return s.scalar(select(LoreEntry).where(LoreEntry.world_id == world_id, LoreEntry.key == key))


# --------------------------------------------------------------------------- effects, bounds


def test_new_pair_has_empty_cards_that_say_nothing(pair):
    cards = mc.get_cards(nearline.get_redis(), *pair)
    assert cards.relationship == mc.RelationshipCard() and cards.quest == mc.QuestCard()
    assert (cards.relationship.trust, cards.relationship.affinity) == (0, 0)
    assert mc.render_cards(cards, 600) == "" and mc.analysis_hints(cards) == ""


def test_each_relationship_kind_moves_scores_by_the_table_and_keeps_provenance(pair):
    r = nearline.get_redis()
    expected_trust = expected_affinity = 0
    for i, kind in enumerate(mc.RELATIONSHIP_KINDS):
        res = mc.apply_events(r, *pair, [_rel(f"t{i}:r0", kind, f"Event {kind}.", intensity=2,
                                              seq=i + 1, turn_id=f"t{i}")])
        per_trust, per_affinity = mc.EFFECTS[kind]
        expected_trust += 2 * per_trust
        expected_affinity += 2 * per_affinity
        assert res.applied[0]["trust_delta"] == 2 * per_trust
        assert res.applied[0]["affinity_delta"] == 2 * per_affinity
        assert (res.cards.relationship.trust, res.cards.relationship.affinity) == (
            expected_trust, expected_affinity)
    card = mc.get_cards(r, *pair).relationship
    assert card.rev == len(mc.RELATIONSHIP_KINDS)
    assert card.counts == {k: 1 for k in mc.RELATIONSHIP_KINDS}
    assert [(b.text, b.severity, b.turn, b.seq) for b in card.betrayals] == [
        ("Event betrayal.", 2, f"t{mc.RELATIONSHIP_KINDS.index('betrayal')}",
         mc.RELATIONSHIP_KINDS.index("betrayal") + 1)]
    assert [g.text for g in card.gifts] == ["Event gift."]
    assert [i.text for i in card.insults] == ["Event insult."]
    assert [s.text for s in card.saved_life] == ["Event saved_life."]
    # the kept and broken events matched nothing open after the first one closed it
    assert [p.status for p in card.promises] == ["kept", "broken"]


def test_scores_stay_within_bounds(pair):
    r = nearline.get_redis()
    res = mc.apply_events(r, *pair, [_rel(f"b{i}", "betrayal", "He sold me out.", 10) for i in range(5)])
    rel = res.cards.relationship
    assert (rel.trust, rel.affinity) == (mc.SCORE_MIN, mc.SCORE_MIN) == (-100, -100)
    # the clamped amount is what the event reports as applied
    assert [e["trust_delta"] for e in res.applied] == [-30, -30, -30, -10, 0]
    up = mc.apply_events(r, *pair, [_rel(f"s{i}", "saved_life", "Pulled me from the river.", 10)
                                    for i in range(10)]).cards.relationship
    assert (up.trust, up.affinity) == (mc.SCORE_MAX, mc.SCORE_MAX) == (100, 100)
    assert up.counts == {"betrayal": 5, "saved_life": 10}


def test_kept_and_broken_promises_find_the_open_promise_by_text(pair):
    r = nearline.get_redis()
    mc.apply_events(r, *pair, [
        _rel("t1:r0", "promise_made", "The player promised to bring rye flour from the mill.", seq=1),
        _rel("t1:r1", "promise_made", "The player promised to guard the bakery at night.", seq=1)])
    mc.apply_events(r, *pair, [_rel("t2:r0", "promise_kept", "The player brought the rye flour.",
                                    seq=2, turn_id="t2")])
    mc.apply_events(r, *pair, [_rel("t3:r0", "promise_broken", "Nobody guarded the bakery at night.",
                                    seq=3, turn_id="t3")])
    promises = mc.get_cards(r, *pair).relationship.promises
    assert [(p.text, p.status, p.seq, p.closed_seq, p.closed_turn) for p in promises] == [
        ("The player promised to bring rye flour from the mill.", "kept", 1, 2, "t2"),
        ("The player promised to guard the bakery at night.", "broken", 1, 3, "t3")]
    # a kept promise the card never saw is remembered as a closed promise, not lost
    mc.apply_events(r, *pair, [_rel("t4:r0", "promise_kept", "Returned the silver spoon.", seq=4)])
    last = mc.get_cards(r, *pair).relationship.promises[-1]
    assert (last.text, last.status, last.closed_seq) == ("Returned the silver spoon.", "kept", 4)


def test_quest_lifecycle_and_flags(pair):
    r = nearline.get_redis()
    mc.apply_events(r, *pair, quests=[_quest("t1:q0", "quest_started", "Find the silver key",
                                             "Search the old crypt.", 1)])
    mc.apply_events(r, *pair, quests=[_quest("t2:q0", "milestone", "find the silver key!",
                                             "Found the crypt door.", 2)])
    mc.apply_events(r, *pair, quests=[_quest("t3:q0", "flag_set", "crypt_open", "yes", 3),
                                      _quest("t3:q1", "flag_set", "Crypt_Open", "no", 3)])
    mc.apply_events(r, *pair, quests=[_quest("t4:q0", "quest_completed", "Find the Silver Key",
                                             "Gave the key to the baker.", 4)])
    mc.apply_events(r, *pair, quests=[_quest("t5:q0", "milestone", "Bake the wedding cake",
                                             "Bought the eggs.", 5)])
    card = mc.get_cards(r, *pair).quest
    assert [(q.name, q.status, q.goal, [m.text for m in q.milestones], q.seq, q.closed_seq)
            for q in card.quests] == [
        ("Find the silver key", "completed", "Search the old crypt.",
         ["Found the crypt door.", "Gave the key to the baker."], 1, 4),
        # a milestone of a quest the card did not know starts it: nothing is lost
        ("Bake the wedding cake", "active", "", ["Bought the eggs."], 5, None)]
    assert [(f.name, f.value, f.seq) for f in card.flags] == [("Crypt_Open", "no", 3)]
    assert card.counts == {"quest_started": 1, "milestone": 2, "flag_set": 2, "quest_completed": 1}
    assert card.rev == 5


def test_invalid_events_are_refused_with_clear_errors(pair):
    r = nearline.get_redis()
    with pytest.raises(ValidationError, match="intensity"):
        _rel("x", "gift", intensity=11)
    with pytest.raises(ValidationError, match="kind"):
        _rel("x", "hug")
    with pytest.raises(ValidationError, match="name"):
        mc.QuestEvent(event_id="x", kind="milestone", name="  ")
    with pytest.raises(ValueError, match="duplicate event ids"):
        mc.apply_events(r, *pair, [_rel("same", "gift"), _rel("same", "insult")])
    assert r.exists(rkeys.card(*pair, "relationship")) == 0  # nothing written


def test_corrupt_card_is_reported_and_left_as_it_is(pair):
    r = nearline.get_redis()
    key = rkeys.card(*pair, "relationship")
    r.set(key, '{"trust": 500}')
    with pytest.raises(mc.CardCorrupt, match=key):
        mc.apply_events(r, *pair, [_rel("t1:r0", "gift")])
    with pytest.raises(mc.CardCorrupt):
        mc.get_cards(r, *pair)
    assert r.get(key) == b'{"trust": 500}'
    assert r.hlen(rkeys.card_applied(*pair)) == 0  # the event is not marked applied


# --------------------------------------------------------------------------- size rule


def _long(label: str, i: int) -> str:
    return f"{label} {i}: " + "a long remembered detail of what the player did " * 3


def test_size_rule_drops_oldest_details_of_least_important_kinds_first(pair):
    """Insults go first, then gifts; betrayals and open promises stay; counts stay exact."""
    r = nearline.get_redis()
    seq = 0
    for kind, label in (("betrayal", "betrayed"), ("promise_made", "promised")):
        for i in range(4):
            seq += 1
            mc.apply_events(r, *pair, [_rel(f"{label}{i}", kind, _long(label, i), 5, seq)])
    for i in range(6):
        seq += 1
        mc.apply_events(r, *pair, [_rel(f"gift{i}", "gift", _long("gift", i), 1, seq),
                                   _rel(f"insult{i}", "insult", _long("insult", i), 1, seq)])
        assert r.strlen(rkeys.card(*pair, "relationship")) <= mc.MAX_CARD_BYTES
    card = mc.get_cards(r, *pair).relationship
    assert mc.card_bytes(card) <= mc.MAX_CARD_BYTES
    assert card.insults == []
    assert [b.text for b in card.betrayals] == [_long("betrayed", i)[: mc.TEXT_CHARS - 3].rstrip() + "..."
                                                for i in range(4)]
    assert len(card.promises) == 4 and all(p.status == "made" for p in card.promises)
    kept_gifts = [g.text for g in card.gifts]
    all_gifts = [_long("gift", i)[: mc.TEXT_CHARS - 3].rstrip() + "..." for i in range(6)]
    assert kept_gifts == all_gifts[len(all_gifts) - len(kept_gifts):]  # the newest survive
    assert card.counts == {"betrayal": 4, "promise_made": 4, "gift": 6, "insult": 6}
    assert card.trimmed == 6 + (6 - len(kept_gifts))


def test_size_rule_order_across_every_relationship_kind():
    """Built in memory and fitted once: what remains is the most important details."""
    card = mc.RelationshipCard()
    for i in range(8):
        for kind in ("insult", "gift", "promise_made", "saved_life", "betrayal"):
            mc.apply_relationship_event(card, _rel(f"{kind}{i}", kind, _long(kind, i), 5))
    for i in range(2):  # resolve two promises: resolved ones go before life-saving events
        mc.apply_relationship_event(card, _rel(f"kept{i}", "promise_kept", _long("promise_made", i)))
    assert mc.card_bytes(card) > 3 * mc.MAX_CARD_BYTES
    dropped = mc.fit_card(card)
    assert mc.card_bytes(card) <= mc.MAX_CARD_BYTES and dropped == card.trimmed
    assert card.insults == [] and card.gifts == [] and card.saved_life == []
    # resolved promises went before life-saving events; open promises are the last to go
    assert [p.text.split(":")[0] for p in card.promises] == [f"promise_made {i}" for i in range(2, 8)]
    # betrayals are dropped oldest first, after everything less important
    kept = [b.text.split(":")[0] for b in card.betrayals]
    assert 0 < len(kept) < 8 and kept == [f"betrayal {i}" for i in range(8)][8 - len(kept):]
    assert dropped == 8 * 3 + 2 + (8 - len(kept))
    assert card.counts == {"insult": 8, "gift": 8, "promise_made": 8, "saved_life": 8,
                           "betrayal": 8, "promise_kept": 2}


def test_quest_size_rule_keeps_active_quests_over_history(pair):
    r = nearline.get_redis()
    for i in range(6):  # closed quests with milestones, then flags, then active quests
        mc.apply_events(r, *pair, quests=[
            _quest(f"c{i}:q0", "quest_started", f"Old errand number {i}", _long("goal", i), i + 1)])
        mc.apply_events(r, *pair, quests=[
            _quest(f"c{i}:q1", "milestone", f"Old errand number {i}", _long("step", i), i + 1)])
        mc.apply_events(r, *pair, quests=[
            _quest(f"c{i}:q2", "quest_completed", f"Old errand number {i}", "Done.", i + 1)])
    for i in range(5):
        mc.apply_events(r, *pair, quests=[_quest(f"f{i}", "flag_set", f"flag_{i}", "yes", 10 + i)])
    for i in range(4):
        mc.apply_events(r, *pair, quests=[
            _quest(f"a{i}:q0", "quest_started", f"Current quest {chr(65 + i)}", _long("goal", i), 20 + i)])
        assert r.strlen(rkeys.card(*pair, "quest")) <= mc.MAX_CARD_BYTES
    card = mc.get_cards(r, *pair).quest
    active = [q.name for q in card.quests if q.status == "active"]
    assert active == [f"Current quest {c}" for c in "ABCD"]
    closed = [q for q in card.quests if q.status != "active"]
    assert 0 < len(closed) < 6  # some history had to go, the newest stayed
    assert [q.name for q in closed] == [f"Old errand number {i}" for i in range(6)][6 - len(closed):]
    # every closed quest's milestones went before any closed quest; flags only after those
    assert all(not q.milestones for q in closed)
    assert [f.name for f in card.flags] == [f"flag_{i}" for i in range(5)]
    assert card.counts == {"quest_started": 10, "milestone": 6, "quest_completed": 6, "flag_set": 5}
    assert card.trimmed == 12 + (6 - len(closed))


# --------------------------------------------------------------------------- atomicity


def test_fifty_concurrent_trust_deltas_and_gifts_all_land(pair):
    """100 single-event updates of one card from 8 threads: nothing lost, nothing doubled."""
    r = nearline.get_redis()
    events = ([_rel(f"trust{i}", "trust_up", f"Helped me {i}.", 1, i + 1) for i in range(50)]
              + [_rel(f"gift{i}", "gift", f"Gift number {i}.", 1, i + 1) for i in range(50)])

    def one(e):
        return len(mc.apply_events(r, *pair, [e]).applied)

    with ThreadPoolExecutor(max_workers=8) as pool:
        applied = list(pool.map(one, events))
    assert applied == [1] * 100
    card = mc.get_cards(r, *pair).relationship
    # 50 trust_up (+1) and 50 gifts (+1 trust, +2 affinity): the sums, never past the bounds
    assert (card.trust, card.affinity) == (100, 100)
    assert card.counts == {"trust_up": 50, "gift": 50} and card.rev == 100
    assert len(mc.applied_events(r, *pair)) == 100
    assert mc.card_bytes(card) <= mc.MAX_CARD_BYTES
    assert len(card.gifts) + card.trimmed == 50


def _apply_in_child(args: tuple[str, int, int]) -> int:
    import redis as redis_lib

    sid, npc, worker = args
    r = redis_lib.Redis.from_url(os.environ["REDIS_URL"])
    done = 0
    for i in range(12):
        done += len(mc.apply_events(r, sid, npc, [_rel(f"p{worker}:{i}", "trust_down", "Lied.", 2)]).applied)
    return done


def test_concurrent_updates_from_processes_all_land(pair):
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(4) as pool:
        done = pool.map(_apply_in_child, [(*pair, w) for w in range(4)])
    assert done == [12] * 4
    card = mc.get_cards(nearline.get_redis(), *pair).relationship
    assert card.trust == -96 and card.counts == {"trust_down": 48} and card.rev == 48


# --------------------------------------------------------------------------- idempotency


def test_same_event_twice_has_one_effect(pair):
    r = nearline.get_redis()
    first = mc.apply_events(r, *pair, [_rel("t9:r0", "gift", "A loaf of rye.", 3)],
                            [_quest("t9:q0", "quest_started", "Deliver the bread", "To the inn.")])
    again = mc.apply_events(r, *pair, [_rel("t9:r0", "gift", "A loaf of rye.", 3)],
                            [_quest("t9:q0", "quest_started", "Deliver the bread", "To the inn.")])
    assert len(first.applied) == 2 and again.applied == []
    assert again.duplicates == first.applied
    # a redelivered analysis may sample other content under the same ids: the first stands
    other = mc.apply_events(r, *pair, [_rel("t9:r0", "betrayal", "Stole the loaf.", 9)])
    assert other.applied == [] and other.duplicates[0]["kind"] == "gift"
    cards = mc.get_cards(r, *pair)
    assert (cards.relationship.trust, cards.relationship.affinity, cards.relationship.rev) == (3, 6, 1)
    assert cards.relationship.counts == {"gift": 1} and cards.quest.rev == 1
    assert [e["event_id"] for e in mc.turn_applied(r, *pair, "t9")] == ["t9:r0", "t9:q0"]
    assert {e["event_id"] for e in mc.applied_events(r, *pair)} == {"t9:r0", "t9:q0"}


def test_concurrent_redeliveries_apply_once(pair):
    r = nearline.get_redis()
    barrier = threading.Barrier(16)

    def one(_):
        barrier.wait()
        return len(mc.apply_events(r, *pair, [_rel("dup:r0", "saved_life", "Saved me.", 4)]).applied)

    with ThreadPoolExecutor(max_workers=16) as pool:
        applied = list(pool.map(one, range(16)))
    assert sorted(applied) == [0] * 15 + [1]
    card = mc.get_cards(r, *pair).relationship
    assert (card.trust, card.affinity, card.counts) == (12, 12, {"saved_life": 1})


def test_turn_applied_finds_a_turns_events_only(pair):
    r = nearline.get_redis()
    mc.apply_events(r, *pair, [_rel("ab*c:r0", "gift", turn_id="ab*c"), _rel("abxc:r0", "gift")])
    assert [e["event_id"] for e in mc.turn_applied(r, *pair, "ab*c")] == ["ab*c:r0"]


def test_turn_events_give_stable_ids_and_drop_repeats():
    from prompts.outputs import QuestChange, RelationshipChange

    rel = [RelationshipChange(kind="gift", detail="Rye flour.", intensity=2)] * 2
    quests = [QuestChange(kind="flag_set", name="mill_open", detail="yes")]
    r_events, q_events = mc.turn_events("abc", 7, rel, quests)
    assert [(e.event_id, e.kind, e.seq) for e in r_events] == [("abc:r0", "gift", 7)]
    assert [(e.event_id, e.name, e.detail) for e in q_events] == [("abc:q0", "mill_open", "yes")]


# --------------------------------------------------------------------------- prompt text


def test_render_cards_most_important_first_within_budget(pair):
    r = nearline.get_redis()
    mc.apply_events(r, *pair, [_rel("t1:r0", "betrayal", "Told the guard about my cellar.", 6),
                               _rel("t1:r1", "gift", "A sack of rye.", 2)],
                    [_quest("t1:q0", "quest_started", "Find the silver key", "Search the crypt.")])
    cards = mc.get_cards(r, *pair)
    full = mc.render_cards(cards, 2000)
    lines = full.splitlines()
    assert lines[0] == "Trust in the player: -16 of 100 (wary); affinity: -8 of 100 (neutral)."
    assert lines[1] == "The player betrayed you: Told the guard about my cellar (severity 6/10)."
    assert "Quests between you and the player: Find the silver key (goal: Search the crypt)." in lines
    assert lines[-1] == "Gifts from the player: 1; the latest: A sack of rye."
    for budget in (0, 10, 60, 100, 150, len(full) - 1):
        text = mc.render_cards(cards, budget)
        assert len(text) <= budget
        assert full.startswith(text.removesuffix("...").rstrip(" ,;:")) or text == ""
    assert mc.render_cards(cards, 100).endswith("...")
    assert "Active quests: Find the silver key." in mc.analysis_hints(cards)


# --------------------------------------------------------------------------- the archive


def test_archive_keeps_the_newest_snapshot_and_each_event_once(game_session):
    from memory.archive import archive_cards

    sid = game_session["id"]
    baker = _entry(game_session["world_id"], "baker_27")
    ev = {"event_id": f"{sid}:r0", "card": "relationship", "kind": "gift", "turn_id": "t1", "seq": 1,
          "detail": "Rye.", "trust_delta": 1, "affinity_delta": 2, "applied_at": time.time()}
    with session_scope() as s:
        first = archive_cards(s, sid, baker.id, {"relationship": {"rev": 2, "trust": 5},
                                                 "quest": {"rev": 1}}, [ev])
    with session_scope() as s:  # late and repeated deliveries
        late = archive_cards(s, sid, baker.id, {"relationship": {"rev": 1, "trust": 1}}, [ev])
    assert first == {"snapshots": 2, "events": 1} and late == {"snapshots": 0, "events": 0}
    with session_scope() as s:
        rows = {c.kind: (c.rev, c.card) for c in s.scalars(select(NpcCard).where(NpcCard.session_id == sid))}
        events = s.scalars(select(CardEvent).where(CardEvent.session_id == sid)).all()
    assert rows == {"relationship": (2, {"rev": 2, "trust": 5}), "quest": (1, {"rev": 1})}
    assert [(e.event_id, e.kind, e.turn_id, e.seq, e.data["trust_delta"]) for e in events] == [
        (f"{sid}:r0", "gift", "t1", 1, 1)]
    with session_scope() as s, pytest.raises(ValueError, match="card kind"):
        archive_cards(s, sid, baker.id, {"mood": {"rev": 1}}, [])


# --------------------------------------------------------------------------- model stand-in


def _analysis(relationship: list, quests: list) -> str:
    return json.dumps({"updates": [], "creations": [], "relationship": relationship, "quests": quests})


def _status(task_id: str) -> str | None:
    with session_scope() as s:
        return s.scalar(select(TaskRecord.status).where(TaskRecord.task_id == task_id))


def _result(task_id: str) -> dict | None:
    with session_scope() as s:
        return s.scalar(select(TaskRecord.result).where(TaskRecord.task_id == task_id))


# --------------------------------------------------------------------------- dialogue, ops


@pytest.fixture(scope="module")
def client(light_world):
    from fastapi.testclient import TestClient

    from tests.procs import api_headers
    from workers.web import app

    with TestClient(app, headers=api_headers()) as c:
        yield c
    nearline.get_redis().delete("analysis", "archive")  # the turns' messages, never consumed


def test_turn_prompt_carries_the_cards_from_redis_without_sql(client, light_world):
    r = nearline.get_redis()
    sid = client.post("/v1/sessions", json={"world": light_world["key"]}).json()["session_id"]
    baker_id = nearline.resolve_key(r, light_world["id"], sid, "baker_27")
    mc.apply_events(r, sid, baker_id, [_rel("t1:r0", "saved_life", "Pulled you out of the burning oven.", 8)],
                    [_quest("t1:q0", "quest_started", "Rebuild the oven", "Find bricks.")])
    with FakeServer() as srv, _role_on(srv.url + "/v1", "generation"):
        srv.default = openai_chat("You saved my life, friend.")
        with sql_statements() as statements:
            res = client.post(f"/v1/sessions/{sid}/turns",
                              json={"npc_id": "baker_27", "player_text": "How is the oven?"})
        system = srv.posts("/v1/chat/completions")[0].body["messages"][0]["content"]
    assert res.status_code == 200, res.text
    assert statements == []
    section = system.split("[What you remember about the player]\n", 1)[1].split("\n\n", 1)[0]
    assert section == mc.render_cards(mc.get_cards(r, sid, baker_id),
                                      settings.get_settings().cards_prompt_chars)
    assert "The player saved your life: Pulled you out of the burning oven." in section
    assert "Rebuild the oven" in section
    assert len(section) <= settings.get_settings().cards_prompt_chars


def test_cards_route_and_cli_show_a_sessions_cards(client, light_world):
    from typer.testing import CliRunner

    from workers.cli import cli

    r = nearline.get_redis()
    sid = client.post("/v1/sessions", json={"world": light_world["key"]}).json()["session_id"]
    baker_id = nearline.resolve_key(r, light_world["id"], sid, "baker_27")
    mc.apply_events(r, sid, baker_id, [_rel("t1:r0", "gift", "A jar of honey.", 2)])
    res = client.get(f"/v1/sessions/{sid}/cards/baker_27")
    assert res.status_code == 200, res.text
    body = res.json()
    assert (body["npc_entry_id"], body["npc_id"]) == (baker_id, "baker_27")
    assert body["relationship"]["gifts"][0]["text"] == "A jar of honey."
    assert body["quest"] == mc.QuestCard().model_dump(exclude_none=True)
    assert 0 < body["bytes"]["relationship"] <= mc.MAX_CARD_BYTES
    assert body["prompt"].startswith("Trust in the player: +2 of 100")
    assert [e["event_id"] for e in body["events"]] == ["t1:r0"]
    assert client.get(f"/v1/sessions/{sid}/cards/baker_27", params={"events": 0}).json()["events"] == []
    assert client.get(f"/v1/sessions/{uuid.uuid4().hex}/cards/baker_27").status_code == 404
    missing = client.get(f"/v1/sessions/{sid}/cards/nobody_999")
    assert missing.status_code == 404 and "nobody_999" in missing.json()["detail"]
    assert client.get(f"/v1/sessions/{sid}/cards/baker_27", params={"events": -1}).status_code == 422
    assert "get" in client.get("/openapi.json").json()["paths"]["/v1/sessions/{session_id}/cards/{npc_id}"]

    runner = CliRunner()
    out = runner.invoke(cli, ["show-cards", sid, "baker_27"])
    assert out.exit_code == 0, out.output
    assert json.loads(out.stdout)["relationship"] == body["relationship"]
    bad = runner.invoke(cli, ["show-cards", sid, "nobody_999"])
    assert bad.exit_code == 1 and "nobody_999" in bad.output


# --------------------------------------------------------------------------- analysis task
# (last in this file: the worker it starts would otherwise run the analyses of the turns above)


def test_analyze_turn_applies_card_events_once_and_archives_them(worker, celery_app, game_session,
                                                                  wait_for):
    """Through the real worker: the analysis's relationship and quest events land on the NPC's
    cards and in the archive; a redelivery whose model answer differs changes nothing."""
    sid = game_session["id"]
    baker = _entry(game_session["world_id"], "baker_27")
    turn = {"turn_id": uuid.uuid4().hex, "session_id": sid, "world_id": game_session["world_id"],
            "seq": 3, "npc_entry_id": baker.id, "player_text": "Here is flour, and I swear to find your pin.",
            "npc_text": "Bless you. Look for it in the crypt.", "latency_ms": 1.0, "created_at": time.time()}
    first = _analysis([{"kind": "gift", "detail": "The player gave the baker flour.", "intensity": 3},
                       {"kind": "promise_made", "detail": "The player swore to find the rolling pin.",
                        "intensity": 2}],
                      [{"kind": "quest_started", "name": "The lost rolling pin",
                        "detail": "Look in the crypt."}])
    second = _analysis([{"kind": "insult", "detail": "The player mocked the baker.", "intensity": 9}], [])
    with FakeServer() as srv, _role_on(srv.url + "/v1", "analysis"):
        srv.script(openai_chat(first), openai_chat(second))
        t1 = celery_app.send_task("npc_memory.analyze_turn", kwargs=turn).id
        wait_for(lambda: _status(t1) in ("succeeded", "dead"), timeout=120)
        t2 = celery_app.send_task("npc_memory.analyze_turn", kwargs=turn).id  # redelivery
        wait_for(lambda: _status(t2) in ("succeeded", "dead"), timeout=120)
        sent = srv.posts("/v1/chat/completions")
    assert (_status(t1), _status(t2)) == ("succeeded", "succeeded")
    assert _result(t1)["card_events"] == 3 and _result(t2)["card_events"] == 0
    assert _result(t2)["card_duplicates"] == 1  # the insult's id (r0) was the gift's
    # the second analysis was told about the open promise and the active quest
    assert ("Known between the player and" in sent[1].body["messages"][1]["content"]
            and "The player swore to find the rolling pin" in sent[1].body["messages"][1]["content"])
    cards = mc.get_cards(nearline.get_redis(), sid, baker.id)
    rel = cards.relationship
    assert (rel.trust, rel.affinity, rel.counts) == (3, 6, {"gift": 1, "promise_made": 1})
    assert [(p.text, p.turn, p.seq) for p in rel.promises] == [
        ("The player swore to find the rolling pin.", turn["turn_id"], 3)]
    assert [q.name for q in cards.quest.quests] == ["The lost rolling pin"]

    def archived():
        with session_scope() as s:
            return s.scalar(select(func.count()).select_from(CardEvent).where(
                CardEvent.turn_id == turn["turn_id"])) == 3 and s.scalar(
                select(func.count()).select_from(NpcCard).where(NpcCard.session_id == sid)) == 2
    wait_for(archived, timeout=60)
    with session_scope() as s:
        kinds = sorted(s.scalars(select(CardEvent.kind).where(CardEvent.turn_id == turn["turn_id"])))
        snap = s.scalar(select(NpcCard).where(NpcCard.session_id == sid, NpcCard.kind == "relationship"))
    assert kinds == ["gift", "promise_made", "quest_started"]  # the insult was never applied
    assert snap.rev == rel.rev and snap.card["trust"] == 3


def test_analyze_turn_with_a_corrupt_card_is_dead_lettered_and_the_card_kept(worker, celery_app,
                                                                             game_session, wait_for):
    from models import DeadLetter

    sid = game_session["id"]
    baker = _entry(game_session["world_id"], "baker_27")
    r = nearline.get_redis()
    r.set(rkeys.card(sid, baker.id, "relationship"), "{not json")
    turn = {"turn_id": uuid.uuid4().hex, "session_id": sid, "world_id": game_session["world_id"],
            "seq": 1, "npc_entry_id": baker.id, "player_text": "Take this bread, friend.",
            "npc_text": "Thank you.", "latency_ms": 1.0, "created_at": time.time()}
    with FakeServer() as srv, _role_on(srv.url + "/v1", "analysis"):
        srv.default = openai_chat(_analysis(
            [{"kind": "gift", "detail": "The player gave the baker bread.", "intensity": 2}], []))
        t = celery_app.send_task("npc_memory.analyze_turn", kwargs=turn).id
        wait_for(lambda: _status(t) in ("succeeded", "dead"), timeout=120)
    assert _status(t) == "dead"
    with session_scope() as s:
        dl = s.scalar(select(DeadLetter).where(DeadLetter.task_id == t))
    assert "CardCorrupt" in dl.error and "relationship" in dl.error and dl.payload == turn
    assert r.get(rkeys.card(sid, baker.id, "relationship")) == b"{not json"
    assert r.hlen(rkeys.card_applied(sid, baker.id)) == 0
