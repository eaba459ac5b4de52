"""Importers for Generative Agents' Smallville (Park et al. 2023, "Generative Agents:
Interactive Simulacra of Human Behavior"; joonspk-research/generative_agents, Apache-2.0).

* :func:`load_smallville_world` reads the 25 residents' bootstrap memory
  (``personas_n25/<name>.json``, the ``scratch.json`` of the upstream
  ``environment/frontend_server/storage/base_the_ville_n25/personas/<name>/bootstrap_memory``),
  their spatial memory (``spatial_n25/<name>.json``) and the town's map metadata (``world/``:
  upstream ``environment/frontend_server/static_dirs/assets/the_ville/matrix``) into one
  :class:`WorldSpec`.
* :func:`load_smallville_conversations` reads the recorded conversations of a simulation run
  (``demo_3agents/<name>/nodes.json``: each agent's associative memory, whose ``chat`` nodes
  carry ``filling = [[speaker, utterance], ...]``).

Paths are always arguments: the data lives outside the project (``../shared/data/smallville``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from memory.importers.spec import EntitySpec, WorldSpec, _read_json

SMALLVILLE_SOURCE = ("Generative Agents (Park et al. 2023), joonspk-research/generative_agents, "
                     "Apache-2.0")
WORLD_KEY = "smallville"
ADDRESS_SEP = ":"
"""Generative Agents addresses places as ``world:sector:arena[:object]``."""

_PERSONA_FIELDS = (  # (label, scratch field): the bootstrap memory, in this order
    ("Innate traits", "innate"),
    ("Learned", "learned"),
    ("Currently", "currently"),
    ("Lifestyle", "lifestyle"),
    ("Daily plan", "daily_plan_req"),
)


def _text(node: Mapping[str, Any], name: str) -> str:
    value = node.get(name)
    return " ".join(value.split()) if isinstance(value, str) else ""


def _clean(name: str) -> str:
    """A place name as written, whitespace-normalised (the CSVs carry trailing spaces)."""
    return " ".join(name.split())


def _csv_rows(path: Path, width: int) -> list[list[str]]:
    """Rows of a Smallville block CSV (``block id, world, sector[, arena[, object]]``), the
    block id dropped and names cleaned; ``ValueError`` naming the file on a short row."""
    rows = []
    with path.open(encoding="utf-8", newline="") as fh:
        for n, row in enumerate(csv.reader(fh), start=1):
            if not row or not "".join(row).strip():
                continue
            if len(row) < width:
                raise ValueError(f"{path}: line {n} has {len(row)} fields, expected {width}")
            names = [_clean(c) for c in row[1:width]]
            if not all(names):
                raise ValueError(f"{path}: line {n} has an empty name")
            rows.append(names)
    return rows


def _spatial(path: Path) -> dict[str, dict[str, dict[str, list[str]]]]:
    """A resident's spatial memory ``{world: {sector: {arena: [object]}}}``, names cleaned."""
    data = _read_json(path)
    out: dict[str, dict[str, dict[str, list[str]]]] = {}
    try:
        if not isinstance(data, dict):
            raise ValueError("top level must be an object world -> sector -> arena -> [object]")
        for world, sectors in data.items():
            if not isinstance(sectors, dict):
                raise ValueError(f"world {world!r} must map sectors to arenas")
            for sector, arenas in sectors.items():
                if not isinstance(arenas, dict):
                    raise ValueError(f"sector {sector!r} must map arenas to object lists")
                for arena, objects in arenas.items():
                    if not isinstance(objects, list) or not all(isinstance(o, str) for o in objects):
                        raise ValueError(f"arena {arena!r} must list object names")
                    out.setdefault(_clean(world), {}).setdefault(_clean(sector), {})[
                        _clean(arena)] = [_clean(o) for o in objects if o.strip()]
        return out
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc


def _address(*parts: str) -> str:
    return ADDRESS_SEP.join(parts)


def _join(names: list[str]) -> str:
    return ", ".join(names)


