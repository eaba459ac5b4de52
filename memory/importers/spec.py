"""The neutral world spec every importer produces, and our own JSON format for it.

A :class:`WorldSpec` is a world's canon as plain, immutable data: its entries
(:class:`EntitySpec`: characters, locations, items) with tags and relations between them by
entity key. A :class:`SessionScript` is a list of player turns, each addressed to one NPC of a
world, for replaying a session against the pipeline.

Own JSON formats (UTF-8)::

    world:   {"format": "npc-memory.world", "version": 1,
              "key": str, "title": str, "description": str, "source": str,
              "entries": [{"key": str, "entity_type": "character"|"location"|"item",
                           "title": str, "content": str, "tags": [str],
                           "archetype": str|null, "relations": {name: [entity key]}}]}
    session: {"format": "npc-memory.session", "version": 1,
              "world_key": str, "turns": [{"npc_key": str, "player_text": str}]}

``format``/``version`` are optional on input (checked when present); in an entry ``tags``,
``archetype`` and ``relations`` are optional. Unknown fields are rejected so that typos in
hand-written files do not pass silently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENTITY_TYPES: tuple[str, ...] = ("character", "location", "item")
"""Allowed ``EntitySpec.entity_type`` values."""

KNOWN_RELATIONS: tuple[str, ...] = ("located_in", "contains", "neighbors", "carried_by")
"""Relation names the importers emit. Others are allowed; these are the ones to expect."""

WORLD_FORMAT = "npc-memory.world"
SESSION_FORMAT = "npc-memory.session"
FORMAT_VERSION = 1

_ENTRY_FIELDS = {"key", "entity_type", "title", "content", "tags", "archetype", "relations"}
_ENTRY_REQUIRED = ("key", "entity_type", "title", "content")
_WORLD_FIELDS = {"format", "version", "key", "title", "description", "source", "entries"}
_WORLD_REQUIRED = ("key", "title", "entries")
_SESSION_FIELDS = {"format", "version", "world_key", "turns"}
_TURN_FIELDS = {"npc_key", "player_text"}


# --------------------------------------------------------------------------- types


def _str_tuple(value: Any, what: str) -> tuple[str, ...]:
    """``value`` (a list/tuple/iterable of non-empty str, not a bare str) as a tuple."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"{what} must be a list of strings, got {type(value).__name__}")
    out = tuple(value)
    for item in out:
        if not isinstance(item, str) or not item:
            raise ValueError(f"{what} must contain non-empty strings, got {item!r}")
    return out


