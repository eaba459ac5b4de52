"""Grounded, conservative entity creation: names only, found in the source text, never a
second copy of a known entry; and the analysis scope holds the entries a turn names.

The junk titles below are what the embedded SmolLM2-135M produced on real sessions."""

from __future__ import annotations

import json
import uuid

import pytest
from sqlalchemy import select

from memory.db import session_scope
from memory.grounding import (
    aliases,
    candidate_names,
    match_known,
    normalise_title,
    occurs_in,
    shape_problem,
)
from models import LoreEntry, TaskRecord
from prompts.outputs import CreatedEntity

JUNK = [
    "GINNA: Good to see you!",
    "GINNA: GINATES, STORAGE IS COOL!!!",
    "Ginna-gnompanesSouls19B8A43D20",
    "Gina.DanceStudios8194DANCE-SHEBELYGOYS203765CALKIN",
    "Greetings, I have no idea what you're talking to.",
    "The Narrator left Munich in a hurry and went home",
    "The Dungeon Master has been saved by Percy",
    "john-harker",
    "The Narrator Left Munich",
    "You'll",  # the Saltmere demo's model once named a character after a contraction
    "They're",
]


# --------------------------------------------------------------------------- plain functions


@pytest.mark.parametrize("raw, expected", [
    ("Gina (char)", "Gina"),
    ("Gina (d2", "Gina"),
    ("Gina (DG)", "Gina"),
    ("Old Marta (location) [x]", "Old Marta"),
    ("GINNA: Good to see you!", "Good to see you"),
    ('"Count Orlok."', "Count Orlok"),
    ("  Tobias   Crane!  ", "Tobias Crane"),
    ("GINNA", "Ginna"),
    ("(item)", ""),
])
def test_normalise_title_strips_wrapping(raw, expected):
    assert normalise_title(raw) == expected


@pytest.mark.parametrize("title", JUNK)
def test_junk_titles_are_not_name_shaped(title):
    assert shape_problem(normalise_title(title)) is not None


def _saltmere() -> dict:
    from memory.importers.examples import example_paths

    world, session = example_paths()
    return {"world": json.loads(world.read_text()), "session": json.loads(session.read_text())}


def _light_agents(path) -> list[str]:
    nodes = json.loads(path.read_text())["nodes"]
    return [n["name"] for n in nodes.values() if n.get("agent")]


def test_real_names_are_name_shaped_and_found_in_their_text(light_world_path):
    saltmere = _saltmere()
    people = [e["title"] for e in saltmere["world"]["entries"] if e["entity_type"] == "character"]
    places = [e["title"] for e in saltmere["world"]["entries"] if e["entity_type"] == "location"]
    light = [n for n in _light_agents(light_world_path)  # names, not "Sir Edward's guard"
             if all(w[0].isupper() for w in n.split()) and "," not in n and "(" not in n]
    assert {"Lady Elinor", "Father Mark", "Corinne", "Sir Edward"} <= set(light)
    for name in people + places + light + ["Tobias Crane", "Leonardo da Vinci", "St. Mary"]:
        assert shape_problem(name) is None, name
    turns = [t["player_text"] for t in saltmere["session"]["turns"]]
    assert candidate_names(turns[1]) == ["Wenna", "Tobias Crane"]
    assert candidate_names(turns[4]) == ["Lord Varga", "Tobias Crane"]
    assert candidate_names(turns[5]) == ["Marta", "Wenna", "Tobias Crane"]
    assert occurs_in("Marta", "Marta's back room") and occurs_in("Tobias Crane", turns[1])
    assert not occurs_in("Ann", "Anna sells rope") and not occurs_in("Tobias Crane", turns[0])
    assert aliases("Sergeant Ilsa Brenn", "character") == ("Ilsa", "Brenn")
    assert aliases("Lord Casimir Varga", "character") == ("Casimir", "Varga")
    assert aliases("Sir Edward, investigator", "character") == ("Sir Edward", "Edward")
    assert aliases("town guard", "character") == ()  # common nouns give no short forms


def test_names_joined_by_and_or_in_are_split_unless_known_whole():
    from memory.grounding import new_candidates

    assert candidate_names("I met Gina in Rome with Tobias Crane and Marta Vell.") == [
        "Gina", "Rome", "Tobias Crane", "Marta Vell"]
    known = [(1, "The Gull and Lantern", "location"), (2, "Marta Vell", "character")]
    text = "Meet me at the Gull and Lantern, then we see Tobias Crane and Marta Vell."
    assert new_candidates(text, "character", known) == ["Tobias Crane"]


