"""JSON schemas of the model's structured outputs (``prompts.schema``) and their pydantic
models (``prompts.outputs``): enums filled per call, bounds that agree between schema and
model, example outputs valid under both, and card kinds that match ``memory.cards``."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.pure


def _props_named(node, name: str):
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict) and name in props:
            yield props[name]
        for v in node.values():
            yield from _props_named(v, name)
    elif isinstance(node, list):
        for v in node:
            yield from _props_named(v, name)


@pytest.mark.parametrize("name", ["analysis", "simulation"])
def test_schema_fills_enum_everywhere(name):
    import prompts

    keys = ["baker_27", "town square_0"]
    filled = prompts.schema(name, {"lore_entry_id": keys})
    found = list(_props_named(filled, "lore_entry_id"))
    assert found and all(p["enum"] == keys for p in found)
    # the cached original is not modified
    assert all(p["enum"] == [] for p in _props_named(prompts.schema(name), "lore_entry_id"))


def test_schema_empty_enum_raises():
    import prompts

    with pytest.raises(ValueError):
        prompts.schema("analysis", {"lore_entry_id": []})


def test_schema_unknown_raises():
    import prompts

    with pytest.raises(FileNotFoundError):
        prompts.schema("no_such_schema")


# A validator for the JSON-schema subset the schemas use (no jsonschema dependency).
def _valid(doc, schema) -> bool:
    t = schema.get("type")
    if "enum" in schema and schema["enum"] and doc not in schema["enum"]:
        return False
    if t == "object":
        if not isinstance(doc, dict):
            return False
        props = schema.get("properties", {})
        if any(k not in doc for k in schema.get("required", [])):
            return False
        if schema.get("additionalProperties") is False and set(doc) - set(props):
            return False
        return all(_valid(doc[k], props[k]) for k in doc if k in props)
    if t == "array":
        if not isinstance(doc, list):
            return False
        if not schema.get("minItems", 0) <= len(doc) <= schema.get("maxItems", 10**9):
            return False
        return all(_valid(x, schema.get("items", {})) for x in doc)
    if t == "string":
        if not isinstance(doc, str):
            return False
        if not schema.get("minLength", 0) <= len(doc) <= schema.get("maxLength", 10**9):
            return False
        return "pattern" not in schema or re.search(schema["pattern"], doc) is not None
    return True


def _extreme(schema, which: str):
    """A document at the schema's upper (``max``) or lower (``min``) bounds everywhere."""
    t = schema.get("type")
    if schema.get("enum"):
        return schema["enum"][-1]
    if t == "object":
        return {k: _extreme(v, which) for k, v in schema["properties"].items()}
    if t == "array":
        n = schema.get("maxItems", 3) if which == "max" else max(1, schema.get("minItems", 0))
        return [_extreme(schema["items"], which) for _ in range(n)]
    if t == "string":
        n = schema.get("maxLength", 50) if which == "max" else max(1, schema.get("minLength", 1))
        return "A" + "b" * (n - 1)
    raise AssertionError(f"unexpected schema node {schema}")


_SCHEMA_MODELS = {"analysis": "AnalysisOutput", "creation": "CreatedEntity",
                  "judge_consistency": "ConsistencyVerdict", "judge_reply": "ReplyVerdict",
                  "simulation": "SimulationOutput", "summary": "SessionSummary"}


def test_every_schema_has_a_model():
    import prompts

    names = sorted(p.stem for p in (prompts.HERE / "schemas").glob("*.json"))
    assert names == sorted(_SCHEMA_MODELS)


@pytest.mark.parametrize("which", ["max", "min"])
@pytest.mark.parametrize("name", sorted(_SCHEMA_MODELS))
def test_schema_bounds_agree_with_pydantic_models(name, which):
    import prompts
    from prompts import outputs

    schema = prompts.schema(name, {"lore_entry_id": ["baker_27", "town square_0"]})
    doc = _extreme(schema, which)
    assert _valid(doc, schema), doc  # the generated document is what the schema allows
    model = getattr(outputs, _SCHEMA_MODELS[name])
    parsed = model.model_validate(doc)
    assert parsed.model_dump() == doc  # nothing truncated or dropped


