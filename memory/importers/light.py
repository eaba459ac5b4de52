"""Importers for LIGHT data (Urbanek et al. 2019, "Learning to Speak and Act in a Fantasy Text
Adventure Game"; facebookresearch/LIGHT and facebookresearch/ParlAI, MIT licence).

* :func:`load_light_world` reads a LIGHT world map (``possibly-vampires.json`` and friends,
  from LIGHT's ``prod_maps`` / ``ml-aided-maps``) into a :class:`WorldSpec`.
* :func:`load_parlai_utterances` reads the human-written lines of the ParlAI LIGHT dialogue
  test fixtures (``parlai/tasks/light_*/test/*.yml``).
* :func:`light_session_script` turns those lines into a :class:`SessionScript` against a world.

Paths are always arguments: the data lives outside the project (``../shared/data/light``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from memory.importers.spec import (
    EntitySpec,
    ScriptTurn,
    SessionScript,
    WorldSpec,
    _read_json,
)

LIGHT_SOURCE = "LIGHT (Urbanek et al. 2019), facebookresearch/LIGHT, MIT"

_KINDS = (("rooms", "location"), ("agents", "character"), ("objects", "item"))


# --------------------------------------------------------------------------- world maps


def _text(node: Mapping[str, Any], field: str) -> str:
    """A node's text field, whitespace-trimmed; "" when absent or not a string."""
    value = node.get(field)
    return value.strip() if isinstance(value, str) else ""


def _ref(value: Any) -> str | None:
    """The node id of a LIGHT reference ``{"target_id": id}`` (or a bare id string)."""
    if isinstance(value, Mapping):
        value = value.get("target_id")
    return value if isinstance(value, str) and value else None


def _ref_ids(value: Any) -> list[str]:
    """Node ids of a LIGHT reference map ``{id: {"target_id": id, ...}}`` (or a list of ids),
    in source order."""
    if isinstance(value, Mapping):
        ids = [_ref(v) or (k if isinstance(k, str) else None) for k, v in value.items()]
    elif isinstance(value, list):
        ids = [_ref(v) for v in value]
    else:
        ids = []
    return [i for i in ids if i]


def _readable(name: str) -> str:
    """``"baker"`` -> ``"Baker"``; leaves the rest of the name as written."""
    name = " ".join(name.split())
    return name[:1].upper() + name[1:]


def _dedup(values: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(values))


def _classify(data: Mapping[str, Any], nodes: Mapping[str, Any]) -> dict[str, str]:
    """node id -> entity type, from the ``rooms``/``agents``/``objects`` lists (falling back
    to the nodes' own ``room``/``agent``/``object`` flags when a list is absent)."""
    kinds: dict[str, str] = {}
    for list_name, entity_type in _KINDS:
        listed = data.get(list_name)
        if listed is None:
            flag = list_name[:-1]  # "rooms" -> "room"
            listed = [k for k, n in nodes.items() if isinstance(n, Mapping) and n.get(flag)]
        if not isinstance(listed, list):
            raise ValueError(f"{list_name!r} must be a list of node ids")
        for node_id in listed:
            if not isinstance(node_id, str) or node_id not in nodes:
                continue  # dangling listing: ignored like any other dangling reference
            if node_id in kinds and kinds[node_id] != entity_type:
                raise ValueError(
                    f"node {node_id!r} is listed as both {kinds[node_id]} and {entity_type}"
                )
            kinds[node_id] = entity_type
    return kinds