@pytest.mark.parametrize("text", [
    "Greetings, I have no idea what you're talking to.",
    "GINNA: Good to see you!",
    "GINNA: GINATES, STORAGE IS COOL!!!",
    "Well, thank you. Yes, we can go tomorrow morning. I'll bring the rope on Monday.",
    "i met john harker at the inn",
    "Don't forget how it will be. You'll have your way again tomorrow!",
    "Hi Captains! It is so nice out on the ocean today!",
])
def test_texts_without_names_have_no_candidates(text):
    assert candidate_names(text) == []


def test_type_cues_keep_places_and_people_apart():
    from memory.grounding import fits_type

    assert not fits_type("Transylvania", "character", "Vlad was born in Transylvania.")
    assert fits_type("Transylvania", "location", "Vlad was born in Transylvania.")
    assert not fits_type("Rusty Anchor", "character", "I waited at the Rusty Anchor.")
    assert fits_type("Gina", "character", "I met Gina in Rome.")
    assert fits_type("Munich", "character", "Munich laughed; I slept in Munich.")  # no clear cue
    assert not fits_type("Lord Varga", "location", "Lord Varga keeps the tower.")
    assert fits_type("Old Lighthouse", "location", "at the Old Lighthouse")


def test_match_known_compares_across_types_and_variants():
    known = [(1, "Gina", "character"), (2, "Transylvania", "location"),
             (3, "Sergeant Ilsa Brenn", "character"), (4, "Sir Edward", "character"),
             (5, "Sir Edward, investigator", "character"), (6, "The Old Lighthouse", "location"),
             (7, "Brass spyglass", "item")]
    assert match_known("Transylvania", "character", known) == ("exact", [2])
    assert match_known("Old Lighthouse", "location", known) == ("exact", [6])
    assert match_known("Gina Smith", "character", known) == ("variant", [1])
    assert match_known("Ilsa", "character", known) == ("variant", [3])
    assert match_known("Ginna", "character", known) == ("near", [1])
    assert match_known("Edward", "character", known)[0] == "ambiguous"
    assert match_known("Brass Spyglas", "item", known) == ("fuzzy", [7])
    assert match_known("Gina's Necklace", "item", known) == ("", [])  # not a name of Gina
    assert match_known("Tobias Crane", "character", known) == ("", [])


# --------------------------------------------------------------------------- create_entity


def _creator(title: str, calls: list | None = None):
    def create(entity_type, summary, names):
        if calls is not None:
            calls.append(names)
        return CreatedEntity(title=title, content=f"{title}, someone new in town.", tags=["new"]), 3
    return create


def _create(game_session, title, source_text, entity_type="character", summary="Someone new.",
            calls=None, key=None):
    from memory.entities import create_entity

    with session_scope() as s:
        return create_entity(s, world_id=game_session["world_id"], session_id=game_session["id"],
                             entity_type=entity_type, creation_summary=summary,
                             idempotency_key=key or f"g:{uuid.uuid4().hex}",
                             create=_creator(title, calls), source_text=source_text)


@pytest.mark.parametrize("title, source, reason, called", [
    ("GINNA: Good to see you!", "GINNA: Good to see you!", "no_candidate", False),
    ("GINNA: GINATES, STORAGE IS COOL!!!", "GINNA: GINATES, STORAGE IS COOL!!!", "no_candidate",
     False),
    ("Greetings, I have no idea what you're talking to.",
     "Greetings, I have no idea what you're talking to.", "no_candidate", False),
    ("Ginna-gnompanesSouls19B8A43D20", "Ginna met Tobias Crane at the gate.", "not_name_shaped",
     True),
    ("Gina.DanceStudios8194DANCE-SHEBELYGOYS203765CALKIN", "Gina danced with Tobias Crane.",
     "not_name_shaped", True),
    ("The Narrator left Munich in a hurry and went home",
     "The Narrator left Munich in a hurry and went home.", "not_name_shaped", True),
    ("The Dungeon Master has been saved by Percy", "The Dungeon Master has been saved by Percy.",
     "not_name_shaped", True),
    ("mina-harker", "I met Mina Harker at the inn.", "not_name_shaped", True),
    ("Count Orlok", "Tobias Crane came ashore at dawn.", "not_in_text", True),
    ("Ginna", "Ginna and Tobias Crane came in from the rain.", "duplicate_variant", True),
    ("Edward", "Edward told Tobias Crane to wait.", "duplicate_variant", True),
    ("Transylvania", "Vlad Tepes was born in Transylvania.", "wrong_type", True),
    ("Munich", "I lived in Munich, then at Munich again.", "wrong_type", False),
])
def test_junk_creations_are_rejected_with_their_reason(game_session, title, source, reason,
                                                      called):
    gina = _create(game_session, "Gina", "Gina, the smith's daughter, waved from the door.")
    assert gina.status == "created"
    calls = []
    res = _create(game_session, title, source, calls=calls)
    assert (res.status, res.reason, res.entry_id) == ("rejected", reason, None)
    # no model call without a new name, or without one that can be a character
    assert bool(calls) == called
    with session_scope() as s:
        made = s.scalars(select(LoreEntry.title).where(
            LoreEntry.created_in_session_id == game_session["id"])).all()
    assert made == ["Gina"]


