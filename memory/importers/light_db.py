"""Importer for LIGHT's entity database (Urbanek et al. 2019, "Learning to Speak and Act in a
Fantasy Text Adventure Game"; facebookresearch/LIGHT, MIT): ``characters.json``,
``objects.json`` and ``rooms.json`` become the characters, items and locations of one world.

Input (a directory holding the three files; read in place, never copied)::

    characters.json  [{"id": int, "name": str, "char_type": str, "description": str,
                       "persona": [str], "emojis": [str]}]
    objects.json     [{"id": int, "name": str, "descripton": [str],   # sic, LIGHT's spelling
                       "base_form": [str], "emojis": [str]}]
    rooms.json       [{"id": int, "name": str, "category": str, "description": str}]

Entries follow the rules of the LIGHT world-map importer (:mod:`memory.importers.light`):
title = the readable ``name``; character content ``"Description: …\\nPersona: …"``;
``archetype`` = ``char_type``; tags ``light``, ``type:<entity_type>``, ``char_type:<t>``.
World maps key a node ``"<name>_<n>"``; the database numbers each table on its own, so a
key is ``"<name>_<t><id>"`` with the table's initial ``t`` (``c``, ``o``, ``r``): for
example ``"Nun_c1324"``, ``"old blouse_o3842"``, ``"The rectory_r132"``.

Decisions on the data as published (1,755 characters, 3,462 objects, 661 rooms):

* A description that is only the placeholder ``"{}"`` (1 character, 3 objects) counts as
  empty. An entry keeps its other text; an object left with no text at all is still imported
  (its title is part of its embedded document) and counted in ``empty_content``.
* Several records share a name with different texts (``dining hall`` x6, ``gold`` x3): they
  are distinct LIGHT entities and are all kept, each under its own key (``shared_titles``
  counts the records whose title another record of the world also has). A record equal to an
  earlier one of the same table in name and text (none in the published files) is dropped and
  counted in ``duplicates_dropped``.
* Characters whose ``char_type`` is ``object`` (49, e.g. "tiny fairy lights") are kept as
  characters with that archetype, as LIGHT lists them.
* Several persona texts of one character are alternatives by different crowdworkers: each
  becomes its own ``Persona:`` line; several object descriptions are joined by a blank line.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory.importers.light import LIGHT_SOURCE, _dedup, _readable
from memory.importers.spec import EntitySpec, WorldSpec, _read_json

TABLES: tuple[str, ...] = ("characters", "objects", "rooms")
"""The table files, in import order."""

_TABLE = {
    # table: (entity type, key letter, description field)
    "characters": ("character", "c", "description"),
    "objects": ("item", "o", "descripton"),
    "rooms": ("location", "r", "description"),
}
PLACEHOLDERS = frozenset({"{}"})
"""Description texts that mean "no description" in the published files."""
DEFAULT_WORLD_KEY = "light-db"


@dataclass(frozen=True)
class LightDbImport:
    """A loaded LIGHT entity database: the :class:`WorldSpec` and what was done to get it.

    ``counts`` has, per table: ``read`` (records in the file), ``imported``, ``skipped``
    (beyond ``limit``), ``duplicates_dropped``, ``placeholders_cleared`` (``"{}"`` texts
    removed), ``empty_content`` (entries with no text besides the title); and
    ``shared_titles`` over the whole world.
    """

    world: WorldSpec
    counts: dict[str, Any] = field(default_factory=dict)


def _norm(text: str) -> str:
    return " ".join(text.split())


def _texts(value: Any, what: str) -> list[str]:
    """A description field (a string or a list of strings) as trimmed non-empty texts."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(t, str) for t in items):
        raise ValueError(f"{what} must be a string or a list of strings")
    return [t.strip() for t in items if t.strip()]


def _record(raw: Any, where: str, desc_field: str) -> tuple[int, str]:
    if not isinstance(raw, dict):
        raise ValueError(f"{where} must be an object, got {type(raw).__name__}")
    rid, name = raw.get("id"), raw.get("name")
    if not isinstance(rid, int) or isinstance(rid, bool):
        raise ValueError(f"{where}: 'id' must be an integer, got {rid!r}")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    if desc_field not in raw:
        raise ValueError(f"{where}: missing {desc_field!r}")
    return rid, name


def _entry(table: str, raw: Mapping[str, Any], where: str, stats: Counter) -> EntitySpec:
    entity_type, letter, desc_field = _TABLE[table]
    texts = _texts(raw.get(desc_field), f"{where}: {desc_field!r}")
    kept = [t for t in texts if t not in PLACEHOLDERS]
    stats["placeholders_cleared"] += len(texts) - len(kept)
    name = " ".join(raw["name"].split())
    tags = ["light", "light-db", f"type:{entity_type}"]
    archetype = None
    if table == "characters":
        personas = _texts(raw.get("persona"), f"{where}: 'persona'")
        parts = [("Description", t) for t in kept] + [("Persona", p) for p in personas]
        content = "\n".join(f"{label}: {text}" for label, text in parts)
        char_type = raw.get("char_type")
        if isinstance(char_type, str) and char_type.strip():
            archetype = char_type.strip()
            tags.append(f"char_type:{archetype}")
    elif table == "objects":
        content = "\n\n".join(kept)
        tags += [f"base_form:{_norm(b)}" for b in _texts(raw.get("base_form"), f"{where}: 'base_form'")]
    else:
        content = "\n\n".join(kept)
        category = raw.get("category")
        if isinstance(category, str) and category.strip():
            tags.append(f"category:{_norm(category)}")
    if not content:
        stats["empty_content"] += 1
    return EntitySpec(
        key=f"{name}_{letter}{raw['id']}",
        entity_type=entity_type,
        title=_readable(name),
        content=content,
        tags=_dedup(tags),
        archetype=archetype,
    )