def load_light_world(path: str | os.PathLike[str]) -> WorldSpec:
    """Load a LIGHT world map into a :class:`WorldSpec`.

    Input (LIGHT's saved-world format): ``{"title": str, "rooms": [id], "agents": [id],
    "objects": [id], "nodes": {id: node}}``. Rooms have ``name, desc, extra_desc, neighbors``;
    agents ``name, desc, persona, mission, char_type, contained_nodes, container_node``;
    objects ``name, desc, classes, container_node``. References are ``{"target_id": id}``.

    Output: world ``key`` = file stem, ``title`` = readable stem, ``description`` = the map's
    ``title`` text. One entry per listed node, keyed by LIGHT node id:

    * rooms -> ``location``; content ``desc`` + blank line + ``extra_desc``; relations
      ``neighbors`` and ``contains``; tags ``neighbor:<id>``.
    * agents -> ``character``; content ``"Description: …\\nPersona: …\\nMission: …"``;
      ``archetype`` = ``char_type`` (``None`` if absent); relations ``located_in`` and
      ``contains`` (what they carry); tags ``in:<room>``, ``char_type:<t>``.
    * objects -> ``item``; relations ``carried_by`` (held by an agent) or ``located_in`` (in a
      room or another object) plus ``contains``; tags ``in:<id>`` / ``carried_by:<id>`` and
      ``class:<c>`` for LIGHT's classes (wearable, container, food, ...).

    All entries also get the tags ``light`` and ``type:<entity_type>``. References to nodes
    that do not exist (rooms' ``VOID`` container) are dropped. Neighbours are kept as listed
    (directed). Raises ``ValueError`` naming ``path`` when the file is not JSON, lacks
    ``nodes``, has mistyped lists/nodes, or lists a node under two kinds.
    """
    p = Path(path)
    data = _read_json(p)
    try:
        if not isinstance(data, dict):
            raise ValueError(f"top level must be a JSON object, got {type(data).__name__}")
        if "nodes" not in data:
            raise ValueError("missing 'nodes' (not a LIGHT world map?)")
        nodes = data["nodes"]
        if not isinstance(nodes, dict):
            raise ValueError("'nodes' must be an object of node id -> node")
        for node_id, node in nodes.items():
            if not isinstance(node, dict):
                raise ValueError(f"node {node_id!r} must be an object")
        kinds = _classify(data, nodes)
        # Containment: a child's container_node is the truth, a parent's contained_nodes
        # adds its own view. Only references to imported entries survive.
        container_of: dict[str, str] = {}
        pointing_here: dict[str, list[str]] = {k: [] for k in kinds}
        for node_id in kinds:
            parent = _ref(nodes[node_id].get("container_node"))
            if parent in kinds and parent != node_id:
                container_of[node_id] = parent
                pointing_here[parent].append(node_id)
        children_of = {
            node_id: list(
                _dedup(
                    [
                        c
                        for c in _ref_ids(nodes[node_id].get("contained_nodes"))
                        if c in kinds and c != node_id
                    ]
                    + pointing_here[node_id]
                )
            )
            for node_id in kinds
        }
        entries = [
            _entry(node_id, nodes[node_id], kinds, container_of.get(node_id), children_of[node_id])
            for node_id in kinds
        ]
        description = data.get("title")
        return WorldSpec(
            key=p.stem,
            title=_readable(p.stem.replace("-", " ").replace("_", " ")),
            description=description.strip() if isinstance(description, str) else "",
            entries=tuple(entries),
            source=f"{LIGHT_SOURCE}; {p.name}",
        )
    except ValueError as exc:
        raise ValueError(f"{p}: {exc}") from exc


def _entry(
    node_id: str,
    node: Mapping[str, Any],
    kinds: Mapping[str, str],
    container: str | None,
    children: list[str],
) -> EntitySpec:
    entity_type = kinds[node_id]
    title = _readable(_text(node, "name") or node_id)
    tags = ["light", f"type:{entity_type}"]
    relations: dict[str, tuple[str, ...]] = {}

    archetype = None
    if entity_type == "location":
        content = "\n\n".join(t for t in (_text(node, "desc"), _text(node, "extra_desc")) if t)
        neighbors = _dedup(n for n in _ref_ids(node.get("neighbors")) if kinds.get(n) == "location")
        if neighbors:
            relations["neighbors"] = neighbors
        tags += [f"neighbor:{n}" for n in neighbors]
    elif entity_type == "character":
        parts = [
            ("Description", _text(node, "desc")),
            ("Persona", _text(node, "persona")),
            ("Mission", _text(node, "mission")),
        ]
        content = "\n".join(f"{label}: {text}" for label, text in parts if text)
        char_type = _text(node, "char_type")
        archetype = char_type or None
        if char_type:
            tags.append(f"char_type:{char_type}")
        if container:
            relations["located_in"] = (container,)
            tags.append(f"in:{container}")
    else:
        content = _text(node, "desc")
        if container and kinds[container] == "character":
            relations["carried_by"] = (container,)
            tags.append(f"carried_by:{container}")
        elif container:
            relations["located_in"] = (container,)
            tags.append(f"in:{container}")
        classes = node.get("classes")
        if isinstance(classes, list):
            tags += [f"class:{c}" for c in classes if isinstance(c, str) and c != "object"]
    if children:
        relations["contains"] = tuple(children)
    return EntitySpec(
        key=node_id,
        entity_type=entity_type,
        title=title,
        content=content,
        tags=_dedup(tags),
        archetype=archetype,
        relations=relations,
    )