def test_no_new_name_makes_no_model_call(game_session):
    def boom(*_):
        raise AssertionError("the creation model was called")

    from memory.entities import create_entity

    with session_scope() as s:
        res = create_entity(s, world_id=game_session["world_id"], session_id=game_session["id"],
                            entity_type="character", creation_summary="The baker is tired.",
                            idempotency_key=f"g:{uuid.uuid4().hex}", create=boom,
                            source_text="Lady Elinor says the baker has not slept.\nTrue enough.")
    assert (res.status, res.reason, res.tokens) == ("rejected", "no_candidate", 0)


def test_real_name_in_text_is_created_and_its_variants_are_not(game_session):
    calls = []
    res = _create(game_session, "Tobias Crane (char)",
                  "Wenna, a deckhand called Tobias Crane came ashore last night.", calls=calls)
    assert res.status == "created" and res.title == "Tobias Crane" and res.grounded_by == "title"
    assert calls == [["Wenna", "Tobias Crane"]]  # the model chooses among the new names
    for variant, how in (("Tobias", "variant"), ("TOBIAS CRANE", "exact"),
                         ("Tobias Crain", "fuzzy")):
        again = _create(game_session, variant, f"{variant} and Mirela Dusk drank at the tavern.")
        assert (again.status, again.entry_id, again.matched_by) == ("exists", res.entry_id, how)


def test_first_name_and_cross_type_matches_resolve_to_the_existing_entry(game_session):
    elinor = _create(game_session, "Elinor", "Elinor told Tobias Crane about the tower.")
    assert (elinor.status, elinor.key, elinor.matched_by) == ("exists", "lady elinor_49", "variant")
    place = _create(game_session, "Transylvania", "Count Dracula comes from Transylvania.",
                    entity_type="location")
    assert place.status == "created"
    person = _create(game_session, "Transylvania", "Transylvania is where Vlad Tepes was born.")
    assert (person.status, person.entry_id, person.matched_by) == \
        ("exists", place.entry_id, "exact")


def test_ungrounded_name_falls_back_on_the_one_fitting_candidate(game_session):
    res = _create(game_session, "Jonathan Harker", "At dusk, Harker arrived from the coast.")
    assert (res.status, res.title, res.grounded_by) == ("created", "Harker", "candidate")


def test_old_messages_ground_against_the_summary(game_session):
    from memory.entities import create_entity

    with session_scope() as s:
        res = create_entity(s, world_id=game_session["world_id"], session_id=game_session["id"],
                            entity_type="character", idempotency_key=f"g:{uuid.uuid4().hex}",
                            creation_summary="A pale stranger named Count Orlok took rooms.",
                            create=lambda t, summary: (CreatedEntity(
                                title="Count Orlok", content="A pale, polite stranger."), 2))
    assert res.status == "created" and res.title == "Count Orlok"


def test_rejection_reason_is_kept_in_the_task_ledger(game_session):
    from tasks.entity_creation import create_entity

    tid = f"ground-{uuid.uuid4().hex}"
    out = create_entity.apply(task_id=tid, kwargs={
        "session_id": game_session["id"], "entity_type": "character",
        "creation_summary": "Someone said hello.", "idempotency_key": f"g:{uuid.uuid4().hex}",
        "source_text": "Greetings, I have no idea what you're talking to."}).get()
    assert out["status"] == "rejected" and out["reason"] == "no_candidate"
    from memory.report import creation_stats

    with session_scope() as s:
        rec = s.scalar(select(TaskRecord).where(TaskRecord.task_id == tid))
        stats = creation_stats(s, [game_session["id"]])
    assert rec.status == "succeeded" and rec.result["reason"] == "no_candidate"
    assert stats["rejected"] == {"no_candidate": 1} and stats["created"] == 0


# --------------------------------------------------------------------------- the analysis scope


