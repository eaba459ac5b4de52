"""Tests for the external-data importers: LIGHT's entity database and Generative Agents'
Smallville on the real public data in ``../shared/data`` (skipped when absent; override the
folder with SHARED_DIR), the Smallville conversation events, and SillyTavern World Info and
Character Card V2 (JSON and PNG) on samples built here from the public specs."""

from __future__ import annotations

import base64
import json
import os
import struct
import zlib
from pathlib import Path

import pytest

from memory.importers.card import load_cards, read_card
from memory.importers.light_db import load_light_db, table_names
from memory.importers.sillytavern import load_world_info
from memory.importers.smallville import load_smallville_conversations, load_smallville_world
from memory.importers.spec import WorldSpec, world_from_dict, world_to_dict
from workers.replay_events import conversation_events

pytestmark = pytest.mark.pure

SHARED_DIR = Path(
    os.environ.get("SHARED_DIR") or Path(__file__).resolve().parents[1].parent / "shared"
)
LIGHT_DIR = SHARED_DIR / "data" / "light"
SMALLVILLE_DIR = SHARED_DIR / "data" / "smallville"

needs_light_db = pytest.mark.skipif(not (LIGHT_DIR / "characters.json").is_file(),
                                    reason=f"LIGHT entity database not under {LIGHT_DIR}")
needs_smallville = pytest.mark.skipif(not (SMALLVILLE_DIR / "personas_n25").is_dir(),
                                      reason=f"Smallville data not under {SMALLVILLE_DIR}")


# --------------------------------------------------------------------------- LIGHT database


@pytest.fixture(scope="module")
def light_db():
    return load_light_db(LIGHT_DIR)


@needs_light_db
def test_light_db_counts(light_db) -> None:
    world, counts = light_db.world, light_db.counts
    assert world.key == "light-db"
    assert len(world.characters()) == 1755
    assert len(world.items()) == 3462
    assert len(world.locations()) == 661
    assert counts["entries"] == len(world.entries) == 5878
    assert counts["characters"] == {"read": 1755, "imported": 1755, "skipped": 0,
                                    "duplicates_dropped": 0, "placeholders_cleared": 1,
                                    "empty_content": 0}
    assert counts["objects"]["placeholders_cleared"] == 3
    assert counts["objects"]["empty_content"] == 3
    assert counts["rooms"]["imported"] == 661
    assert counts["shared_titles"] > 0
    assert "LIGHT" in world.source and "MIT" in world.source


@needs_light_db
def test_light_db_known_records(light_db) -> None:
    raw = {r["id"]: r for r in json.loads((LIGHT_DIR / "characters.json").read_text())}
    world = light_db.world
    deer = world.by_key("deer_c0")
    assert deer.entity_type == "character" and deer.title == "Deer"
    assert deer.archetype == "creature" and "char_type:creature" in deer.tags
    lines = deer.content.split("\n")
    assert lines[0] == f"Description: {raw[0]['description'].strip()}"
    assert [line for line in lines if line.startswith("Persona: ")] == [
        f"Persona: {p.strip()}" for p in raw[0]["persona"]]
    # the "{}" placeholder description is dropped, the persona kept
    nun = world.by_key("Nun_c1324")
    assert nun.content.startswith("Persona: I am a nun") and "{}" not in nun.content
    # an object with only a placeholder is kept with no text (its title still says what it is)
    blouse = world.by_key("old blouse_o3842")
    assert (blouse.entity_type, blouse.title, blouse.content) == ("item", "Old blouse", "")
    trees = world.by_key("Long skinny trees_o1")
    assert trees.content.count("\n\n") == 1 and "base_form:tree" in trees.tags
    rectory = world.by_key("The rectory_r132")
    assert rectory.entity_type == "location"
    assert rectory.content.startswith("This room is quite small and cramped.")
    assert "category:Inside Church" in rectory.tags
    # characters LIGHT types as objects stay characters, with that archetype
    assert sum(1 for c in world.characters() if c.archetype == "object") == 49
    # same-named distinct rooms are all kept, under distinct keys
    dining = [e for e in world.locations() if e.title.lower() == "dining hall"]
    assert len(dining) == 6 and len({e.key for e in dining}) == 6


