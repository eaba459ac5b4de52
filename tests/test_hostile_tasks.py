"""Hostile payloads through every public task on the real Celery worker (``worker`` fixture,
real broker and database): each message ends as a success or as a dead letter with a reason,
never silently dropped. Two sets: a fixed, deterministic list (every field of every task's
payload gets one hostile value in turn: NUL, lone surrogates, 100 KB strings, NaN,
infinities, huge integers, nested junk; plus an unknown junk field and an oversized task id),
and a hypothesis property test (arbitrary strings and numbers in any of the fields of every
task's payload, a bounded, derandomized number of examples). Base payloads name things that
do not exist, so a payload that passes validation fails fast (or succeeds) without calling a
model."""

from __future__ import annotations

import json
import time
import uuid

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from sqlalchemy import select

from memory.db import session_scope
from models import DeadLetter, LoreEntry, TaskRecord, Turn
from tasks.base import storable_id
from contract.registry import TASKS

NESTED_JUNK = {"nested": [{"deep": [float("nan"), "\x00", "\udfff", 2**70, {"x": [[[]]]}]}]}
HOSTILE = [
    "nul\x00inside", "\ud800lone", "x" * 100_000, float("nan"), float("inf"), float("-inf"),
    2**70, -(2**63) - 1, NESTED_JUNK, ["\x00"] * 3, "", "   ", 10**30, "\udfff" * 10,
]
"""Hostile values: each field of each payload gets the next one in turn."""

MISSING = 987_654_321  # an id no row has


def _base(name: str) -> dict:
    """A payload of task ``name`` that validates and names nothing that exists."""
    sid = f"hostile-{uuid.uuid4().hex[:16]}"
    turn = {"turn_id": uuid.uuid4().hex, "session_id": sid, "world_id": MISSING, "seq": 1,
            "npc_entry_id": MISSING, "player_text": "hi", "npc_text": "", "created_at": 1.0}
    return {
        "npc_memory.analyze_turn": turn,
        "npc_memory.archive_turn": turn,
        "npc_memory.update_note": {"session_id": sid, "lore_entry_key": "nobody",
                                   "update_summary": "u", "idempotency_key": uuid.uuid4().hex},
        "npc_memory.create_entity": {"session_id": sid, "entity_type": "item",
                                     "creation_summary": "c", "idempotency_key": uuid.uuid4().hex},
        "npc_memory.embed": {"lore_entry_id": MISSING, "session_id": sid},
        "npc_memory.embed_evidence": {"turn_ids": [uuid.uuid4().hex]},
        "npc_memory.archive_cards": {"session_id": sid, "npc_entry_id": MISSING, "cards": {}},
        "npc_memory.simulate_world": {"session_id": sid, "tick_id": uuid.uuid4().hex},
        "npc_memory.world_tick": {"world_id": MISSING},
        "npc_memory.reconcile": {"older_than_s": 3600.0},
        "npc_memory.summarize_session": {"session_id": sid, "upto_seq": 1},
    }[name]


def _cases() -> list[tuple[str, dict, str]]:
    """``(task name, kwargs, task id)`` for every task: one case per payload field with the
    next hostile value, one with an unknown junk field, and (for a plain and a batch task) a
    100,000-character task id."""
    cases, i = [], 0
    for name, model in sorted((n.value, s.payload) for n, s in TASKS.items()):
        assert set(_base(name)) <= set(model.model_fields), name
        for field in model.model_fields:
            kwargs = _base(name)
            kwargs[field] = HOSTILE[i % len(HOSTILE)]
            i += 1
            cases.append((name, kwargs, uuid.uuid4().hex))
        cases.append((name, {**_base(name), "junk\x00": NESTED_JUNK}, uuid.uuid4().hex))
    for name in ("npc_memory.reconcile", "npc_memory.archive_turn"):
        cases.append((name, _base(name), uuid.uuid4().hex + "t" * 100_000))
    return cases


def _outcomes(task_ids: list[str]) -> dict[str, tuple[str, str | None]]:
    """Ledger status and dead-letter error of each task id that has reached an end."""
    with session_scope() as s:
        status = dict(s.execute(select(TaskRecord.task_id, TaskRecord.status)
                                .where(TaskRecord.task_id.in_(task_ids))).all())
        errors = dict(s.execute(select(DeadLetter.task_id, DeadLetter.error)
                                .where(DeadLetter.task_id.in_(task_ids))).all())
    return {t: (status[t], errors.get(t)) for t in task_ids
            if status.get(t) == "succeeded" or (status.get(t) == "dead" and t in errors)}


def _send_and_wait(celery_app, messages, timeout_s: float = 90) -> tuple[list, dict]:
    """Send ``(task name, kwargs, task id)`` messages and wait up to ``timeout_s`` for each to
    reach an outcome (:func:`_outcomes`); returns ``(sent, outcomes)``, ``sent`` as
    ``(task name, stored task id)``. Fails naming the messages that reached none."""
    sent = []
    for name, kwargs, task_id in messages:
        celery_app.send_task(name, kwargs=kwargs, task_id=task_id)
        sent.append((name, storable_id(task_id)))
    ids = [t for _, t in sent]
    deadline = time.monotonic() + timeout_s
    done: dict = {}
    while time.monotonic() < deadline:
        done = _outcomes(ids)
        if len(done) == len(ids):
            break
        time.sleep(0.2)
    missing = [(n, t) for n, t in sent if t not in done]
    assert not missing, f"{len(missing)} messages without an outcome: {missing[:5]}"
    return sent, done


