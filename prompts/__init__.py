"""Prompt templates (Jinja2, ``templates/*.j2``) and their JSON schemas (``schemas/*.json``).

Each template defines a ``system`` and a ``user`` block; ``messages()`` renders them into an
OpenAI-style message list. Schemas are loaded as dicts; ``schema()`` fills the ``enum`` of id
fields with the entities in scope so that a small model can only name real entries.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined

HERE = Path(__file__).resolve().parent

_env = Environment(
    loader=FileSystemLoader(str(HERE / "templates")),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=False,
)


def messages(name: str, **context) -> list[dict[str, str]]:
    """Render template ``name`` (without ``.j2``) into ``[{"role", "content"}]``.

    Raises:
        jinja2.TemplateNotFound: no such template.
        jinja2.UndefinedError: a variable the template uses is missing from ``context``.
    """
    template = _env.get_template(f"{name}.j2")
    ctx = template.new_context(context)
    out = []
    for role in ("system", "user"):
        if role in template.blocks:
            text = "".join(template.blocks[role](ctx)).strip()
            if text:
                out.append({"role": role, "content": text})
    return out


@lru_cache(maxsize=None)
def _load_schema(name: str) -> dict:
    return json.loads((HERE / "schemas" / f"{name}.json").read_text())


def schema(name: str, enums: dict[str, list[str]] | None = None) -> dict:
    """The JSON schema ``schemas/{name}.json``, with ``enum`` lists filled in.

    ``enums`` maps a property name (e.g. ``lore_entry_id``) to its allowed values; every
    property of that name anywhere in the schema gets the enum.

    Raises:
        FileNotFoundError: no such schema.
        ValueError: an enum is empty (JSON schema forbids an empty enum).
    """
    out = copy.deepcopy(_load_schema(name))
    for prop, values in (enums or {}).items():
        if not values:
            raise ValueError(f"schema {name}: enum for {prop!r} is empty")
        _fill_enum(out, prop, list(values))
    return out


def _fill_enum(node, prop: str, values: list[str]) -> None:
    if isinstance(node, dict):
        props = node.get("properties")
        if isinstance(props, dict) and prop in props:
            props[prop]["enum"] = values
        for value in node.values():
            _fill_enum(value, prop, values)
    elif isinstance(node, list):
        for value in node:
            _fill_enum(value, prop, values)