@needs_light_db
def test_light_db_limit_and_tables() -> None:
    got = load_light_db(LIGHT_DIR, limit=5)
    assert got.world.key == "light-db-5"
    assert [len(got.world.of_type(t)) for t in ("character", "item", "location")] == [5, 5, 5]
    assert got.counts["characters"]["skipped"] == 1750
    # lowest ids first
    assert [e.key.rsplit("_c", 1)[1] for e in got.world.characters()] == ["0", "1", "2", "3", "4"]
    rooms = load_light_db(LIGHT_DIR, tables=table_names("rooms"), world_key="rooms-only")
    assert rooms.world.key == "rooms-only" and len(rooms.world.entries) == 661
    assert set(rooms.counts) == {"rooms", "shared_titles", "entries"}
    with pytest.raises(ValueError, match="tables"):
        table_names("characters,people")
    with pytest.raises(ValueError, match="limit"):
        load_light_db(LIGHT_DIR, limit=-1)


def _light_db_dir(tmp_path: Path, characters, objects=(), rooms=()) -> Path:
    for name, data in (("characters", characters), ("objects", objects), ("rooms", rooms)):
        (tmp_path / f"{name}.json").write_text(json.dumps(list(data)), encoding="utf-8")
    return tmp_path


def _char(i: int, name: str = "guard", desc: str = "A tall guard.", persona=("I guard.",)):
    return {"id": i, "name": name, "char_type": "person", "description": desc,
            "persona": list(persona), "emojis": []}


def test_light_db_exact_duplicates_are_dropped(tmp_path: Path) -> None:
    d = _light_db_dir(tmp_path, [_char(1), _char(2), _char(3, desc="A short guard.")],
                      [{"id": 1, "name": "guard", "descripton": ["{}"], "base_form": ["guard"]}])
    got = load_light_db(d)
    assert [e.key for e in got.world.entries] == ["guard_c1", "guard_c3", "guard_o1"]
    assert got.counts["characters"]["duplicates_dropped"] == 1
    assert got.counts["objects"]["empty_content"] == 1
    assert got.counts["shared_titles"] == 3


@pytest.mark.parametrize("characters, message", [
    ({"id": 1}, "top level must be a list"),
    ([{"name": "x", "description": "d"}], r"record \[0\]: 'id' must be an integer"),
    ([{"id": 1, "name": " ", "description": "d"}], "'name' must be a non-empty string"),
    ([{"id": 1, "name": "x"}], "missing 'description'"),
    ([_char(1), _char(1, name="y")], r"id 1 repeats record \[0\]"),
    ([{**_char(1), "persona": "one string is fine"}, {**_char(2), "persona": [3]}],
     "'persona' must be a string or a list of strings"),
])
def test_light_db_bad_records_raise_naming_file(tmp_path: Path, characters, message) -> None:
    d = _light_db_dir(tmp_path, [])
    (d / "characters.json").write_text(json.dumps(characters), encoding="utf-8")
    with pytest.raises(ValueError, match=message) as err:
        load_light_db(d)
    assert "characters.json" in str(err.value)


def test_light_db_missing_file_raises(tmp_path: Path) -> None:
    (tmp_path / "characters.json").write_text("[]", encoding="utf-8")
    with pytest.raises(FileNotFoundError):
        load_light_db(tmp_path)


# --------------------------------------------------------------------------- Smallville


@pytest.fixture(scope="module")
def smallville() -> WorldSpec:
    return load_smallville_world(SMALLVILLE_DIR)


@needs_smallville
def test_smallville_counts(smallville: WorldSpec) -> None:
    assert smallville.key == "smallville"
    assert len(smallville.characters()) == 25
    sectors = [e for e in smallville.locations() if "sector" in e.tags]
    arenas = [e for e in smallville.locations() if "arena" in e.tags]
    assert (len(sectors), len(arenas)) == (19, 63)
    assert len(smallville.entries) == 25 + 19 + 63
    assert smallville.items() == ()
    assert "Generative Agents" in smallville.source and "Apache-2.0" in smallville.source
    assert "140 x 100" in smallville.description


