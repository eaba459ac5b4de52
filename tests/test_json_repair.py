"""``inference.llm.parse_json``: truncated or fenced JSON from the model is repaired; empty or
hopeless text raises."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.pure


@pytest.mark.parametrize("text, expected", [
    ('{"a": 1}', {"a": 1}),
    ('{"a": 1,}', {"a": 1}),
    ('{"a": [1, 2', {"a": [1, 2]}),
    ('{"updates": [{"lore_entry_id": "baker_27"}]', {"updates": [{"lore_entry_id": "baker_27"}]}),
    ('```json\n{"a": 1}\n```', {"a": 1}),
    ("[1, 2,]", [1, 2]),
])
def test_parse_json_repairs(text, expected):
    from inference.llm import parse_json

    assert parse_json(text) == expected


def test_literal_empty_object_parses_but_is_not_an_analysis():
    """``{}`` is valid JSON, yet an analysis must state both lists: no silent empty answer."""
    from pydantic import ValidationError

    from inference.llm import parse_json
    from prompts.outputs import AnalysisOutput

    assert parse_json("{}") == {}
    with pytest.raises(ValidationError):
        AnalysisOutput.model_validate({})


@pytest.mark.parametrize("text", ["", "   \n", "... ]] }{", "no json here {"])
def test_parse_json_rejects_empty(text):
    from inference.llm import parse_json

    with pytest.raises(ValueError):
        parse_json(text)
