"""Importer for SillyTavern World Info (lorebook) files, and the lorebook entries shared with
Character Card V2's embedded ``character_book`` (see :mod:`memory.importers.card`).

Formats (both read, one normalised :class:`LoreBookEntry`):

* SillyTavern World Info file (``data/<user>/worlds/<name>.json``; fields as in SillyTavern's
  ``newWorldInfoEntryDefinition``, ``public/scripts/world-info.js``, and its docs
  https://docs.sillytavern.app/usage/core-concepts/worldinfo/)::

      {"name"?: str, "entries": {"<uid>": {"uid": int, "key": [str], "keysecondary": [str],
        "comment": str, "content": str, "constant": bool, "selective": bool, "order": int,
        "position": int, "disable": bool, ...}}}

  ``entries`` may also be a list (older exports). Unknown fields are ignored.

* Character Card V2 ``character_book`` (https://github.com/malfoyslastname/
  character-card-spec-v2/blob/main/spec_v2.md)::

      {"name"?: str, "description"?: str, "extensions": {}, "entries": [{"keys": [str],
        "content": str, "extensions": {}, "enabled": bool, "insertion_order": int,
        "name"?: str, "priority"?: int, "id"?: int, "comment"?: str, "selective"?: bool,
        "secondary_keys"?: [str], "constant"?: bool, "position"?: "before_char"|"after_char"}]}

Lorebooks have no entity types: every entry becomes a lore entry of ``default_type``
(``item`` unless told: passive lore that nobody talks to), unless the entry names its type
in ``extensions.npc_memory.entity_type`` (the specs let applications keep namespaced data
in ``extensions``). Title: ``comment``, else ``name``, else the first key, else
``"Entry <uid>"``; key ``"<title>_<uid>"`` (LIGHT's ``"<name>_<n>"`` rule, with the entry's
uid/id, else its position). Tags: ``sillytavern``, ``type:<entity_type>``, ``key:<k>`` per
primary key, ``secondary_key:<k>``, ``order:<n>``, ``constant``. Macros: ``{{user}}`` and
``<USER>`` become "the player"; ``{{char}}``/``<BOT>`` become ``char_name`` when given.

Disabled entries (``disable: true`` / ``enabled: false``) and entries with no content are
skipped unless asked for, and counted.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory.importers.spec import ENTITY_TYPES, EntitySpec, WorldSpec, _read_json

SILLYTAVERN_SOURCE = "SillyTavern World Info"
TYPE_EXTENSION = "npc_memory"
"""``extensions[TYPE_EXTENSION]["entity_type"]`` names an entry's entity type."""

_USER = re.compile(r"\{\{user\}\}|<USER>", re.I)
_CHAR = re.compile(r"\{\{char\}\}|<BOT>", re.I)


def macros(text: str, char_name: str | None = None) -> str:
    """Replace the card macros a lore text may hold: ``{{user}}``/``<USER>`` -> "the player";
    ``{{char}}``/``<BOT>`` -> ``char_name`` when given (case-insensitive, as the V1 spec says)."""
    text = _USER.sub("the player", text)
    return _CHAR.sub(char_name, text) if char_name else text


@dataclass(frozen=True)
class LoreBookEntry:
    """One lorebook entry, whichever format it came from."""

    uid: str
    keys: tuple[str, ...]
    secondary_keys: tuple[str, ...]
    title: str
    content: str
    order: int | None
    constant: bool
    enabled: bool
    entity_type: str | None


@dataclass(frozen=True)
class LoreBookImport:
    """A loaded lorebook: the world and ``counts`` (``entries`` read, ``imported``,
    ``disabled_skipped``, ``empty_skipped``, and ``by_type``)."""

    world: WorldSpec
    counts: dict[str, Any] = field(default_factory=dict)


def _strings(value: Any, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):  # some exporters write a comma-separated string
        value = value.split(",")
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{what} must be a list of strings")
    return tuple(dict.fromkeys(" ".join(v.split()) for v in value if v.strip()))