@needs_smallville
def test_smallville_residents_from_bootstrap_memory(smallville: WorldSpec) -> None:
    raw = json.loads((SMALLVILLE_DIR / "personas_n25" / "Klaus Mueller.json").read_text())
    klaus = smallville.by_key("Klaus Mueller")
    assert klaus.entity_type == "character" and klaus.title == "Klaus Mueller"
    assert klaus.content.split("\n") == [
        "Age: 20",
        f"Innate traits: {raw['innate']}",
        f"Learned: {raw['learned']}",
        f"Currently: {raw['currently']}",
        f"Lifestyle: {raw['lifestyle']}",
        f"Daily plan: {raw['daily_plan_req']}",
    ]
    room = "the Ville:Dorm for Oak Hill College:Klaus Mueller's room"
    assert klaus.relations["located_in"] == (room,)
    assert smallville.by_key(room).relations["contains"] == ("Klaus Mueller",)
    assert "the Ville:Hobbs Cafe" in klaus.relations["knows"]
    # an empty daily plan is left out
    abigail = smallville.by_key("Abigail Chen")
    assert "Daily plan" not in abigail.content and abigail.content.startswith("Age: 25\n")
    names = {c.title for c in smallville.characters()}
    assert {"Isabella Rodriguez", "Maria Lopez", "Tom Moreno", "Yuriko Yamamoto"} <= names
    # two residents share a room
    bedroom = smallville.by_key("the Ville:Lin family's house:Mei and John Lin's bedroom")
    assert bedroom.relations["contains"] == ("John Lin", "Mei Lin")


@needs_smallville
def test_smallville_places(smallville: WorldSpec) -> None:
    cafe = smallville.by_key("the Ville:Hobbs Cafe")
    assert cafe.title == "Hobbs Cafe" and cafe.relations["contains"] == ("the Ville:Hobbs Cafe:cafe",)
    arena = smallville.by_key("the Ville:Hobbs Cafe:cafe")
    assert arena.title == "Hobbs Cafe: cafe"
    assert arena.relations["located_in"] == ("the Ville:Hobbs Cafe",)
    assert "piano" in arena.content and "object:piano" in arena.tags
    # the CSV's trailing space is gone, and arenas only the map knows are there too
    assert "the Ville:Ryan Park's apartment" in smallville
    assert "the Ville:Dorm for Oak Hill College:kitchen" in smallville
    # round trip through our own format keeps everything
    assert world_from_dict(world_to_dict(smallville)) == smallville


def test_smallville_bad_resident_raises(tmp_path: Path) -> None:
    (tmp_path / "world").mkdir()
    (tmp_path / "personas_n25").mkdir()
    (tmp_path / "world" / "maze_meta_info.json").write_text("{}")
    (tmp_path / "world" / "sector_blocks.csv").write_text("1, the Ville, Cafe\n")
    (tmp_path / "world" / "arena_blocks.csv").write_text("2, the Ville, Cafe, kitchen\n")
    bad = tmp_path / "personas_n25" / "Ann.json"
    bad.write_text(json.dumps({"name": "Ann", "living_area": "the Ville:Cafe"}))
    with pytest.raises(ValueError, match="living_area must be 'world:sector:arena'") as err:
        load_smallville_world(tmp_path)
    assert "Ann.json" in str(err.value)
    bad.write_text(json.dumps({"name": "Ann", "age": 30, "living_area": "the Ville:Cafe:kitchen",
                               "innate": "calm"}))
    world = load_smallville_world(tmp_path)
    assert world.by_key("Ann").content == "Age: 30\nInnate traits: calm"
    assert world.by_key("the Ville:Cafe:kitchen").relations["contains"] == ("Ann",)


@needs_smallville
def test_smallville_conversations() -> None:
    convs = load_smallville_conversations(SMALLVILLE_DIR / "demo_3agents")
    # each conversation is stored by both participants: 16 chat nodes, 8 conversations
    assert len(convs) == 8
    assert sum(len(c.utterances) for c in convs) == 87
    assert all(len(c.recorded_by) == 2 and set(c.recorded_by) == set(c.participants)
               for c in convs)
    assert [c.created for c in convs] == sorted(c.created for c in convs)
    first = convs[0]
    assert first.created.isoformat() == "2023-02-13T09:55:50+00:00"
    assert first.participants == ("Klaus Mueller", "Maria Lopez")
    assert first.utterances[0][0] == "Klaus Mueller"
    assert first.utterances[0][1].startswith("Hey Maria")