def test_scope_holds_entries_named_in_the_turn(game_session):
    from memory.scope import named_in, turn_scope

    sid, wid = game_session["id"], game_session["world_id"]
    crane = _create(game_session, "Tobias Crane", "A deckhand called Tobias Crane came ashore.")
    text = "Have you seen Lady Elinor? Crane says she walks the tower at night."
    with session_scope() as s:
        baker = s.scalar(select(LoreEntry).where(LoreEntry.world_id == wid,
                                                 LoreEntry.key == "baker_27"))
        plain = [e.key for e in turn_scope(s, baker, sid)]
        named = [e.key for e in turn_scope(s, baker, sid, text=text)]
        ids = named_in(s, wid, sid, text)
        other = uuid.uuid4().hex  # another session does not see this session's creation
        assert crane.entry_id not in named_in(s, wid, other, text)
    assert "lady elinor_49" not in plain and "lady elinor_49" in named
    assert crane.key in named and named[0] == "baker_27"
    assert crane.entry_id in ids and len(named) <= 12 and len(set(named)) == len(named)


def test_turn_text_carries_the_speaker_and_both_lines():
    from tasks.analysis import turn_text
    from contract.payloads import TurnPayload

    turn = TurnPayload(turn_id="t", session_id="s", world_id=1, seq=1, npc_entry_id=1,
                       player_text="Tobias Crane is back.", npc_text="Tell Marta.",
                       created_at=0.0, speaker="Wenna Pike")
    assert turn_text(turn) == "Wenna Pike: Tobias Crane is back.\nTell Marta."


def test_analysis_sees_named_entries_and_sends_the_turn_text_with_creations(celery_app,
                                                                           game_session):
    """analyze_turn (its model a local vLLM stand-in) lists the entry the player names in
    the prompt's scope and sends each creation with the turn's text as ``source_text``."""
    import time

    from fakes import FakeServer, openai_chat, role_on

    from memory import nearline
    from tasks.analysis import analyze_turn
    from contract.payloads import TurnPayload

    wid, sid = game_session["world_id"], game_session["id"]
    with session_scope() as s:
        baker = s.scalar(select(LoreEntry.id).where(LoreEntry.world_id == wid,
                                                    LoreEntry.key == "baker_27"))
    turn = TurnPayload(turn_id=uuid.uuid4().hex, session_id=sid, world_id=wid, seq=1,
                       npc_entry_id=baker, player_text="Lady Elinor sent Mirela Dusk for bread.",
                       npc_text="Tell Mirela the rye is ready.", created_at=time.time())
    answer = json.dumps({"updates": [], "relationship": [], "quests": [], "creations": [
        {"entity_type": "character",
         "creation_summary": "Mirela Dusk, a servant of Lady Elinor."}]})
    with FakeServer() as srv, role_on(srv.url + "/v1", "analysis"):
        srv.default = openai_chat(answer)
        out = analyze_turn.apply(task_id=f"ground-{turn.turn_id}",
                                 kwargs=turn.model_dump(mode="json", exclude_none=True)).get()
        prompt = srv.posts("/v1/chat/completions")[0].body["messages"][1]["content"]
    nearline.get_redis().delete("entity_creation")  # the message no worker here consumes
    assert out["creations"] == 1 and "- lady elinor_49: Lady Elinor (character)" in prompt
    with session_scope() as s:
        sent = s.scalar(select(TaskRecord.payload).where(
            TaskRecord.task_name == "npc_memory.create_entity",
            TaskRecord.idempotency_key == f"{turn.turn_id}:c0"))
    assert sent["source_text"] == ("Lady Elinor sent Mirela Dusk for bread.\n"
                                   "Tell Mirela the rye is ready.")


def test_creation_model_may_only_choose_a_new_name(game_session):
    """The creation call (its model a local vLLM stand-in) lists the new names in the prompt
    and makes them the only titles the JSON schema allows."""
    from fakes import FakeServer, openai_chat, role_on

    from inference import calls
    from memory.entities import create_entity

    answer = json.dumps({"title": "Mirela Dusk", "content": "A quiet servant of the manor.",
                         "tags": ["servant"]})
    with FakeServer() as srv, role_on(srv.url + "/v1", "maintenance"):
        srv.default = openai_chat(answer)
        with session_scope() as s:
            res = create_entity(s, world_id=game_session["world_id"],
                                session_id=game_session["id"], entity_type="character",
                                creation_summary="Mirela Dusk, a servant of Lady Elinor.",
                                idempotency_key=f"g:{uuid.uuid4().hex}", create=calls.create_lore,
                                source_text="Lady Elinor sent Mirela Dusk and Oskar Fenn "
                                            "for bread.")
        body = srv.posts("/v1/chat/completions")[0].body
    title = body["response_format"]["json_schema"]["schema"]["properties"]["title"]
    assert title["enum"] == ["Mirela Dusk"] and "pattern" not in title  # the one in the summary
    assert "The title is exactly one of these names: Mirela Dusk." in body["messages"][1]["content"]
    assert res.status == "created" and res.title == "Mirela Dusk"