def _nonempty_str(value: Any, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


@dataclass(frozen=True)
class EntitySpec:
    """One canonical entity of a world.

    ``key`` is unique within its world (for LIGHT, the node id such as ``"baker_27"``).
    ``relations`` maps a relation name (see :data:`KNOWN_RELATIONS`) to entity keys of the
    same world, e.g. ``{"located_in": ("town square_0",)}``. ``tags`` and relation values are
    normalised to tuples. ``relations`` takes part in equality but not in the hash.

    Raises ``ValueError`` on an empty key/title, an unknown ``entity_type`` or badly typed
    tags/relations.
    """

    key: str
    entity_type: str  # "character" | "location" | "item"
    title: str
    content: str
    tags: tuple[str, ...]
    archetype: str | None = None
    relations: dict[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        _nonempty_str(self.key, "entity key")
        where = f"entity {self.key!r}"
        if self.entity_type not in ENTITY_TYPES:
            raise ValueError(
                f"{where}: entity_type must be one of {', '.join(ENTITY_TYPES)}, "
                f"got {self.entity_type!r}"
            )
        _nonempty_str(self.title, f"{where}: title")
        if not isinstance(self.content, str):
            raise ValueError(f"{where}: content must be a string")
        object.__setattr__(self, "tags", _str_tuple(self.tags, f"{where}: tags"))
        if self.archetype is not None:
            _nonempty_str(self.archetype, f"{where}: archetype")
        if not isinstance(self.relations, Mapping):
            raise ValueError(f"{where}: relations must be an object of name -> [entity key]")
        relations: dict[str, tuple[str, ...]] = {}
        for name, targets in self.relations.items():
            _nonempty_str(name, f"{where}: relation name")
            relations[name] = _str_tuple(targets, f"{where}: relation {name!r}")
        object.__setattr__(self, "relations", relations)


@dataclass(frozen=True)
class WorldSpec:
    """A whole world: its entries plus where it came from.

    ``key`` is the importer's stable name (e.g. the LIGHT file stem ``"possibly-vampires"``),
    ``source`` a human-readable provenance (dataset, licence, file).

    Raises ``ValueError`` when entry keys are not unique or a relation names an entity key
    that is not among the entries.
    """

    key: str
    title: str
    description: str
    entries: tuple[EntitySpec, ...]
    source: str
    _index: dict[str, EntitySpec] = field(
        init=False, repr=False, compare=False, hash=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        _nonempty_str(self.key, "world key")
        _nonempty_str(self.title, f"world {self.key!r}: title")
        for name in ("description", "source"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"world {self.key!r}: {name} must be a string")
        entries = tuple(self.entries)
        index: dict[str, EntitySpec] = {}
        for pos, entry in enumerate(entries):
            if not isinstance(entry, EntitySpec):
                raise ValueError(f"world {self.key!r}: entries[{pos}] is not an EntitySpec")
            if entry.key in index:
                raise ValueError(f"world {self.key!r}: duplicate entity key {entry.key!r}")
            index[entry.key] = entry
        for entry in entries:
            for name, targets in entry.relations.items():
                for target in targets:
                    if target not in index:
                        raise ValueError(
                            f"world {self.key!r}: entity {entry.key!r} relation {name!r} "
                            f"names unknown entity {target!r}"
                        )
        object.__setattr__(self, "entries", entries)
        object.__setattr__(self, "_index", index)

    def characters(self) -> tuple[EntitySpec, ...]:
        """The ``character`` entries, in entry order."""
        return self.of_type("character")

    def locations(self) -> tuple[EntitySpec, ...]:
        """The ``location`` entries, in entry order."""
        return self.of_type("location")

    def items(self) -> tuple[EntitySpec, ...]:
        """The ``item`` entries, in entry order."""
        return self.of_type("item")

    def of_type(self, entity_type: str) -> tuple[EntitySpec, ...]:
        """Entries of one ``entity_type``, in entry order."""
        return tuple(e for e in self.entries if e.entity_type == entity_type)

    def by_key(self, key: str) -> EntitySpec:
        """The entry with this key; raises ``KeyError`` if there is none."""
        try:
            return self._index[key]
        except KeyError:
            raise KeyError(f"world {self.key!r} has no entity {key!r}") from None

    def __contains__(self, key: object) -> bool:
        return key in self._index


@dataclass(frozen=True)
class ScriptTurn:
    """One player utterance addressed to the NPC ``npc_key`` (an entity key of the world)."""

    npc_key: str
    player_text: str

    def __post_init__(self) -> None:
        _nonempty_str(self.npc_key, "turn npc_key")
        _nonempty_str(self.player_text, "turn player_text")


@dataclass(frozen=True)
class SessionScript:
    """A scripted session: player turns, in order, against the world ``world_key``."""

    world_key: str
    turns: tuple[ScriptTurn, ...]

    def __post_init__(self) -> None:
        _nonempty_str(self.world_key, "session world_key")
        turns = tuple(self.turns)
        for pos, turn in enumerate(turns):
            if not isinstance(turn, ScriptTurn):
                raise ValueError(f"session turns[{pos}] is not a ScriptTurn")
        object.__setattr__(self, "turns", turns)

    def check_against(self, world: WorldSpec) -> None:
        """Raise ``ValueError`` unless this script is for ``world`` and every turn addresses
        one of its characters."""
        if self.world_key != world.key:
            raise ValueError(f"session is for world {self.world_key!r}, not {world.key!r}")
        characters = {c.key for c in world.characters()}
        for pos, turn in enumerate(self.turns):
            if turn.npc_key not in characters:
                raise ValueError(
                    f"session turns[{pos}]: {turn.npc_key!r} is not a character of world "
                    f"{world.key!r}"
                )


# --------------------------------------------------------------------------- JSON


YAML_SUFFIXES: tuple[str, ...] = (".yaml", ".yml")
"""File name endings :func:`read_data_file` reads as YAML (compared case-insensitively)."""


def read_data_file(path: str | os.PathLike[str], *, allow_yaml: bool = True) -> Any:
    """Parse a UTF-8 data file: YAML (``yaml.safe_load``) when ``allow_yaml`` is true and the name
    ends in one of :data:`YAML_SUFFIXES`, JSON otherwise. Returns the parsed document (dicts,
    lists, strings, numbers, booleans, None).

    Raises:
        OSError: the file cannot be read (``FileNotFoundError`` when it does not exist).
        ValueError: not UTF-8 text, or not valid JSON/YAML; the message names the file.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{p}: not UTF-8 text ({exc})") from exc
    if allow_yaml and p.suffix.lower() in YAML_SUFFIXES:
        import yaml

        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"{p}: not valid YAML ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{p}: not valid JSON ({exc})") from exc


def _read_json(path: str | os.PathLike[str]) -> Any:
    """Parse a UTF-8 JSON file whatever its name (:func:`read_data_file` without YAML)."""
    return read_data_file(path, allow_yaml=False)


def _check_object(data: Any, what: str, allowed: set[str], required: Iterable[str]) -> None:
    if not isinstance(data, dict):
        raise ValueError(f"{what} must be a JSON object, got {type(data).__name__}")
    missing = [k for k in required if k not in data]
    if missing:
        raise ValueError(f"{what} is missing {', '.join(repr(k) for k in missing)}")
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ValueError(f"{what} has unknown field(s) {', '.join(repr(k) for k in unknown)}")


def _check_header(data: dict[str, Any], expected_format: str, what: str) -> None:
    if "format" in data and data["format"] != expected_format:
        raise ValueError(f"{what}: format is {data['format']!r}, expected {expected_format!r}")
    if "version" in data and data["version"] != FORMAT_VERSION:
        raise ValueError(f"{what}: unsupported version {data['version']!r} (know {FORMAT_VERSION})")


def world_to_dict(spec: WorldSpec) -> dict[str, Any]:
    """``spec`` as a JSON-ready dict in our world format (see the module docstring)."""
    return {
        "format": WORLD_FORMAT,
        "version": FORMAT_VERSION,
        "key": spec.key,
        "title": spec.title,
        "description": spec.description,
        "source": spec.source,
        "entries": [
            {
                "key": e.key,
                "entity_type": e.entity_type,
                "title": e.title,
                "content": e.content,
                "tags": list(e.tags),
                "archetype": e.archetype,
                "relations": {name: list(targets) for name, targets in e.relations.items()},
            }
            for e in spec.entries
        ],
    }


def world_from_dict(data: Any, origin: str = "<world>") -> WorldSpec:
    """Build a :class:`WorldSpec` from our world format; ``ValueError`` prefixed with
    ``origin`` (a file name) on any malformation, duplicate key or dangling relation."""
    try:
        _check_object(data, "top level", _WORLD_FIELDS, _WORLD_REQUIRED)
        _check_header(data, WORLD_FORMAT, "top level")
        raw_entries = data["entries"]
        if not isinstance(raw_entries, list):
            raise ValueError("'entries' must be a list")
        entries = []
        for pos, raw in enumerate(raw_entries):
            what = f"entries[{pos}]"
            _check_object(raw, what, _ENTRY_FIELDS, _ENTRY_REQUIRED)
            try:
                entries.append(
                    EntitySpec(
                        key=raw["key"],
                        entity_type=raw["entity_type"],
                        title=raw["title"],
                        content=raw["content"],
                        tags=raw.get("tags", []),
                        archetype=raw.get("archetype"),
                        relations=raw.get("relations", {}),
                    )
                )
            except ValueError as exc:
                raise ValueError(f"{what}: {exc}") from exc
        return WorldSpec(
            key=data["key"],
            title=data["title"],
            description=data.get("description", ""),
            entries=tuple(entries),
            source=data.get("source", ""),
        )
    except ValueError as exc:
        raise ValueError(f"{origin}: {exc}") from exc


def load_world_json(path: str | os.PathLike[str]) -> WorldSpec:
    """Load a world from our JSON format (module docstring).

    Raises ``ValueError`` naming ``path`` and the problem when the file is not JSON, a field is
    missing, unknown or mistyped, entity keys repeat, or a relation names an unknown entity;
    ``FileNotFoundError`` when the file does not exist.
    """
    return world_from_dict(_read_json(path), origin=str(path))


def dump_world_json(spec: WorldSpec, path: str | os.PathLike[str]) -> Path:
    """Write ``spec`` to ``path`` in our JSON format (UTF-8, indented, stable order) so that
    ``load_world_json(path) == spec``. Returns the path written."""
    p = Path(path)
    p.write_text(
        json.dumps(world_to_dict(spec), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return p


def session_to_dict(script: SessionScript) -> dict[str, Any]:
    """``script`` as a JSON-ready dict in our session format."""
    return {
        "format": SESSION_FORMAT,
        "version": FORMAT_VERSION,
        "world_key": script.world_key,
        "turns": [{"npc_key": t.npc_key, "player_text": t.player_text} for t in script.turns],
    }


def dump_session_script(script: SessionScript, path: str | os.PathLike[str]) -> Path:
    """Write ``script`` to ``path`` in our session JSON format. Returns the path written."""
    p = Path(path)
    p.write_text(
        json.dumps(session_to_dict(script), ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
    )
    return p


def load_session_script(
    path: str | os.PathLike[str], world: WorldSpec | None = None
) -> SessionScript:
    """Load a session script ``{"world_key", "turns": [{"npc_key", "player_text"}]}``.

    With ``world`` given, also checks that the script is for that world and that every turn
    addresses one of its characters. Raises ``ValueError`` naming ``path`` on malformed input
    (not JSON, missing/unknown/mistyped fields, empty text) or a failed check.
    """
    data = _read_json(path)
    try:
        _check_object(data, "top level", _SESSION_FIELDS, ("world_key", "turns"))
        _check_header(data, SESSION_FORMAT, "top level")
        if not isinstance(data["turns"], list):
            raise ValueError("'turns' must be a list")
        turns = []
        for pos, raw in enumerate(data["turns"]):
            what = f"turns[{pos}]"
            _check_object(raw, what, _TURN_FIELDS, ("npc_key", "player_text"))
            try:
                turns.append(ScriptTurn(npc_key=raw["npc_key"], player_text=raw["player_text"]))
            except ValueError as exc:
                raise ValueError(f"{what}: {exc}") from exc
        script = SessionScript(world_key=data["world_key"], turns=tuple(turns))
        if world is not None:
            script.check_against(world)
        return script
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


__all__ = [
    "ENTITY_TYPES",
    "KNOWN_RELATIONS",
    "EntitySpec",
    "ScriptTurn",
    "SessionScript",
    "WorldSpec",
    "dump_session_script",
    "dump_world_json",
    "load_session_script",
    "load_world_json",
    "read_data_file",
    "session_to_dict",
    "world_from_dict",
    "world_to_dict",
]