# --------------------------------------------------------------------------- ParlAI fixtures

_SPEECH_PREFIXES = ("_self_say ", "_partner_say ")


def _norm(text: str) -> str:
    return " ".join(text.split())


def _labels(act: Mapping[str, Any]) -> list[str]:
    value = act.get("labels", act.get("eval_labels"))
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str)]
    return []


def _strip_speaker(line: str, speakers: list[str]) -> str:
    """``"bear: I am hungry"`` -> ``"I am hungry"`` for a known speaker name (longest first,
    names may contain commas); lines without a known speaker are kept whole."""
    for name in speakers:
        prefix = f"{name}:"
        if line.startswith(prefix):
            return line[len(prefix) :]
    return line


def _act_utterances(act: Mapping[str, Any], labels_are_speech: bool) -> list[tuple[str, str]]:
    """Speech lines of one two-party ParlAI LIGHT act, in document order: the ``_self_say``
    / ``_partner_say`` lines of its ``text``, then its label when the episode's task is
    speech. Model-written partner lines are handled by the caller."""
    out: list[tuple[str, str]] = []
    text = act.get("text")
    for line in text.split("\n") if isinstance(text, str) else []:
        for prefix in _SPEECH_PREFIXES:
            if line.startswith(prefix):
                out.append((prefix, line[len(prefix) :]))
    if labels_are_speech:
        out.extend(("_label", label) for label in _labels(act))
    return out


def _multiparty_utterances(act: Mapping[str, Any]) -> list[str]:
    """Speech lines of one multi-party LIGHT act: its ``text`` is the running transcript of
    ``"speaker: line"`` lines and its label the next such line; every line is a
    crowdworker's. Speaker prefixes are removed."""
    speakers = sorted(
        (c for c in act["characters"] if isinstance(c, str) and c), key=len, reverse=True
    )
    text = act.get("text")
    lines = text.split("\n") if isinstance(text, str) else []
    return [_strip_speaker(line, speakers) for line in lines + _labels(act)]