@needs_smallville
def test_conversation_events_pair_utterances(smallville: WorldSpec) -> None:
    convs = load_smallville_conversations(SMALLVILLE_DIR / "demo_3agents")
    events = conversation_events(convs, smallville)
    assert len(events) == 44
    assert len({e.event_id for e in events}) == 44
    unanswered = [e for e in events if e.npc_text is None]
    assert len(unanswered) == 1  # the 3-utterance conversation ends on an unanswered line
    assert unanswered[0].npc_id != unanswered[0].speaker
    first = events[0]
    assert (first.speaker, first.npc_id) == ("Klaus Mueller", "Maria Lopez")
    assert first.text == convs[0].utterances[0][1]
    assert first.npc_text == convs[0].utterances[1][1]
    assert first.body() == {"npc_id": "Maria Lopez", "speaker": "Klaus Mueller",
                            "text": first.text, "npc_text": first.npc_text,
                            "event_id": first.event_id, "created_at": first.created_at}
    # every utterance is used exactly once
    used = sum(1 + (e.npc_text is not None) for e in events)
    assert used == 87
    other = WorldSpec(key="w", title="W", description="", entries=(), source="")
    with pytest.raises(ValueError, match="not a character of world 'w'"):
        conversation_events(convs, other)


# --------------------------------------------------------------------------- SillyTavern


def _world_info() -> dict:
    """A World Info file as SillyTavern saves it (fields of newWorldInfoEntryDefinition)."""
    def entry(uid, **over):
        base = {"uid": uid, "key": [], "keysecondary": [], "comment": "", "content": "",
                "constant": False, "vectorized": False, "selective": True, "selectiveLogic": 0,
                "addMemo": True, "order": 100, "position": 0, "disable": False,
                "excludeRecursion": False, "probability": 100, "useProbability": True,
                "depth": 4, "group": "", "scanDepth": None, "caseSensitive": None,
                "matchWholeWords": None, "automationId": "", "role": None, "displayIndex": uid}
        base.update(over)
        return base

    entries = [
        entry(0, key=["Saltmere", "harbour town"], comment="Saltmere",
              content="A fishing town on a grey coast; {{user}} arrives by the north road.",
              order=120, extensions={"npc_memory": {"entity_type": "location"}}),
        entry(1, key=["Old Marta"], keysecondary=["boat"], comment="Old Marta",
              content="A retired smuggler who mends nets.", constant=True,
              extensions={"npc_memory": {"entity_type": "character"}}),
        entry(2, key=["brass compass"], comment="",
              content="A compass that points at lost things."),
        entry(3, key=["draft"], comment="Unused draft", content="Not canon yet.", disable=True),
        entry(4, key=["empty"], comment="Placeholder", content="   "),
    ]
    return {"name": "Saltmere lore", "entries": {str(e["uid"]): e for e in entries}}


def test_world_info_import(tmp_path: Path) -> None:
    path = tmp_path / "Saltmere Lore.json"
    path.write_text(json.dumps(_world_info()), encoding="utf-8")
    got = load_world_info(path)
    world = got.world
    assert world.key == "saltmere-lore" and world.title == "Saltmere lore"
    assert [e.key for e in world.entries] == ["Saltmere_0", "Old Marta_1", "brass compass_2"]
    assert got.counts == {"entries": 5, "imported": 3, "disabled_skipped": 1, "empty_skipped": 1,
                          "by_type": {"character": 1, "location": 1, "item": 1}}
    town = world.by_key("Saltmere_0")
    assert town.entity_type == "location"
    assert town.content == "A fishing town on a grey coast; the player arrives by the north road."
    assert {"sillytavern", "key:Saltmere", "key:harbour town", "order:120"} <= set(town.tags)
    marta = world.by_key("Old Marta_1")
    assert marta.entity_type == "character"
    assert {"constant", "secondary_key:boat"} <= set(marta.tags)
    compass = world.by_key("brass compass_2")  # no comment: titled by its first key
    assert (compass.entity_type, compass.title) == ("item", "brass compass")

    with_disabled = load_world_info(path, include_disabled=True, default_type="location",
                                    world_key="lore")
    assert with_disabled.world.key == "lore"
    draft = with_disabled.world.by_key("Unused draft_3")
    assert draft.entity_type == "location" and "disabled" in draft.tags


def test_world_info_entries_as_list_and_character_book_shape(tmp_path: Path) -> None:
    path = tmp_path / "book.json"
    path.write_text(json.dumps({"entries": [
        {"keys": ["Rook"], "content": "{{char}}'s raven.", "enabled": True,
         "insertion_order": 5, "name": "Rook", "id": 7, "extensions": {}},
        {"keys": ["Gull"], "content": "A gull.", "enabled": False, "insertion_order": 1,
         "extensions": {}},
    ]}), encoding="utf-8")
    got = load_world_info(path, char_name="Marta")
    assert [e.key for e in got.world.entries] == ["Rook_7"]
    assert got.world.entries[0].content == "Marta's raven."
    assert got.counts["disabled_skipped"] == 1


