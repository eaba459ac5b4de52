"""Session notes (``memory.notes.apply_note_update``): versions and revisions, idempotency
keys, write fencing of concurrent updates, rewriter failures and bad rewrites, and coalescing
of queued updates of one note into one rewrite."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from sqlalchemy import select

from memory.db import session_scope
from memory.notes import MAX_NOTE_CHARS, apply_note_update
from models import LoreEntry, SessionNote, SessionNoteRevision


def _entry(world_id: int, key: str) -> LoreEntry:
    with session_scope() as s:
        return s.scalar(select(LoreEntry).where(LoreEntry.world_id == world_id, LoreEntry.key == key))


def _revisions(note_id: int) -> list[SessionNoteRevision]:
    with session_scope() as s:
        return list(s.scalars(select(SessionNoteRevision).where(SessionNoteRevision.note_id == note_id)
                              .order_by(SessionNoteRevision.version)))


def _note(session_id: str, entry_id: int) -> SessionNote | None:
    with session_scope() as s:
        return s.scalar(select(SessionNote).where(SessionNote.session_id == session_id,
                                                  SessionNote.lore_entry_id == entry_id))


def _appending(calls: list | None = None):
    def rewrite(title, lore, note, event):
        if calls is not None:
            calls.append((title, lore, note, event))
        return (f"{note} {event}".strip(), 3)
    return rewrite


def test_first_update_creates_version_1_and_duplicate_is_a_noop(game_session, light_world):
    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    calls: list = []
    key = f"test:{uuid.uuid4().hex}"
    with session_scope() as s:
        first = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                  event="The player bought bread.", idempotency_key=key,
                                  rewrite=_appending(calls), turn_id="t1", task_id="task1")
    assert first.status == "written"
    assert first.version == 1 and first.before == "" and first.after == "The player bought bread."
    assert first.tokens == 3
    assert calls == [(baker.title, baker.content, "", "The player bought bread.")]
    note = _note(sid, baker.id)
    assert note.version == 1 and note.content == "The player bought bread."
    assert note.last_updated_turn_id == "t1"
    revs = _revisions(note.id)
    assert [(r.version, r.previous_content, r.content, r.event_summary, r.turn_id, r.task_id, r.cause)
            for r in revs] == [(1, "", "The player bought bread.", "The player bought bread.",
                                "t1", "task1", "turn")]

    with session_scope() as s:
        again = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                  event="The player bought bread.", idempotency_key=key,
                                  rewrite=_appending(calls))
    assert again.status == "duplicate"
    assert again.version == 1 and again.after == "The player bought bread."
    assert len(calls) == 1  # the rewriter is not asked again
    assert len(_revisions(note.id)) == 1
    assert _note(sid, baker.id).version == 1
    with session_scope() as s:  # base lore is never written
        assert s.get(LoreEntry, baker.id).content == baker.content


def test_second_update_builds_on_the_first(game_session, light_world):
    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    for event in ("The player bought bread.", "The player paid in silver."):
        with session_scope() as s:
            apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event=event,
                              idempotency_key=uuid.uuid4().hex, rewrite=_appending())
    note = _note(sid, baker.id)
    assert note.version == 2
    assert note.content == "The player bought bread. The player paid in silver."
    revs = _revisions(note.id)
    assert [r.version for r in revs] == [1, 2]
    assert revs[1].previous_content == revs[0].content


def test_concurrent_updates_are_fenced_and_both_land(game_session, light_world):
    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    both_read = threading.Barrier(2)
    seen: dict[str, list[str]] = {"A": [], "B": []}
    results: dict[str, object] = {}
    errors: list[BaseException] = []

    def run(name: str, event: str) -> None:
        def rewrite(title, lore, note, ev):
            seen[name].append(note)
            if len(seen[name]) == 1:
                both_read.wait(timeout=30)  # both threads hold the same version before writing
            time.sleep(0.3)
            return (f"{note} {ev}".strip(), 1)

        try:
            with session_scope() as s:  # one DB session per thread
                results[name] = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                                  event=event, idempotency_key=uuid.uuid4().hex,
                                                  rewrite=rewrite)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=("A", "The oven broke at dawn.")),
               threading.Thread(target=run, args=("B", "A cat stole a loaf."))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert {r.status for r in results.values()} == {"written"}
    assert sorted(r.version for r in results.values()) == [1, 2]
    # both read version 0 first; the one that lost the race rewrote from the fresh note
    assert seen["A"][0] == "" and seen["B"][0] == ""
    assert sorted(len(v) for v in seen.values()) == [1, 2]

    note = _note(sid, baker.id)
    assert note.version == 2
    assert "The oven broke at dawn." in note.content
    assert "A cat stole a loaf." in note.content
    revs = _revisions(note.id)
    assert [r.version for r in revs] == [1, 2]
    assert revs[1].previous_content == revs[0].content
    assert revs[1].content == note.content


def test_rewriter_failure_leaves_note_unchanged(game_session, light_world):
    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    with session_scope() as s:
        apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event="The player waved.",
                          idempotency_key=uuid.uuid4().hex, rewrite=_appending())

    def broken(title, lore, note, event):
        raise RuntimeError("model down")

    failed_key = uuid.uuid4().hex
    with pytest.raises(RuntimeError, match="model down"):
        with session_scope() as s:
            apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                              event="The player shouted.", idempotency_key=failed_key,
                              rewrite=broken)
    note = _note(sid, baker.id)
    assert note.version == 1 and note.content == "The player waved."
    assert len(_revisions(note.id)) == 1
    # the failed update was not recorded as done: a retry with the same key writes
    with session_scope() as s:
        retry = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                  event="The player shouted.", idempotency_key=failed_key,
                                  rewrite=_appending())
    assert retry.status == "written" and retry.version == 2


def test_update_of_unknown_entry_raises_lookup_error(game_session):
    with session_scope() as s:
        with pytest.raises(LookupError):
            apply_note_update(s, session_id=game_session["id"], lore_entry_id=10**9,
                              event="x", idempotency_key=uuid.uuid4().hex, rewrite=_appending())


@pytest.mark.parametrize("bad_rewrite, reason", [
    ("New Session Note:", "empty rewrite"), ("   ", "empty rewrite"),
    ("x" * 1201, "rewrite of 1201 characters over the 1200-character cap")],
    ids=["label-only", "blank", "over-cap"])
def test_empty_or_oversized_rewrite_appends_the_event_and_keeps_the_note(
        game_session, light_world, bad_rewrite, reason):
    assert len("x" * 1201) > MAX_NOTE_CHARS
    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    with session_scope() as s:
        apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event="The player waved.",
                          idempotency_key=uuid.uuid4().hex, rewrite=_appending())
    key = uuid.uuid4().hex
    with session_scope() as s:
        res = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                event="The player shouted a greeting.", idempotency_key=key,
                                rewrite=lambda *a: (bad_rewrite, 0), game_minutes=24 * 60 + 65)
    assert (res.status, res.mode, res.reason) == ("written", "appended", reason)
    note = _note(sid, baker.id)
    assert note.version == 2
    assert note.content == "The player waved.\n[Day 2, 01:05] The player shouted a greeting."
    with session_scope() as s:
        rev = s.scalar(select(SessionNoteRevision).where(SessionNoteRevision.idempotency_key == key))
    assert rev.previous_content == "The player waved." and rev.content == note.content


def test_coalescing_folds_queued_updates_into_one_rewrite(game_session, light_world):
    """Three updates queued for one note: the first rewrite folds all three (one model call,
    events in turn order); the other two tasks then find their events applied."""
    from memory.notes import PendingEvent

    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    keys = [f"co:{uuid.uuid4().hex}:{n}" for n in range(3)]
    queued = [PendingEvent(keys[2], "The baker burnt the rye.", None, "turn", 3.0),
              PendingEvent(keys[1], "The baker sold a pie.", None, "turn", 2.0),
              PendingEvent(keys[0], "The baker opened early.", None, "turn", 1.0)]
    seen = []

    def rewrite(title, lore, note, event):
        seen.append(event)
        return f"{note} {event}".strip(), 5

    with session_scope() as s:
        first = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                  event="The baker opened early.", idempotency_key=keys[0],
                                  rewrite=rewrite, pending=lambda: queued)
    assert first.status == "written" and set(first.folded) == set(keys)
    assert seen == ["1. The baker opened early.\n2. The baker sold a pie.\n3. The baker burnt the rye."]
    for key, text in ((keys[1], "The baker sold a pie."), (keys[2], "The baker burnt the rye.")):
        with session_scope() as s:
            res = apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event=text,
                                    idempotency_key=key, rewrite=rewrite, pending=lambda: queued)
        assert res.status == "coalesced" and res.version == first.version
    assert len(seen) == 1  # two model calls saved
    note = _note(sid, baker.id)
    assert note.version == 1 and "burnt the rye" in note.content


def test_coalescing_skips_events_already_applied(game_session, light_world):
    from memory.notes import PendingEvent

    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    a, b = f"a:{uuid.uuid4().hex}", f"b:{uuid.uuid4().hex}"
    with session_scope() as s:
        apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event="Event A.",
                          idempotency_key=a, rewrite=_appending())
    seen = []

    def rewrite(title, lore, note, event):
        seen.append(event)
        return f"{note} {event}", 1

    stale = [PendingEvent(a, "Event A.", None, "turn", 1.0)]  # still listed, already applied
    with session_scope() as s:
        res = apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event="Event B.",
                                idempotency_key=b, rewrite=rewrite, pending=lambda: stale)
    assert seen == ["Event B."] and res.folded == (b,)
    assert _note(sid, baker.id).content.count("Event A.") == 1


def test_fifty_concurrent_updates_to_one_note_all_land(game_session, light_world):
    """50 updates of one note from 8 concurrent writers (own DB sessions): version fencing
    re-runs the losers, so every event is in the note and the history has 50 revisions."""
    from concurrent.futures import ThreadPoolExecutor

    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    events = [f"Event number {n}." for n in range(50)]

    def rewrite(title, lore, note, event):
        time.sleep(0.01)
        return f"{note} {event}".strip(), 1

    def one(event):
        with session_scope() as s:
            return apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event=event,
                                     idempotency_key=f"c50:{sid}:{event}", rewrite=rewrite,
                                     max_attempts=200).status

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, events))
    assert statuses == ["written"] * 50
    note = _note(sid, baker.id)
    assert note.version == 50
    assert all(e in note.content for e in events)
    with session_scope() as s:
        revs = s.scalars(select(SessionNoteRevision).where(SessionNoteRevision.note_id == note.id)
                         .order_by(SessionNoteRevision.version)).all()
    assert [r.version for r in revs] == list(range(1, 51))
    assert sorted(r.event_summary for r in revs) == sorted(events)
    assert all(revs[i].previous_content == revs[i - 1].content for i in range(1, 50))