def _load_table(path: Path, table: str, limit: int | None) -> tuple[list[EntitySpec], Counter]:
    data = _read_json(path)
    stats: Counter = Counter()
    try:
        if not isinstance(data, list):
            raise ValueError(f"top level must be a list of records, got {type(data).__name__}")
        desc_field = _TABLE[table][2]
        records: dict[int, tuple[int, Mapping[str, Any]]] = {}
        for pos, raw in enumerate(data):
            rid, _ = _record(raw, f"record [{pos}]", desc_field)
            if rid in records:
                raise ValueError(f"record [{pos}]: id {rid} repeats record [{records[rid][0]}]")
            records[rid] = (pos, raw)
        stats["read"] = len(records)
        entries: list[EntitySpec] = []
        seen: set[tuple[str, str]] = set()
        for rid in sorted(records):
            pos, raw = records[rid]
            if limit is not None and len(entries) >= limit:
                stats["skipped"] += 1
                continue
            entry = _entry(table, raw, f"record [{pos}] (id {rid})", stats)
            identity = (_norm(entry.title).lower(), _norm(entry.content).lower())
            if identity in seen:
                stats["duplicates_dropped"] += 1
                continue
            seen.add(identity)
            entries.append(entry)
        stats["imported"] = len(entries)
        return entries, stats
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def load_light_db(
    directory: str | os.PathLike[str],
    *,
    limit: int | None = None,
    tables: Iterable[str] = TABLES,
    world_key: str | None = None,
) -> LightDbImport:
    """Load LIGHT's entity database from ``directory`` into one world.

    Args:
        directory: folder with ``characters.json``, ``objects.json``, ``rooms.json``
            (LIGHT's ``ml-aided-maps`` entity lists; e.g. ``../shared/data/light``).
        limit: import at most this many records of each table, lowest ids first (the
            full database is 5,878 entries); ``None`` imports everything.
        tables: which of :data:`TABLES` to read.
        world_key: the world's key; default ``"light-db"``, or ``"light-db-<limit>"`` when
            ``limit`` is given, so that a subset never stands in for the whole database
            (importing a key that exists leaves the existing world as it is).

    Returns:
        :class:`LightDbImport` with the world (title "LIGHT entity database") and counts.

    Raises:
        ValueError: ``limit`` < 0, an unknown table, or a file that is not JSON, not a list
            of records, has a record without an integer ``id``/non-empty ``name``/its
            description field, mistyped texts, or a repeated id (message names the file
            and the record).
        FileNotFoundError: a table file is missing.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    chosen = list(dict.fromkeys(tables))
    unknown = [t for t in chosen if t not in _TABLE]
    if unknown or not chosen:
        raise ValueError(f"tables must be among {', '.join(TABLES)}, got {chosen!r}")
    d = Path(directory)
    entries: list[EntitySpec] = []
    counts: dict[str, Any] = {}
    for table in TABLES:
        if table not in chosen:
            continue
        got, stats = _load_table(d / f"{table}.json", table, limit)
        entries += got
        counts[table] = {k: stats[k] for k in ("read", "imported", "skipped",
                                               "duplicates_dropped", "placeholders_cleared",
                                               "empty_content")}
    titles = Counter(_norm(e.title).lower() for e in entries)
    counts["shared_titles"] = sum(n for n in titles.values() if n > 1)
    counts["entries"] = len(entries)
    key = world_key or (DEFAULT_WORLD_KEY if limit is None else f"{DEFAULT_WORLD_KEY}-{limit}")
    subset = "" if limit is None else f" (first {limit} of each table)"
    world = WorldSpec(
        key=key,
        title="LIGHT entity database",
        description=f"LIGHT's crowd-sourced fantasy characters, objects and rooms{subset}.",
        entries=tuple(entries),
        source=f"{LIGHT_SOURCE}; {', '.join(f'{t}.json' for t in TABLES if t in chosen)}",
    )
    return LightDbImport(world=world, counts=counts)


def table_names(value: str | Sequence[str]) -> list[str]:
    """``"characters,rooms"`` (or a list) -> ``["characters", "rooms"]``; ``ValueError`` for
    a name not in :data:`TABLES`."""
    names = [v.strip() for v in (value.split(",") if isinstance(value, str) else value)]
    names = [n for n in names if n]
    bad = [n for n in names if n not in _TABLE]
    if bad or not names:
        raise ValueError(f"tables must be among {', '.join(TABLES)}, got {value!r}")
    return names


__all__ = ["DEFAULT_WORLD_KEY", "LightDbImport", "PLACEHOLDERS", "TABLES", "load_light_db",
           "table_names"]