def test_example_outputs_validate_under_schemas_and_models():
    import prompts
    from prompts.outputs import AnalysisOutput, CreatedEntity, SimulationOutput

    keys = ["baker_27", "town square_0"]
    analysis = {"updates": [{"lore_entry_id": "baker_27",
                             "update_summary": "The baker learned the player found a silver key."}],
                "creations": [{"entity_type": "item",
                               "creation_summary": "A silver key engraved with a bat."}],
                "relationship": [{"kind": "gift", "detail": "The player gave the baker rye flour.",
                                  "intensity": 3}],
                "quests": [{"kind": "quest_started", "name": "The silver key",
                            "detail": "Find the door the key opens."}]}
    simulation = {"updates": [{"lore_entry_id": "baker_27", "update_summary": "He baked all night."},
                              {"lore_entry_id": "town square_0",
                               "update_summary": "Merchants set up their stalls."}]}
    creation = {"title": "Silver Key", "content": "A small silver key engraved with a bat.",
                "tags": ["key", "silver"]}
    assert _valid(analysis, prompts.schema("analysis", {"lore_entry_id": keys}))
    assert _valid(simulation, prompts.schema("simulation", {"lore_entry_id": keys}))
    assert _valid(creation, prompts.schema("creation"))
    a = AnalysisOutput.model_validate(analysis)
    assert a.updates[0].lore_entry_id == "baker_27" and a.creations[0].entity_type == "item"
    assert a.relationship[0].intensity == 3 and a.quests[0].kind == "quest_started"
    # the card lists are optional: an analysis without them has none
    bare = {"updates": analysis["updates"], "creations": []}
    assert _valid(bare, prompts.schema("analysis", {"lore_entry_id": keys}))
    assert AnalysisOutput.model_validate(bare).relationship == []
    sim = SimulationOutput.model_validate(simulation)
    assert [u.lore_entry_id for u in sim.updates] == keys
    assert CreatedEntity.model_validate(creation).title == "Silver Key"
    # and the validator is not vacuous
    assert not _valid({"updates": []}, prompts.schema("simulation", {"lore_entry_id": keys}))
    assert not _valid({**creation, "extra": 1}, prompts.schema("creation"))


def test_models_reject_what_schemas_forbid():
    from pydantic import ValidationError

    from prompts.outputs import AnalysisOutput, CreatedEntity

    with pytest.raises(ValidationError):
        AnalysisOutput.model_validate({"updates": [{"lore_entry_id": "baker_27", "update_summary": "ab"}],
                                       "creations": []})
    with pytest.raises(ValidationError):
        AnalysisOutput.model_validate({"updates": [], "creations": [
            {"entity_type": "monster", "creation_summary": "A big bat."}]})
    with pytest.raises(ValidationError):
        CreatedEntity.model_validate({"title": "X", "content": "short", "tags": []})
    update = [{"lore_entry_id": "baker_27", "update_summary": "The baker smiled."}]
    for bad in ({"relationship": [{"kind": "hug", "detail": "A warm hug.", "intensity": 2}]},
                {"relationship": [{"kind": "gift", "detail": "Rye flour.", "intensity": 11}]},
                {"quests": [{"kind": "quest_started", "name": "K", "detail": "Find it."}]},
                {"relationship": [{"kind": "gift", "detail": "Rye.", "intensity": 1}] * 3}):
        with pytest.raises(ValidationError):
            AnalysisOutput.model_validate({"updates": update, "creations": [], **bad})


def test_analysis_schema_card_kinds_match_memory_cards():
    import prompts
    from memory.cards import QUEST_KINDS, RELATIONSHIP_KINDS

    props = prompts.schema("analysis", {"lore_entry_id": ["baker_27"]})["properties"]
    assert props["relationship"]["items"]["properties"]["kind"]["enum"] == list(RELATIONSHIP_KINDS)
    assert props["quests"]["items"]["properties"]["kind"]["enum"] == list(QUEST_KINDS)
    assert props["relationship"]["items"]["properties"]["intensity"]["enum"] == list(range(1, 11))
    # optional lists: the model may leave them out; bounded for the small model's grammar
    schema = prompts.schema("analysis", {"lore_entry_id": ["baker_27"]})
    assert "relationship" not in schema["required"] and "quests" not in schema["required"]
    assert props["relationship"]["maxItems"] == 2 and props["quests"]["maxItems"] == 1