def load_smallville_world(directory: str | os.PathLike[str], key: str = WORLD_KEY) -> WorldSpec:
    """Load the Smallville town ("the Ville") and its 25 residents into one world.

    Input (``directory``, e.g. ``../shared/data/smallville``):

    * ``personas_n25/*.json``: one resident each, ``{name, age, innate, learned, currently,
      lifestyle, living_area: "world:sector:arena", daily_plan_req, ...}``;
    * ``spatial_n25/*.json``: what each resident knows of the town,
      ``{world: {sector: {arena: [object]}}}``;
    * ``world/maze_meta_info.json`` (``world_name``, ``maze_width``/``maze_height`` in tiles),
      ``world/sector_blocks.csv`` and ``world/arena_blocks.csv`` (rows ``block id, world,
      sector[, arena]``).

    Output: world ``key`` (default ``"smallville"``), entries keyed by Generative Agents'
    own identifiers (as the LIGHT importer keys by node id):

    * each resident -> ``character`` keyed by ``name``; content ``"Age: …\\nInnate traits:
      …\\nLearned: …\\nCurrently: …\\nLifestyle: …\\nDaily plan: …"`` (empty fields left
      out); relations ``located_in`` (the arena of ``living_area``) and ``knows`` (the sectors
      of its spatial memory); tags ``in:<arena>``, ``age:<n>``;
    * each sector (the CSV's and the residents' known ones) -> ``location`` keyed
      ``"the Ville:<sector>"``, content naming its areas; relation ``contains`` (its arenas);
    * each arena -> ``location`` keyed ``"the Ville:<sector>:<arena>"``, content naming the
      sector, the objects the residents know there and who lives there; relations
      ``located_in`` (the sector) and ``contains`` (residents living there); tags
      ``object:<name>``. Objects (beds, desks, pianos: furniture without descriptions) are
      named in their arena's content, not imported as items.

    All entries carry the tags ``smallville`` and ``type:<entity_type>``.

    Raises:
        ValueError: a file that is not JSON/CSV of the expected shape, a resident without a
            ``name`` or whose ``living_area`` is not ``world:sector:arena``, or two residents
            with one name (the message names the file).
        FileNotFoundError: a folder or file is missing or ``personas_n25`` is empty.
    """
    d = Path(directory)
    meta = _read_json(d / "world" / "maze_meta_info.json")
    if not isinstance(meta, dict):
        raise ValueError(f"{d / 'world' / 'maze_meta_info.json'}: must be a JSON object")
    persona_files = sorted((d / "personas_n25").glob("*.json"))
    if not persona_files:
        raise FileNotFoundError(f"no resident files in {d / 'personas_n25'}")

    # places: sector -> arena -> known objects (ordered, de-duplicated)
    places: dict[str, dict[str, dict[str, None]]] = {}
    world_name = None
    for world, sector in _csv_rows(d / "world" / "sector_blocks.csv", 3):
        world_name = world_name or world
        places.setdefault(sector, {})
    for world, sector, arena in _csv_rows(d / "world" / "arena_blocks.csv", 4):
        world_name = world_name or world
        places.setdefault(sector, {}).setdefault(arena, {})
    world_name = world_name or "the Ville"

    residents: dict[str, dict[str, Any]] = {}
    for path in persona_files:
        data = _read_json(path)
        if not isinstance(data, dict) or not _text(data, "name"):
            raise ValueError(f"{path}: a resident must be an object with a non-empty 'name'")
        name = _text(data, "name")
        if name in residents:
            raise ValueError(f"{path}: resident {name!r} appears twice")
        living = [_clean(p) for p in _text(data, "living_area").split(ADDRESS_SEP)]
        if len(living) != 3 or not all(living):
            raise ValueError(f"{path}: living_area must be 'world:sector:arena', got "
                             f"{data.get('living_area')!r}")
        places.setdefault(living[1], {}).setdefault(living[2], {})
        known: list[str] = []
        spatial_path = d / "spatial_n25" / path.name
        if spatial_path.is_file():
            for sectors in _spatial(spatial_path).values():
                for sector, arenas in sectors.items():
                    known.append(sector)
                    for arena, objects in arenas.items():
                        bucket = places.setdefault(sector, {}).setdefault(arena, {})
                        bucket.update(dict.fromkeys(objects))
        residents[name] = {"data": data, "living": living, "knows": list(dict.fromkeys(known))}

    living_here: dict[tuple[str, str], list[str]] = {}
    for name, r in residents.items():
        living_here.setdefault((r["living"][1], r["living"][2]), []).append(name)

    entries: list[EntitySpec] = []
    for name, r in residents.items():
        data = r["data"]
        arena_key = _address(world_name, r["living"][1], r["living"][2])
        age = data.get("age")
        has_age = isinstance(age, int) and not isinstance(age, bool)
        lines = [f"Age: {age}"] if has_age else []
        lines += [f"{label}: {_text(data, f)}" for label, f in _PERSONA_FIELDS if _text(data, f)]
        tags = ["smallville", "type:character", f"in:{arena_key}"] + ([f"age:{age}"] if has_age else [])
        relations = {"located_in": (arena_key,)}
        if r["knows"]:
            relations["knows"] = tuple(_address(world_name, s) for s in r["knows"])
        entries.append(EntitySpec(key=name, entity_type="character", title=name,
                                  content="\n".join(lines), tags=tuple(tags), relations=relations))

    for sector in sorted(places):
        arenas = sorted(places[sector])
        sector_key = _address(world_name, sector)
        content = f"{sector} is a place in {world_name}, the town of Smallville."
        if arenas:
            content += f" Its areas: {_join(arenas)}."
        entries.append(EntitySpec(
            key=sector_key, entity_type="location", title=sector, content=content,
            tags=("smallville", "type:location", "sector"),
            relations={"contains": tuple(_address(sector_key, a) for a in arenas)} if arenas else {},
        ))
        for arena in arenas:
            objects = list(places[sector][arena])
            people = sorted(living_here.get((sector, arena), []))
            text = [f"The {arena} of {sector}, in {world_name}."]
            if objects:
                text.append(f"Objects here: {_join(objects)}.")
            if people:
                text.append(f"Lives here: {_join(people)}.")
            relations: dict[str, tuple[str, ...]] = {"located_in": (sector_key,)}
            if people:
                relations["contains"] = tuple(people)
            entries.append(EntitySpec(
                key=_address(sector_key, arena), entity_type="location",
                title=f"{sector}: {arena}", content=" ".join(text),
                tags=("smallville", "type:location", "arena", *(f"object:{o}" for o in objects)),
                relations=relations,
            ))

    width, height = meta.get("maze_width"), meta.get("maze_height")
    size = f" a {width} x {height}-tile map" if isinstance(width, int) and isinstance(height, int) else ""
    return WorldSpec(
        key=key,
        title=f"Smallville ({world_name})",
        description=(f"{world_name}: the town of Generative Agents' Smallville,{size} with "
                     f"{len(residents)} residents."),
        entries=tuple(entries),
        source=f"{SMALLVILLE_SOURCE}; personas_n25, spatial_n25, world",
    )