def load_parlai_utterances(
    directory: str | os.PathLike[str], *, include_model_turns: bool = False
) -> list[str]:
    """The human-written speech lines of the ParlAI LIGHT dialogue fixtures in ``directory``.

    Reads every ``*.yml`` there (ParlAI test fixtures: ``{"acts": [[act, ...], ...]}``,
    from facebookresearch/ParlAI ``parlai/tasks/light_*/test``; LIGHT, Urbanek et al. 2019,
    MIT) in sorted file-name order and document order. Speech is the ``_self_say`` /
    ``_partner_say`` lines of an act's ``text`` and its ``labels``/``eval_labels``
    (``light_dialog*``), or the ``"speaker: line"`` transcript lines and labels of the
    multi-party files (speaker prefix removed). Actions, emotes, setting/persona lines and
    ``label_candidates`` (distractors from other episodes) are not speech and are skipped.

    ``light_dialog_wild`` episodes pair a human with a deployed model; the model's
    ``_partner_say`` lines are left out unless ``include_model_turns`` is true.

    Returns whitespace-normalised, de-duplicated strings (first occurrence kept). Raises
    ``ValueError`` naming the file when one is not YAML or lacks an ``acts`` list,
    ``FileNotFoundError`` when ``directory`` does not exist, and ``RuntimeError`` when PyYAML
    is not installed.
    """
    try:
        import yaml
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise RuntimeError("load_parlai_utterances needs PyYAML (pip install pyyaml)") from exc

    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: not a directory")
    seen: dict[str, None] = {}
    for f in sorted(d.glob("*.yml")):
        try:
            data = yaml.safe_load(f.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise ValueError(f"{f}: not valid YAML ({exc})") from exc
        if not isinstance(data, dict) or not isinstance(data.get("acts"), list):
            raise ValueError(f"{f}: expected a ParlAI fixture with an 'acts' list")
        labels_are_speech = True  # per episode; set by a "_task_<kind>" context line
        for episode in data["acts"]:
            acts = episode if isinstance(episode, list) else [episode]
            for act in acts:
                if not isinstance(act, dict):
                    continue
                if isinstance(act.get("characters"), list):
                    lines = _multiparty_utterances(act)
                else:
                    text = act.get("text")
                    for line in text.split("\n") if isinstance(text, str) else []:
                        if line.startswith("_task_"):
                            labels_are_speech = line.strip() == "_task_speech"
                    # light_dialog_wild pairs a human (self) with a deployed model (partner,
                    # named by "model_name"): the model's lines are not human-written.
                    partner_is_model = "model_name" in act and not include_model_turns
                    lines = [
                        line
                        for kind, line in _act_utterances(act, labels_are_speech)
                        if not (kind == "_partner_say " and partner_is_model)
                    ]
                for line in lines:
                    text = _norm(line)
                    if text:
                        seen.setdefault(text, None)
                if act.get("episode_done") is True:
                    labels_are_speech = True
    return list(seen)


# --------------------------------------------------------------------------- session scripts


def _scenes(world: WorldSpec) -> list[list[str]]:
    """Character keys grouped by the room they are in (one scene per room): fullest rooms
    first, ties by room key; characters in a scene by key. Characters without a room each
    form a scene of their own, last."""
    by_room: dict[str, list[str]] = {}
    roomless: list[str] = []
    for c in world.characters():
        located = c.relations.get("located_in")
        if located:
            by_room.setdefault(located[0], []).append(c.key)
        else:
            roomless.append(c.key)
    rooms = sorted(by_room, key=lambda r: (-len(by_room[r]), r))
    return [sorted(by_room[r]) for r in rooms] + [[k] for k in sorted(roomless)]


def light_session_script(
    world: WorldSpec, utterances: list[str], n_turns: int, seed: int = 0
) -> SessionScript:
    """A deterministic :class:`SessionScript` of ``n_turns`` turns for ``world``.

    Turns are played in scenes, one room at a time: a scene addresses the characters who
    share that room in rotation, twice each (at least two turns), then the script moves to
    the next room (fullest rooms first, wrapping around). Utterances (e.g. from
    :func:`load_parlai_utterances`; LIGHT, Urbanek et al. 2019, facebookresearch/LIGHT, MIT)
    are whitespace-normalised, used in order and cycled when ``n_turns`` exceeds them.
    ``seed`` picks the first scene and the first utterance via ``random.Random(seed)``; the
    same arguments always give the same script. Only characters of ``world`` are addressed.

    Raises ``ValueError`` when ``n_turns`` is negative, or when turns are wanted and the world
    has no characters or ``utterances`` has no non-blank line.
    """
    if n_turns < 0:
        raise ValueError(f"n_turns must be >= 0, got {n_turns}")
    if n_turns == 0:
        return SessionScript(world_key=world.key, turns=())
    lines = [_norm(u) for u in utterances if isinstance(u, str) and u.strip()]
    scenes = _scenes(world)
    if not scenes:
        raise ValueError(f"world {world.key!r} has no characters to address")
    if not lines:
        raise ValueError("no utterances to script")
    rng = random.Random(seed)
    scene_no = rng.randrange(len(scenes))
    line_no = rng.randrange(len(lines))
    turns: list[ScriptTurn] = []
    while len(turns) < n_turns:
        cast = scenes[scene_no % len(scenes)]
        for i in range(min(max(2, 2 * len(cast)), n_turns - len(turns))):
            turns.append(
                ScriptTurn(npc_key=cast[i % len(cast)], player_text=lines[line_no % len(lines)])
            )
            line_no += 1
        scene_no += 1
    return SessionScript(world_key=world.key, turns=tuple(turns))


__all__ = [
    "LIGHT_SOURCE",
    "light_session_script",
    "load_light_world",
    "load_parlai_utterances",
]
