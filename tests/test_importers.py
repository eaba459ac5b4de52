"""Tests for memory.importers: the neutral world spec, the LIGHT importers and the bundled
example world. The LIGHT tests read the real public data from ``../shared/data/light``
(override the ``shared`` folder with the SHARED_DIR environment variable); they are skipped
when that folder is absent."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from memory.importers.examples import example_paths, load_example
from memory.importers.light import (
    light_session_script,
    load_light_world,
    load_parlai_utterances,
)
from memory.importers.spec import (
    EntitySpec,
    ScriptTurn,
    SessionScript,
    WorldSpec,
    dump_session_script,
    dump_world_json,
    load_session_script,
    load_world_json,
    world_to_dict,
)

pytestmark = pytest.mark.pure

SHARED_DIR = Path(
    os.environ.get("SHARED_DIR") or Path(__file__).resolve().parents[1].parent / "shared"
)
LIGHT_DIR = SHARED_DIR / "data" / "light"
FIXTURES_DIR = LIGHT_DIR / "parlai_fixtures"
LIGHT_WORLDS = ("possibly-vampires", "thieves-guild", "dragon-village")

needs_light = pytest.mark.skipif(
    not (LIGHT_DIR / "possibly-vampires.json").is_file(),
    reason=f"LIGHT data not found under {LIGHT_DIR} (set SHARED_DIR)",
)


def _raw(name: str) -> dict:
    return json.loads((LIGHT_DIR / f"{name}.json").read_text(encoding="utf-8"))


def _norm(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def vampires() -> WorldSpec:
    return load_light_world(LIGHT_DIR / "possibly-vampires.json")


@pytest.fixture(scope="module")
def utterances() -> list[str]:
    return load_parlai_utterances(FIXTURES_DIR)


# --------------------------------------------------------------------------- LIGHT worlds


@needs_light
def test_possibly_vampires_counts(vampires: WorldSpec) -> None:
    assert vampires.key == "possibly-vampires"
    assert len(vampires.locations()) == 27
    assert len(vampires.characters()) == 26
    assert len(vampires.items()) == 167
    assert len(vampires.entries) == 27 + 26 + 167
    assert vampires.description.startswith("After a spate of disappearances of livestock")
    assert "LIGHT" in vampires.source and "MIT" in vampires.source


@needs_light
def test_baker_content_has_description_persona_and_mission(vampires: WorldSpec) -> None:
    node = _raw("possibly-vampires")["nodes"]["baker_27"]
    baker = vampires.by_key("baker_27")
    assert baker.entity_type == "character"
    assert baker.title == "Baker"
    assert f"Description: {node['desc']}" in baker.content
    assert f"Persona: {node['persona']}" in baker.content
    assert f"Mission: {node['mission']}" in baker.content
    assert baker.archetype == node["char_type"] == "person"
    assert "char_type:person" in baker.tags
    assert baker.relations["located_in"] == ("town square_0",)
    assert "in:town square_0" in baker.tags


@needs_light
def test_containment_is_kept(vampires: WorldSpec) -> None:
    # an item lying in a room
    tome = vampires.by_key("ancient tome_131")
    assert tome.entity_type == "item"
    assert tome.relations["located_in"] == ("tower_10",)
    assert "in:tower_10" in tome.tags
    assert "ancient tome_131" in vampires.by_key("tower_10").relations["contains"]
    # an item carried by a character
    egg = vampires.by_key("egg_55")
    assert egg.relations["carried_by"] == ("baker_27",)
    assert "carried_by:baker_27" in egg.tags
    assert "egg_55" in vampires.by_key("baker_27").relations["contains"]
    # a room lists its contents, characters included
    assert "baker_27" in vampires.by_key("town square_0").relations["contains"]


@needs_light
def test_room_neighbours_are_kept(vampires: WorldSpec) -> None:
    raw = _raw("possibly-vampires")["nodes"]
    for room in vampires.locations():
        expected = tuple(raw[room.key]["neighbors"])
        assert room.relations.get("neighbors", ()) == expected
        for n in expected:
            assert f"neighbor:{n}" in room.tags
    armory = vampires.by_key("armory_16")
    assert armory.relations["neighbors"] == ("grand hall_12", "the manor house_17")
    assert armory.content.count("\n\n") == 1  # desc + extra_desc
    assert raw["armory_16"]["extra_desc"] in armory.content


@needs_light
@pytest.mark.parametrize("name", LIGHT_WORLDS)
def test_all_light_worlds_load(name: str) -> None:
    raw = _raw(name)
    world = load_light_world(LIGHT_DIR / f"{name}.json")
    assert world.key == name
    assert len(world.locations()) == len(raw["rooms"])
    assert len(world.characters()) == len(raw["agents"])
    assert len(world.items()) == len(raw["objects"])
    keys = {e.key for e in world.entries}
    assert keys == set(raw["nodes"])
    for entry in world.entries:
        assert entry.title and entry.title[0] == entry.title[0].upper()
        for targets in entry.relations.values():
            assert "VOID" not in targets and set(targets) <= keys
    # rooms sit in the VOID node, which does not exist: no located_in for rooms
    assert all("located_in" not in room.relations for room in world.locations())
    assert all(c.relations.get("located_in") for c in world.characters())


def test_light_dangling_references_are_ignored(tmp_path: Path) -> None:
    data = {
        "title": "A tiny test world.",
        "rooms": ["hall_1", "ghost room_9"],  # ghost room_9 has no node
        "agents": ["cook_2"],
        "objects": ["pot_3"],
        "nodes": {
            "hall_1": {
                "name": "hall",
                "desc": "A hall.",
                "extra_desc": "",
                "neighbors": {"cellar_8": {"target_id": "cellar_8"}},
                "container_node": {"target_id": "VOID"},
                "contained_nodes": {"cook_2": {"target_id": "cook_2"}, "x_7": {}},
            },
            "cook_2": {
                "name": "cook",
                "desc": "A cook.",
                "persona": "I cook.",
                "mission": "",
                "container_node": {"target_id": "hall_1"},
                "contained_nodes": {},
            },
            "pot_3": {"name": "pot", "desc": "A pot.", "container_node": {"target_id": "gone_5"}},
        },
    }
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    world = load_light_world(path)
    assert [e.key for e in world.entries] == ["hall_1", "cook_2", "pot_3"]
    assert world.by_key("hall_1").relations == {"contains": ("cook_2",)}
    cook = world.by_key("cook_2")
    assert cook.archetype is None
    assert cook.content == "Description: A cook.\nPersona: I cook."
    assert world.by_key("pot_3").relations == {}


def test_light_missing_nodes_key_raises_with_path(tmp_path: Path) -> None:
    path = tmp_path / "no-nodes.json"
    path.write_text(json.dumps({"title": "x", "rooms": [], "agents": [], "objects": []}))
    with pytest.raises(ValueError, match="nodes") as err:
        load_light_world(path)
    assert str(path) in str(err.value)


def test_light_non_json_raises_with_path(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{ this is not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON") as err:
        load_light_world(path)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- ParlAI fixtures


def _fixture_strings() -> tuple[set[str], set[str], set[str]]:
    """(speech actually in episodes, model-written wild partner lines, label_candidates)
    read straight from the YAML, normalised."""
    import yaml

    speech: set[str] = set()
    model: set[str] = set()
    candidates: set[str] = set()
    for f in sorted(FIXTURES_DIR.glob("*.yml")):
        for episode in yaml.safe_load(f.read_text(encoding="utf-8"))["acts"]:
            for act in episode:
                labels = act.get("labels", act.get("eval_labels", []))
                speech.update(_norm(x.split(": ", 1)[-1]) for x in labels)
                candidates.update(_norm(x) for x in act.get("label_candidates", []))
                for line in act["text"].split("\n"):
                    if line.startswith("_self_say "):
                        speech.add(_norm(line[len("_self_say ") :]))
                    elif line.startswith("_partner_say "):
                        target = model if "model_name" in act else speech
                        target.add(_norm(line[len("_partner_say ") :]))
    return speech, model, candidates


@needs_light
def test_parlai_utterances_count_and_shape(utterances: list[str]) -> None:
    # The fixtures hold 74 distinct speech lines: 62 written by people plus 12
    # light_dialog_wild partner lines written by a deployed model, left out by default.
    assert len(utterances) == 62
    assert 55 <= len(utterances) <= 120
    assert len(set(utterances)) == len(utterances)
    assert all(u == _norm(u) and u for u in utterances)
    assert utterances[0] == "hello"  # light_dialog_test.yml, first partner line
    assert utterances[1] == "Good Evening. You must be the painter of this room."
    # "Yes, In  the village ..." has a double space in the fixture
    assert any(u.startswith("Yes, In the village where I work") for u in utterances)
    # multi-party lines lose their "speaker:" prefix, even for names with commas
    assert "I am blind, but it's a good thing you see..." in utterances
    prefixes = ("bear:", "Albino fish", "_self_", "_partner_")
    assert not any(u.startswith(prefixes) for u in utterances)
    # actions and emotes are not speech
    assert "get brush" not in utterances and "smile" not in utterances
    assert load_parlai_utterances(FIXTURES_DIR) == utterances  # deterministic


@needs_light
def test_parlai_utterances_exclude_label_candidates_and_model_lines(
    utterances: list[str],
) -> None:
    speech, model, candidates = _fixture_strings()
    candidates_only = candidates - speech - model
    assert len(candidates_only) > 400
    assert not candidates_only & set(utterances)
    assert not model & set(utterances)
    with_model = load_parlai_utterances(FIXTURES_DIR, include_model_turns=True)
    assert len(with_model) == 74
    assert model <= set(with_model)
    assert not candidates_only & set(with_model)


def test_parlai_bad_yaml_raises_with_path(tmp_path: Path) -> None:
    path = tmp_path / "light_dialog_bad.yml"
    path.write_text("acts: [unclosed", encoding="utf-8")
    with pytest.raises(ValueError) as err:
        load_parlai_utterances(tmp_path)
    assert str(path) in str(err.value)


# --------------------------------------------------------------------------- session scripts


@needs_light
def test_light_session_script_is_deterministic_and_addresses_world_characters(
    vampires: WorldSpec, utterances: list[str]
) -> None:
    script = light_session_script(vampires, utterances, n_turns=40, seed=3)
    assert script == light_session_script(vampires, utterances, n_turns=40, seed=3)
    assert script.world_key == "possibly-vampires"
    assert len(script.turns) == 40
    characters = {c.key for c in vampires.characters()}
    assert {t.npc_key for t in script.turns} <= characters
    assert {t.player_text for t in script.turns} <= set(utterances)
    script.check_against(vampires)
    # scenes stay in one room: the first two turns address room-mates
    rooms = [vampires.by_key(t.npc_key).relations["located_in"] for t in script.turns[:2]]
    assert rooms[0] == rooms[1]
    assert script != light_session_script(vampires, utterances, n_turns=40, seed=4)
    assert light_session_script(vampires, utterances, n_turns=0).turns == ()
    with pytest.raises(ValueError):
        light_session_script(vampires, utterances, n_turns=-1)
    with pytest.raises(ValueError):
        light_session_script(vampires, [], n_turns=3)


# --------------------------------------------------------------------------- own format


def test_example_world_and_script_load() -> None:
    world_path, session_path = example_paths()
    assert world_path.name == "example_world.json" and session_path.name == "example_session.json"
    world = load_world_json(world_path)
    script = load_session_script(session_path)
    assert script.world_key == world.key
    characters = {c.key for c in world.characters()}
    assert script.turns and all(t.npc_key in characters for t in script.turns)
    assert len(world.locations()) >= 4 and len(world.characters()) >= 5
    assert len(world.items()) >= 5
    assert {c.archetype for c in world.characters()} >= {
        "merchant",
        "guard",
        "vampire",
        "scholar",
        "innkeeper",
    }
    for entry in world.entries:
        assert entry.content.strip()
    assert load_example() == (world, load_session_script(session_path, world=world))


@pytest.mark.parametrize("which", ["example", "light"])
def test_round_trip_dump_load_equals(which: str, tmp_path: Path) -> None:
    if which == "example":
        world = load_world_json(example_paths()[0])
    else:
        if not (LIGHT_DIR / "possibly-vampires.json").is_file():
            pytest.skip(f"LIGHT data not found under {LIGHT_DIR}")
        world = load_light_world(LIGHT_DIR / "possibly-vampires.json")
    path = dump_world_json(world, tmp_path / "world.json")
    again = load_world_json(path)
    assert again == world
    assert world_to_dict(again) == world_to_dict(world)
    assert again.by_key(world.entries[0].key) == world.entries[0]


def test_session_round_trip(tmp_path: Path) -> None:
    script = SessionScript("w", (ScriptTurn("a", "Hello there."), ScriptTurn("b", "Bye.")))
    assert load_session_script(dump_session_script(script, tmp_path / "s.json")) == script


def _entry(key: str, **relations: list[str]) -> dict:
    return {
        "key": key,
        "entity_type": "character",
        "title": key.title(),
        "content": "",
        "relations": relations,
    }


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not json at all", "not valid JSON"),
        ([], "JSON object"),
        ({"key": "w", "title": "W"}, "'entries'"),
        ({"key": "w", "title": "W", "entries": [_entry("a"), _entry("a")]}, "duplicate"),
        (
            {"key": "w", "title": "W", "entries": [_entry("a", located_in=["nowhere"])]},
            "unknown entity 'nowhere'",
        ),
        (
            {"key": "w", "title": "W", "entries": [{**_entry("a"), "entity_type": "dragon"}]},
            "entity_type",
        ),
        ({"key": "w", "title": "W", "entries": [{**_entry("a"), "tagz": []}]}, "unknown field"),
        ({"key": "w", "title": "W", "entries": [{**_entry("a"), "tags": "x"}]}, "tags"),
        ({"key": "w", "title": "W", "version": 99, "entries": []}, "version"),
    ],
)
def test_load_world_json_rejects_malformed(tmp_path: Path, payload, message: str) -> None:
    path = tmp_path / "bad_world.json"
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    with pytest.raises(ValueError, match=message) as err:
        load_world_json(path)
    assert str(path) in str(err.value)


def test_load_session_script_rejects_malformed(tmp_path: Path) -> None:
    world = load_world_json(example_paths()[0])
    cases = {
        "not json": "not valid JSON",
        json.dumps({"world_key": "saltmere"}): "'turns'",
        json.dumps({"world_key": "saltmere", "turns": [{"npc_key": "x"}]}): "player_text",
        json.dumps(
            {"world_key": "saltmere", "turns": [{"npc_key": "x", "player_text": " "}]}
        ): "player_text",
    }
    for text, message in cases.items():
        path = tmp_path / "bad_session.json"
        path.write_text(text)
        with pytest.raises(ValueError, match=message) as err:
            load_session_script(path)
        assert str(path) in str(err.value)
    path = tmp_path / "stranger.json"
    path.write_text(
        json.dumps(
            {"world_key": "saltmere", "turns": [{"npc_key": "harbour_bell", "player_text": "Hi"}]}
        )
    )
    load_session_script(path)  # fine without a world to check against
    with pytest.raises(ValueError, match="not a character") as err:
        load_session_script(path, world=world)
    assert str(path) in str(err.value)


def test_spec_helpers() -> None:
    a = EntitySpec("a", "location", "A", "", ["t"], relations={"contains": ["b"]})
    b = EntitySpec("b", "character", "B", "", (), "scholar", {"located_in": ("a",)})
    world = WorldSpec("w", "W", "", (a, b), "test")
    assert a.tags == ("t",) and a.relations == {"contains": ("b",)}
    assert world.characters() == (b,)
    assert world.by_key("a") is a and "b" in world and "z" not in world
    with pytest.raises(KeyError):
        world.by_key("z")
    hash(world)  # frozen and hashable despite the relations dicts
    with pytest.raises(AttributeError):
        a.title = "changed"  # type: ignore[misc]
