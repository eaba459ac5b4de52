"""Conservative, evidence-backed session notes: a rewrite replaces the note only when it keeps
what the note knew, states the event, echoes no prompt and invents no name; otherwise the
event is appended as a dated line. Revisions name their turns; contradictions keep the past
fact marked; notes stay under the cap. The last test runs the real model through Celery."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import select

from memory import nearline
from memory.db import session_scope
from memory.knowledge import statements, supersede
from memory.notes import (
    MAX_NOTE_CHARS,
    PendingEvent,
    apply_note_update,
    compose_note,
    note_turn_ids,
)
from memory.retention import check_rewrite, coverage, invented_names, prompt_echo, terms
from models import AppliedNoteEvent, LoreEntry, SessionNote, SessionNoteRevision, TaskRecord

DAY3_0900 = 2 * 24 * 60 + 9 * 60  # in-game minutes: day 3, 09:00


def _entry(world_id: int, key: str) -> LoreEntry:
    with session_scope() as s:
        return s.scalar(select(LoreEntry).where(LoreEntry.world_id == world_id, LoreEntry.key == key))


def _note(sid: str, entry_id: int) -> SessionNote:
    with session_scope() as s:
        return s.scalar(select(SessionNote).where(SessionNote.session_id == sid,
                                                  SessionNote.lore_entry_id == entry_id))


def _returns(text: str):
    return lambda title, lore, note, event: (text, 7)


def _seed(sid: str, entry_id: int, text: str, turn_id: str = "t-seed") -> None:
    """A first note equal to ``text`` (the event itself, accepted as a first note)."""
    with session_scope() as s:
        res = apply_note_update(s, session_id=sid, lore_entry_id=entry_id, event=text,
                                idempotency_key=f"seed:{uuid.uuid4().hex}", turn_id=turn_id,
                                rewrite=_returns(text))
    assert (res.mode, res.after) == ("rewritten", text)


# --------------------------------------------------------------------------- the measures


def test_coverage_weighs_names_double_and_stems_words():
    required = terms("Mira lives in Rome. She owes the player 3 coins.")
    assert required.names == {"mira", "rome", "3"}
    assert required.words == {"liv", "ow", "player", "coin"}
    # all names kept, "lives" -> "lived" and "coins" -> "coin" match by stem
    assert coverage(required, "Mira lived in Rome and owed the player 3 coin.") == 1.0
    # Rome dropped: (2*2 + 4) / (2*3 + 4)
    assert coverage(required, "Mira lives with the player and owes 3 coins.") == pytest.approx(0.8)
    # a pronoun for the entry itself: its title's tokens count as present
    assert coverage(required, "She lives in Rome and owes the player 3 coins.",
                    implied=frozenset({"mira"})) == 1.0
    assert coverage(terms(""), "anything") == 1.0


def test_in_game_times_are_evidence_and_cannot_be_invented():
    note = "[Day 1, 08:00] Mira bought bread.\n[Day 1, 09:00] Tobias bought a pie."
    assert {"day 1, 08:00", "day 1, 09:00"} <= terms(note).names
    undated = "Mira bought bread and Tobias bought a pie."
    # names mira, tobias and the two times (weight 2 each), words bought, bread, pie
    assert coverage(terms(note), undated) == pytest.approx(7 / 11)  # the two times lost
    assert coverage(terms(note, with_times=False), undated) == 1.0
    assert coverage(terms(note), "On day 1, 8:00 Mira bought bread; at Day 1, 09:00 Tobias "
                                 "bought a pie.") == 1.0
    assert invented_names("[Day 1, 20:35] Mira bought bread.", note) == ["Day 1, 20:35"]
    verdict = check_rewrite(note, note + "\n[Day 1, 10:00] The baker closed the shop.",
                            ["The baker closed the shop."], title="Baker", lore="",
                            retention_min=0.75, event_min=0.5, event_times=["Day 1, 10:00"])
    assert verdict.ok, verdict


def test_prompt_echo_and_invented_names_are_found():
    assert prompt_echo("[Entity] The baker smiled.") == "[Entity]"
    assert prompt_echo("The new event has created a character named Tobias.") == "The new event"
    assert prompt_echo("GINNA: GREAT IDEA! (location)") == "(location)"
    assert prompt_echo("The baker sold three loaves to Mira.") is None
    assert invented_names("Guggle sold bread to Mira on Day 2.", "Mira bought bread.") == ["Guggle"]
    assert invented_names("The baker sold 3 loaves to MIRA.", "Mira bought bread.") == []


def test_lexicon_reads_relation_subject_and_object():
    [st] = statements("Mira lives in Rome.", "Mira")
    assert (st.relation, st.subject, st.obj) == ("residence", "self", frozenset({"rom"}))
    [st] = statements("[Day 2, 10:00] Her brother moved to Paris", "Mira")
    assert (st.relation, st.subject) == ("residence", "brother")
    [st] = statements("The baker sold the silver lute.", "Baker")
    assert (st.relation, st.subject, st.polarity) == ("possession", "self", "-")
    assert statements("The baker is a kind old man.", "Baker") == []  # "is a" + two words


def test_supersede_marks_only_the_conflicting_fact():
    lines = ["Mira lives in Rome. She owes the player 3 coins.", "Mira owns a silver lute."]
    out, old = supersede(lines, "Mira moved to Paris.", "Mira", "Day 3, 09:00")
    assert old == ["Mira lives in Rome."]
    assert out == ["Formerly (until Day 3, 09:00): Mira lives in Rome. She owes the player 3 coins.",
                   "Mira owns a silver lute."]
    out, old = supersede(lines, "Mira sold the lute.", "Mira", None)
    assert out[1] == "Formerly: Mira owns a silver lute." and old == ["Mira owns a silver lute."]
    # same value again, another possession, another subject: nothing superseded
    for event in ("Mira still lives in Rome.", "Mira owns a horse.", "Tobias moved to Paris."):
        assert supersede(lines, event, "Mira", "Day 3, 09:00") == (lines, [])


# --------------------------------------------------------------------------- composing


def _compose(before: str, rewrite, *events: tuple[str, int | None], consolidate=None,
             max_chars: int = MAX_NOTE_CHARS):
    pend = [PendingEvent(f"k{n}", text, f"t{n}", game_minutes=m)
            for n, (text, m) in enumerate(events)]
    return compose_note(title="Baker", lore="A baker of the Town Square.", before=before,
                        events=pend, rewrite=rewrite, consolidate=consolidate,
                        retention_min=0.75, event_min=0.5, max_chars=max_chars)


@pytest.mark.parametrize("bad, reason", [
    ("The baker owes Mira 3 coins. [Entity] Mira sold rye bread to the baker.",
     "prompt echo '[Entity]'"),
    ("The new event has created a character. The baker owes Mira 3 coins.",
     "prompt echo 'The new event'"),
    ("The baker owes Guggle 3 coins and sold rye bread to Goggled.", "invented name 'Guggle'"),
    ("GINNA: GREAT IDEA!", "invented name 'GINNA'"),
])
def test_echo_and_invented_names_are_refused_and_the_event_appended(bad, reason):
    before = "The baker owes Mira 3 coins."
    out = _compose(before, _returns(bad), ("Mira sold rye bread to the baker.", 90))
    assert (out.mode, out.reason) == ("appended", reason)
    assert out.text == "The baker owes Mira 3 coins.\n[Day 1, 01:30] Mira sold rye bread to the baker."


def test_consolidation_under_the_cap_is_accepted_when_it_keeps_the_facts():
    before = "\n".join(f"[Day 1, {h:02d}:00] The baker sold rye bread to Mira." for h in range(8))
    assert len(before) < 400
    asked = []

    def consolidate(title, lore, note, max_chars):
        asked.append((note, max_chars))
        return ("From Day 1, 00:00 to Day 1, 07:00 the baker sold rye bread to Mira every hour.\n"
                "[Day 1, 08:00] The baker burnt the oven.", 11)

    out = _compose(before, _returns(""), ("The baker burnt the oven.", 8 * 60),
                   consolidate=consolidate, max_chars=400)
    assert asked and asked[0][1] == 400 and asked[0][0].endswith("[Day 1, 08:00] The baker burnt the oven.")
    assert (out.mode, out.consolidated, out.dropped) == ("appended", True, 0)
    assert len(out.text) <= 400 and "burnt the oven" in out.text and "Mira" in out.text
    assert out.tokens == 7 + 11


def _model_down(title, lore, note, max_chars):
    raise ConnectionError("model server down")


@pytest.mark.parametrize("consolidate, why", [
    (None, "no consolidator"), (_returns("The baker is happy."), "retention 0."),
    (_returns("x" * 500), "500 characters over the 400-character cap"),
    (_model_down, "ConnectionError: model server down")],
    ids=["none", "loses-facts", "over-cap", "model-down"])
def test_refused_consolidation_drops_the_oldest_lines_to_fit(consolidate, why):
    before = "\n".join(f"[Day 1, {h:02d}:00] The baker sold loaf number {h} to Mira." for h in range(12))
    out = _compose(before, _returns(""), ("The baker burnt the oven.", 12 * 60),
                   consolidate=consolidate, max_chars=400)
    assert not out.consolidated and out.dropped > 0
    assert out.reason.startswith("empty rewrite; consolidation refused: " + why)
    assert len(out.text) <= 400
    lines = out.text.splitlines()
    assert lines[-1] == "[Day 1, 12:00] The baker burnt the oven."
    assert lines[-2] == "[Day 1, 11:00] The baker sold loaf number 11 to Mira."  # newest kept
    assert "loaf number 0 " not in out.text  # oldest dropped first
    assert len(lines) == 13 - out.dropped


# --------------------------------------------------------------------------- the note store


def test_failed_retention_appends_instead_of_overwriting(game_session, light_world):
    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    _seed(sid, baker.id, "The baker owes Mira 3 coins. He promised her a rye loaf.")
    with session_scope() as s:
        res = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                event="Tobias bought a pie from the baker.",
                                idempotency_key=uuid.uuid4().hex, turn_id="t-2",
                                game_minutes=24 * 60 + 14 * 60 + 5,
                                rewrite=_returns("Tobias bought a pie from the baker."))
    assert (res.status, res.mode) == ("written", "appended")
    assert res.reason.startswith("retention ") and res.reason.endswith(" < 0.75")
    assert res.after == ("The baker owes Mira 3 coins. He promised her a rye loaf.\n"
                         "[Day 2, 14:05] Tobias bought a pie from the baker.")
    assert _note(sid, baker.id).content == res.after
    assert res.turn_ids == ("t-2",)


def test_accepted_rewrite_keeps_the_facts_and_names_its_turns(game_session, light_world):
    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    _seed(sid, baker.id, "The baker owes Mira 3 coins.", turn_id="t-1")
    rewrite = "The baker owes Mira 3 coins, and Tobias bought a pie from him."
    with session_scope() as s:
        res = apply_note_update(
            s, session_id=sid, lore_entry_id=baker.id, event="Tobias bought a pie from the baker.",
            idempotency_key="own:" + uuid.uuid4().hex, turn_id="t-2", rewrite=_returns(rewrite),
            pending=lambda: [PendingEvent("q:" + sid, "Tobias paid in silver.", "t-3", order=1.0)])
    assert (res.mode, res.reason, res.after) == ("rewritten", "", rewrite)
    assert res.turn_ids == ("t-2", "t-3")
    with session_scope() as s:
        assert note_turn_ids(s, sid, baker.id) == ["t-1", "t-2", "t-3"]
        rev = s.scalar(select(SessionNoteRevision).where(SessionNoteRevision.note_id == res.note_id,
                                                         SessionNoteRevision.version == 2))
        folded = s.scalars(select(AppliedNoteEvent.turn_id).where(
            AppliedNoteEvent.revision_id == rev.id).order_by(AppliedNoteEvent.id)).all()
    assert folded == ["t-2", "t-3"]


def test_rollback_restores_the_turns_of_the_version_it_restores(game_session, light_world):
    from memory import ops

    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    _seed(sid, baker.id, "The baker owes Mira 3 coins.", turn_id="t-1")
    with session_scope() as s:
        apply_note_update(s, session_id=sid, lore_entry_id=baker.id, event="Mira paid him back.",
                          idempotency_key=uuid.uuid4().hex, turn_id="t-2",
                          rewrite=_returns("The baker owes Mira 3 coins. Mira paid him back."))
        assert note_turn_ids(s, sid, baker.id) == ["t-1", "t-2"]
    with session_scope() as s:
        res = ops.rollback_note(s, sid, "baker_27", 1)
    assert (res["status"], res["turn_ids"]) == ("written", ["t-1"])
    with session_scope() as s:
        assert note_turn_ids(s, sid, baker.id) == ["t-1"]
        assert note_turn_ids(s, sid, 10**9) == []


@pytest.mark.parametrize("model_says", [
    "",  # nothing usable: appended
    "The baker lives in the old mill. The baker moved to the harbour.",  # both in present tense
    "The baker moved to the harbour.",  # drops the superseded fact
], ids=["appended", "two-present-facts", "dropped-old-fact"])
def test_contradiction_keeps_the_past_fact_marked_and_states_the_new_one(
        game_session, light_world, model_says):
    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    _seed(sid, baker.id, "The baker lives in the old mill. He owes Mira 3 coins.")
    with session_scope() as s:
        res = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                event="The baker moved to the harbour.", game_minutes=DAY3_0900,
                                idempotency_key=uuid.uuid4().hex, rewrite=_returns(model_says))
    note = res.after
    assert "Formerly (until Day 3, 09:00): The baker lives in the old mill." in note
    assert "[Day 3, 09:00] The baker moved to the harbour." in note
    assert "He owes Mira 3 coins." in note
    # no present-tense statement of the old home is left
    present = [x for x in note.replace("\n", " ").split(". ") if "old mill" in x]
    assert all(x.startswith("Formerly") for x in present), present
    if model_says.startswith("The baker moved"):
        assert res.mode == "appended" and res.reason.startswith(("retention", "superseded fact"))


def test_first_note_needs_only_the_event(game_session, light_world):
    sid = game_session["id"]
    baker = _entry(light_world["id"], "baker_27")
    with session_scope() as s:
        res = apply_note_update(s, session_id=sid, lore_entry_id=baker.id,
                                event="Mira gave the baker a sack of rye flour.",
                                idempotency_key=uuid.uuid4().hex,
                                rewrite=_returns("Mira gave him rye flour as a gift."))
    assert (res.mode, res.after) == ("rewritten", "Mira gave him rye flour as a gift.")
    verdict = check_rewrite("", "The weather is fine.", ["Mira gave the baker rye flour."],
                            title="Baker", lore="", retention_min=0.75, event_min=0.5)
    assert not verdict.ok and verdict.reason.startswith("event ")


# --------------------------------------------------------------------------- the real model


def test_update_note_through_celery_keeps_the_previous_facts(worker, celery_app, game_session, wait_for):
    """SmolLM2 rewrites through the real worker: whatever it wrote, the previous note's facts
    are still in the note, the ledger says which mode was used and why, and Redis carries the
    note and its turn ids."""
    sid = game_session["id"]
    baker = _entry(game_session["world_id"], "baker_27")
    previous = "The baker owes Mira 3 coins. He lives in the old mill."
    _seed(sid, baker.id, previous, turn_id="t-first")
    payload = {"session_id": sid, "lore_entry_key": "baker_27", "turn_id": "t-second",
               "update_summary": "The baker moved to the harbour and sold his oven to Tobias.",
               "idempotency_key": f"e2e:{uuid.uuid4().hex}", "cause": "turn",
               "game_minutes": DAY3_0900}
    task_id = celery_app.send_task("npc_memory.update_note", kwargs=payload).id

    def done():
        with session_scope() as s:
            return s.scalar(select(TaskRecord).where(TaskRecord.task_id == task_id,
                                                     TaskRecord.status.in_(("succeeded", "dead"))))
    record = wait_for(done, timeout=300)
    assert record.status == "succeeded", record.error
    result = record.result
    note = _note(sid, baker.id).content
    assert result["mode"] in ("rewritten", "appended") and result["turn_ids"] == ["t-second"]
    assert (result["mode"] == "appended") == bool(result["reason"].split("; consolidation")[0])
    # the previous facts are there, the old home marked past, the new event stated
    for name in ("Mira", "3", "old mill"):
        assert name.lower() in note.lower(), note
    assert coverage(terms(previous), note, frozenset({"baker"})) >= 0.75
    assert "Formerly (until Day 3, 09:00)" in note
    assert "harbour" in note
    r = nearline.get_redis()
    assert nearline.get_note(r, sid, baker.id) == note
    assert nearline.get_note_turns(r, sid, baker.id) == ["t-first", "t-second"]


def test_a_rewrite_must_state_every_folded_event():
    """Two coalesced events: a rewrite that states only one of them is refused."""
    before = "The baker owes Mira 3 coins."
    one = "The baker owes Mira 3 coins. Tobias bought a pie."
    out = _compose(before, _returns(one), ("Tobias bought a pie.", 60),
                   ("Mira burnt the rye loaves in the oven.", 70))
    assert out.mode == "appended" and out.reason.startswith("event 0.")
    assert out.text.splitlines()[1:] == ["[Day 1, 01:00] Tobias bought a pie.",
                                         "[Day 1, 01:10] Mira burnt the rye loaves in the oven."]
    both = one + " Mira burnt the rye loaves in the oven."
    assert _compose(before, _returns(both), ("Tobias bought a pie.", 60),
                    ("Mira burnt the rye loaves in the oven.", 70)).mode == "rewritten"