def _int(value: Any, what: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{what} must be an integer, got {value!r}")
    return int(value)


def _str(raw: Mapping[str, Any], name: str, what: str) -> str:
    value = raw.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{what}: {name!r} must be a string")
    return value.strip()


def _type_hint(raw: Mapping[str, Any], what: str) -> str | None:
    ext = raw.get("extensions")
    hint = ext.get(TYPE_EXTENSION) if isinstance(ext, Mapping) else None
    if not isinstance(hint, Mapping) or hint.get("entity_type") is None:
        return None
    value = hint["entity_type"]
    if value not in ENTITY_TYPES:
        raise ValueError(f"{what}: extensions.{TYPE_EXTENSION}.entity_type must be one of "
                         f"{', '.join(ENTITY_TYPES)}, got {value!r}")
    return value


def parse_entry(raw: Any, position: int, fallback_uid: str | None = None) -> LoreBookEntry:
    """Normalise one entry of either format (see the module docstring).

    Raises:
        ValueError: not an object, or a field of the wrong type (message names the entry).
    """
    what = f"entry {fallback_uid if fallback_uid is not None else position}"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{what} must be an object, got {type(raw).__name__}")
    uid = raw.get("uid", raw.get("id"))
    uid = _int(uid, f"{what}: uid") if uid is not None else None
    uid_text = str(uid) if uid is not None else (fallback_uid or str(position))
    what = f"entry {uid_text}"
    keys = _strings(raw.get("key", raw.get("keys")), f"{what}: keys")
    secondary = _strings(raw.get("keysecondary", raw.get("secondary_keys")),
                         f"{what}: secondary keys")
    comment, name = _str(raw, "comment", what), _str(raw, "name", what)
    content = raw.get("content", "")
    if not isinstance(content, str):
        raise ValueError(f"{what}: 'content' must be a string")
    if "disable" in raw:
        if not isinstance(raw["disable"], bool):
            raise ValueError(f"{what}: 'disable' must be true or false")
        enabled = not raw["disable"]
    else:
        enabled = raw.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ValueError(f"{what}: 'enabled' must be true or false")
    order = _int(raw.get("order", raw.get("insertion_order")), f"{what}: order")
    title = comment or name or (keys[0] if keys else f"Entry {uid_text}")
    return LoreBookEntry(
        uid=uid_text, keys=keys, secondary_keys=secondary, title=" ".join(title.split()),
        content=content.strip(), order=order, constant=raw.get("constant") is True,
        enabled=enabled, entity_type=_type_hint(raw, what),
    )


def parse_entries(entries: Any) -> list[LoreBookEntry]:
    """All entries of a lorebook's ``entries`` (an object uid -> entry, or a list), ordered by
    numeric uid when every uid is a number, else as given.

    Raises:
        ValueError: ``entries`` is neither, or an entry is malformed.
    """
    if isinstance(entries, Mapping):
        parsed = [parse_entry(raw, pos, str(k)) for pos, (k, raw) in enumerate(entries.items())]
    elif isinstance(entries, list):
        parsed = [parse_entry(raw, pos) for pos, raw in enumerate(entries)]
    else:
        raise ValueError("'entries' must be an object of uid -> entry or a list of entries")
    if all(e.uid.lstrip("-").isdigit() for e in parsed):
        parsed.sort(key=lambda e: int(e.uid))
    return parsed


def entry_specs(
    entries: list[LoreBookEntry],
    *,
    default_type: str = "item",
    include_disabled: bool = False,
    char_name: str | None = None,
    tag: str = "sillytavern",
    key_prefix: str = "",
) -> tuple[list[EntitySpec], Counter]:
    """Lore entries for lorebook entries, and counts (``imported``, ``disabled_skipped``,
    ``empty_skipped``, ``type:<t>``). Keys are ``"<key_prefix><title>_<uid>"``.

    Raises:
        ValueError: ``default_type`` is not an entity type, or two entries share a uid.
    """
    if default_type not in ENTITY_TYPES:
        raise ValueError(f"entity type must be one of {', '.join(ENTITY_TYPES)}, "
                         f"got {default_type!r}")
    stats: Counter = Counter()
    out: list[EntitySpec] = []
    seen: set[str] = set()
    for e in entries:
        if e.uid in seen:
            raise ValueError(f"entry uid {e.uid} appears twice")
        seen.add(e.uid)
        if not e.enabled and not include_disabled:
            stats["disabled_skipped"] += 1
            continue
        content = macros(e.content, char_name)
        if not content:
            stats["empty_skipped"] += 1
            continue
        entity_type = e.entity_type or default_type
        tags = [tag, f"type:{entity_type}", *(f"key:{k}" for k in e.keys),
                *(f"secondary_key:{k}" for k in e.secondary_keys)]
        if e.order is not None:
            tags.append(f"order:{e.order}")
        if e.constant:
            tags.append("constant")
        if not e.enabled:
            tags.append("disabled")
        out.append(EntitySpec(key=f"{key_prefix}{e.title}_{e.uid}", entity_type=entity_type,
                              title=macros(e.title, char_name), content=content,
                              tags=tuple(dict.fromkeys(tags))))
        stats["imported"] += 1
        stats[f"type:{entity_type}"] += 1
    return out, stats


def world_key_for(path: Path) -> str:
    """A world key from a file name: the stem, lower-cased, runs of other characters as "-"."""
    return re.sub(r"[^a-z0-9]+", "-", path.stem.lower()).strip("-") or "lorebook"


def load_world_info(
    path: str | os.PathLike[str],
    *,
    world_key: str | None = None,
    default_type: str = "item",
    include_disabled: bool = False,
    char_name: str | None = None,
) -> LoreBookImport:
    """Load a SillyTavern World Info file (or a bare Character Card V2 ``character_book``
    object) into a world of its own.

    Args:
        path: the JSON file.
        world_key: default from the file name (:func:`world_key_for`).
        default_type: entity type of entries that do not name one (``character``,
            ``location`` or ``item``).
        include_disabled: import disabled entries too (tagged ``disabled``).
        char_name: the character ``{{char}}`` stands for, if any.

    Returns:
        :class:`LoreBookImport`; the world's title is the file's ``name`` or its stem.

    Raises:
        ValueError: not JSON, no ``entries``, a malformed entry, a bad ``default_type`` or
            two entries with one key (message names the file).
        FileNotFoundError: no such file.
    """
    p = Path(path)
    data = _read_json(p)
    try:
        if not isinstance(data, dict) or "entries" not in data:
            raise ValueError("not a SillyTavern World Info file: expected an object with "
                             "'entries'")
        parsed = parse_entries(data["entries"])
        specs, stats = entry_specs(parsed, default_type=default_type,
                                   include_disabled=include_disabled, char_name=char_name)
        name = data.get("name")
        title = name.strip() if isinstance(name, str) and name.strip() else p.stem
        description = data.get("description")
        world = WorldSpec(
            key=world_key or world_key_for(p),
            title=title,
            description=description.strip() if isinstance(description, str) else "",
            entries=tuple(specs),
            source=f"{SILLYTAVERN_SOURCE}; {p.name}",
        )
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from exc
    counts = {"entries": len(parsed), "imported": stats["imported"],
              "disabled_skipped": stats["disabled_skipped"],
              "empty_skipped": stats["empty_skipped"],
              "by_type": {t: stats[f"type:{t}"] for t in ENTITY_TYPES if stats[f"type:{t}"]}}
    return LoreBookImport(world=world, counts=counts)


__all__ = ["LoreBookEntry", "LoreBookImport", "SILLYTAVERN_SOURCE", "TYPE_EXTENSION",
           "entry_specs", "load_world_info", "macros", "parse_entries", "parse_entry",
           "world_key_for"]