@pytest.mark.parametrize("payload, message", [
    ({"name": "x"}, "expected an object with 'entries'"),
    ({"entries": 3}, "'entries' must be an object"),
    ({"entries": {"0": {"uid": 0, "key": "a", "content": 5}}}, "'content' must be a string"),
    ({"entries": {"0": {"uid": 0, "key": [1], "content": "c"}}}, "keys must be a list of strings"),
    ({"entries": {"0": {"uid": 0, "key": ["a"], "content": "c", "disable": "no"}}},
     "'disable' must be true or false"),
    ({"entries": {"0": {"uid": 0, "key": ["a"], "content": "c",
                        "extensions": {"npc_memory": {"entity_type": "faction"}}}}},
     "entity_type must be one of"),
    ({"entries": {"a": {"uid": 1, "key": ["a"], "content": "c"},
                  "b": {"uid": 1, "key": ["b"], "content": "d"}}}, "uid 1 appears twice"),
])
def test_world_info_bad_input_raises_naming_file(tmp_path: Path, payload, message) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(payload), encoding="utf-8")
    with pytest.raises(ValueError, match=message) as err:
        load_world_info(path)
    assert "bad.json" in str(err.value)


def test_world_info_bad_default_type(tmp_path: Path) -> None:
    path = tmp_path / "lore.json"
    path.write_text(json.dumps(_world_info()), encoding="utf-8")
    with pytest.raises(ValueError, match="entity type must be one of"):
        load_world_info(path, default_type="faction")


# --------------------------------------------------------------------------- Character Card V2


def _card(name: str = "Marta", **data) -> dict:
    """A V2 card with every field the spec requires (spec_v2.md)."""
    fields = {
        "name": name, "description": "{{char}} is a retired smuggler with a limp.",
        "personality": "gruff, loyal", "scenario": "{{char}} mends nets on the pier at dawn.",
        "first_mes": "*looks up* What do you want, {{user}}?",
        "mes_example": "<START>\n{{user}}: Hi\n{{char}}: Hmph.",
        "creator_notes": "Made for testing.", "system_prompt": "Stay terse.",
        "post_history_instructions": "", "alternate_greetings": ["Hm?"],
        "tags": ["smuggler", "harbour"], "creator": "tester", "character_version": "1",
        "extensions": {},
        "character_book": {"name": "Marta's book", "extensions": {}, "entries": [
            {"keys": ["Saltmere"], "content": "{{char}}'s home town.", "extensions": {},
             "enabled": True, "insertion_order": 0, "id": 1, "comment": "Saltmere",
             },
            {"keys": ["Kestrel"], "content": "{{char}}'s old boat, now rotting.",
             "extensions": {"npc_memory": {"entity_type": "item"}}, "enabled": True,
             "insertion_order": 1, "id": 2, "name": "The Kestrel"},
            {"keys": ["secret"], "content": "Hidden.", "extensions": {}, "enabled": False,
             "insertion_order": 2, "id": 3},
        ]},
    }
    fields.update(data)
    return {"spec": "chara_card_v2", "spec_version": "2.0", "data": fields}


def _chunk(ctype: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + ctype + body + struct.pack(
        ">I", zlib.crc32(ctype + body) & 0xFFFFFFFF)


def _png(*text_chunks: tuple[bytes, bytes]) -> bytes:
    """A 1x1 grey PNG (PNG spec: signature, IHDR, IDAT, IEND) with tEXt chunks after the
    image data, where SillyTavern writes its card."""
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)  # 1x1, 8-bit greyscale
    idat = zlib.compress(b"\x00\x80")  # filter byte 0, one grey pixel
    texts = b"".join(_chunk(b"tEXt", k + b"\x00" + v) for k, v in text_chunks)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + texts
            + _chunk(b"IEND", b""))


def _b64(card: dict) -> bytes:
    return base64.b64encode(json.dumps(card).encode("utf-8"))