# --------------------------------------------------------------------------- conversations


@dataclass(frozen=True)
class Conversation:
    """One recorded conversation between residents.

    ``created`` is the simulation time the agents stored it at (naive in the data, read as
    UTC); ``participants`` the two names of the ``chat`` node (subject, object) sorted;
    ``utterances`` the ``(speaker, text)`` pairs in spoken order; ``recorded_by`` the agents
    whose memory held it (each participant stores the same conversation).
    """

    created: datetime
    participants: tuple[str, ...]
    utterances: tuple[tuple[str, str], ...]
    recorded_by: tuple[str, ...]


def _chat(node: Mapping[str, Any], where: str) -> tuple[datetime, tuple[str, ...], tuple]:
    try:
        created = datetime.strptime(str(node.get("created")), "%Y-%m-%d %H:%M:%S")
    except ValueError as exc:
        raise ValueError(f"{where}: 'created' is not 'YYYY-MM-DD HH:MM:SS': {exc}") from exc
    filling = node.get("filling")
    if not isinstance(filling, list):
        raise ValueError(f"{where}: 'filling' must be a list of [speaker, utterance]")
    utterances = []
    for i, pair in enumerate(filling):
        if (not isinstance(pair, list) or len(pair) != 2
                or not all(isinstance(x, str) for x in pair)):
            raise ValueError(f"{where}: filling[{i}] must be [speaker, utterance]")
        speaker, text = _clean(pair[0]), " ".join(pair[1].split())
        if speaker and text:
            utterances.append((speaker, text))
    people = {_clean(str(node.get(f) or "")) for f in ("subject", "object")} - {""}
    people |= {s for s, _ in utterances}
    return created.replace(tzinfo=timezone.utc), tuple(sorted(people)), tuple(utterances)


def load_smallville_conversations(directory: str | os.PathLike[str]) -> list[Conversation]:
    """The conversations recorded in a Generative Agents run, oldest first.

    Reads ``<directory>/*/nodes.json`` (each agent's associative memory: ``{node_id: {type,
    created, subject, object, filling, ...}}``) and keeps the ``chat`` nodes. Both
    participants store each conversation, so identical ones (same time, participants and
    utterances) are merged. Utterances with an empty speaker or text are skipped; chats left
    empty are dropped.

    Raises:
        ValueError: a ``nodes.json`` that is not JSON, not an object of nodes, or a ``chat``
            node with a malformed ``created`` or ``filling`` (the message names file and node).
        FileNotFoundError: no ``*/nodes.json`` under ``directory``.
    """
    d = Path(directory)
    files = sorted(d.glob("*/nodes.json"))
    if not files:
        raise FileNotFoundError(f"no */nodes.json under {d}")
    merged: dict[tuple, list] = {}
    for path in files:
        nodes = _read_json(path)
        if not isinstance(nodes, dict):
            raise ValueError(f"{path}: top level must be an object of node id -> node")
        agent = path.parent.name
        for node_id, node in nodes.items():
            if not isinstance(node, dict) or node.get("type") != "chat":
                continue
            created, people, utterances = _chat(node, f"{path}: node {node_id!r}")
            if not utterances:
                continue
            ident = (created, people, utterances)
            merged.setdefault(ident, []).append(agent)
    out = [Conversation(created=c, participants=p, utterances=u,
                        recorded_by=tuple(sorted(set(agents))))
           for (c, p, u), agents in merged.items()]
    out.sort(key=lambda c: (c.created, c.participants))
    return out


__all__ = ["Conversation", "SMALLVILLE_SOURCE", "WORLD_KEY", "load_smallville_conversations",
           "load_smallville_world"]