def test_hostile_payloads_end_succeeded_or_dead_lettered_with_a_reason(worker, celery_app):
    cases = _cases()
    assert len(cases) < 120  # bounded
    sent, done = _send_and_wait(celery_app, cases)
    ids = [t for _, t in sent]
    assert len(set(ids)) == len(ids)
    for name, task_id in sent:
        status, error = done[task_id]
        if status == "dead":
            assert error and error.strip(), (name, task_id)
    with session_scope() as s:  # every stored payload is valid JSON for PostgreSQL's json
        for dl in s.scalars(select(DeadLetter).where(DeadLetter.task_id.in_(ids))):
            json.dumps(dl.payload, allow_nan=False)
    long_ids = [storable_id(t) for _, _, t in cases if len(t) > 200]
    assert len(long_ids) == 2
    assert all("invalid task id" in done[t][1] for t in long_ids)
    dead = sum(1 for s_, _ in done.values() if s_ == "dead")
    assert dead >= len(ids) // 2  # most hostile payloads are refused, with a reason


def test_a_queued_turn_with_nul_is_archived_not_dead_lettered(worker, celery_app, game_session):
    with session_scope() as s:
        npc_id = s.scalar(select(LoreEntry.id).where(
            LoreEntry.world_id == game_session["world_id"], LoreEntry.key == "baker_27"))
    turn = {"turn_id": uuid.uuid4().hex, "session_id": game_session["id"],
            "world_id": game_session["world_id"], "seq": 1, "npc_entry_id": npc_id,
            "player_text": "hello\x00world", "npc_text": "bread\x00", "latency_ms": 1.0,
            "created_at": time.time()}
    task_id = celery_app.send_task("npc_memory.archive_turn", kwargs=turn).id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and _outcomes([task_id]) == {}:
        time.sleep(0.2)
    assert _outcomes([task_id]) == {task_id: ("succeeded", None)}
    with session_scope() as s:
        row = s.get(Turn, turn["turn_id"])
        assert row.player_text == "hello\ufffdworld" and row.npc_text == "bread\ufffd"


# --------------------------------------------------------------------------- property test

HOSTILE_TEXT = st.text(max_size=200) | st.builds(
    lambda a, c, b: a + c + b, st.text(max_size=50),
    st.sampled_from(["\x00", "\ud800", "\udfff", "\ufffe", "\U0010ffff"]), st.text(max_size=50))
HOSTILE_NUMBER = st.floats(allow_nan=True, allow_infinity=True) | st.integers()
ROW_IDS = ("world_id", "npc_entry_id", "lore_entry_id")
"""Payload fields that name a row: a drawn value that validates to an id is replaced by one
no row has, so that no payload reaches the model or fans out to the test's sessions."""
HOSTILE_VALUE = (HOSTILE_TEXT | HOSTILE_NUMBER | st.none() | st.booleans()
                 | st.lists(HOSTILE_TEXT | HOSTILE_NUMBER, max_size=3))
PROPERTY_EXAMPLES = 12
"""Hypothesis examples; each sends one message to every public task."""


@st.composite
def hostile_payloads(draw) -> list[tuple[str, dict]]:
    """``(task name, kwargs)`` for every public task: its base payload with any of its fields
    replaced by an arbitrary string or number (or list of them, or null)."""
    out = []
    for name, model in sorted((n.value, s.payload) for n, s in TASKS.items()):
        kwargs = _base(name)
        for field in model.model_fields:
            if draw(st.booleans()):
                kwargs[field] = draw(HOSTILE_VALUE)
        try:
            valid = model.model_validate(kwargs)
        except ValidationError:  # refused as a whole: the hostile values stay
            valid = None
        for field in set(ROW_IDS) & set(model.model_fields) if valid is not None else ():
            value = getattr(valid, field)
            # an id that may exist (1, True, 1.0, "1"), or a tick of every world
            if (value is None and name == "npc_memory.world_tick") or (
                    value is not None and 0 < value < 2**31):
                kwargs[field] = MISSING
        out.append((name, kwargs))
    return out


@settings(max_examples=PROPERTY_EXAMPLES, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(payloads=hostile_payloads())
def test_arbitrary_payloads_end_succeeded_or_dead_lettered(worker, celery_app, payloads):
    sent, done = _send_and_wait(
        celery_app, [(name, kwargs, uuid.uuid4().hex) for name, kwargs in payloads])
    ids = [t for _, t in sent]
    for name, task_id in sent:
        status, error = done[task_id]
        assert status == "succeeded" or (error and error.strip()), (name, task_id)
    with session_scope() as s:
        for dl in s.scalars(select(DeadLetter).where(DeadLetter.task_id.in_(ids))):
            json.dumps(dl.payload, allow_nan=False)