def test_card_json_import(tmp_path: Path) -> None:
    path = tmp_path / "marta.json"
    path.write_text(json.dumps(_card()), encoding="utf-8")
    got = load_cards([path])
    world = got.world
    assert world.key == "marta" and world.title == "Marta"
    assert world.description == "Marta mends nets on the pier at dawn."
    marta = world.by_key("Marta")
    assert marta.entity_type == "character"
    assert marta.content.split("\n") == [
        "Description: Marta is a retired smuggler with a limp.",
        "Personality: gruff, loyal",
        "Scenario: Marta mends nets on the pier at dawn.",
    ]
    # greetings, examples, notes and prompts are not lore
    for text in ("What do you want", "Hmph", "Made for testing", "Stay terse"):
        assert text not in marta.content
    assert {"card", "tag:smuggler", "tag:harbour"} <= set(marta.tags)
    assert [e.key for e in world.entries] == ["Marta", "Saltmere_1", "The Kestrel_2"]
    assert world.by_key("Saltmere_1").content == "Marta's home town."
    assert got.counts == {"cards": 1, "characters": 1, "book_entries": 2,
                          "disabled_skipped": 1, "empty_skipped": 0, "entries": 3}


def test_card_png_import_matches_json(tmp_path: Path) -> None:
    card = _card()
    png = tmp_path / "marta.png"
    png.write_bytes(_png((b"Software", b"test"), (b"chara", _b64(card))))
    js = tmp_path / "marta.json"
    js.write_text(json.dumps(card), encoding="utf-8")
    assert read_card(png).data == card["data"]
    from_png, from_json = load_cards([png]).world, load_cards([js]).world
    assert from_png.entries == from_json.entries


def test_card_png_errors(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(_png((b"Comment", b"just a picture")))
    with pytest.raises(ValueError, match="no 'chara' text chunk"):
        read_card(path)
    path.write_bytes(_png((b"ccv3", _b64(_card()))))
    with pytest.raises(ValueError, match="Character Card V3"):
        read_card(path)
    good = _png((b"chara", _b64(_card())))
    corrupt = bytearray(good)
    corrupt[-20] ^= 0xFF  # inside the tEXt chunk's data
    path.write_bytes(bytes(corrupt))
    with pytest.raises(ValueError, match="CRC mismatch") as err:
        read_card(path)
    assert "x.png" in str(err.value)
    path.write_bytes(good[:-30])
    with pytest.raises(ValueError, match="truncated"):
        read_card(path)
    path.write_bytes(_png((b"chara", b"%%% not base64 json %%%")))
    with pytest.raises(ValueError, match="not base64 of UTF-8 JSON"):
        read_card(path)


@pytest.mark.parametrize("card, message", [
    ({"spec": "chara_card_v3", "spec_version": "3.0", "data": {}}, "this importer reads"),
    ({"spec": "chara_card_v2", "spec_version": "2.0"}, "'data' must be an object"),
    (_card(name=""), "'name' must be a non-empty string"),
    (_card(description=["x"]), "'description' must be a string"),
    (_card(character_book={"name": "b"}), "'character_book' must be an object with 'entries'"),
    ({"hello": "world"}, "neither a V2 card"),
])
def test_card_bad_input_raises_naming_file(tmp_path: Path, card, message) -> None:
    path = tmp_path / "card.json"
    path.write_text(json.dumps(card), encoding="utf-8")
    with pytest.raises(ValueError, match=message) as err:
        read_card(path)
    assert "card.json" in str(err.value)


def test_v1_card_and_several_cards_with_a_lorebook(tmp_path: Path) -> None:
    v1 = tmp_path / "tom.json"
    v1.write_text(json.dumps({"name": "Tom", "description": "A ferryman.", "personality": "",
                              "scenario": "", "first_mes": "Ahoy.", "mes_example": ""}))
    marta = tmp_path / "marta.png"
    marta.write_bytes(_png((b"chara", _b64(_card()))))
    lore = tmp_path / "lore.json"
    lore.write_text(json.dumps(_world_info()), encoding="utf-8")
    book = load_world_info(lore).world
    got = load_cards([v1, marta], world_key="harbour", title="Harbour", extra=[book])
    world = got.world
    assert world.key == "harbour" and world.title == "Harbour"
    assert [c.key for c in world.characters()] == ["Tom", "Marta", "Old Marta_1"]
    assert world.by_key("Tom").content == "Description: A ferryman."
    assert len(world.entries) == 1 + 3 + 3
    with pytest.raises(ValueError, match="duplicate entity key 'Marta'"):
        load_cards([marta, marta])
