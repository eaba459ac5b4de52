"""Importer for Character Card V2 (https://github.com/malfoyslastname/character-card-spec-v2,
``spec_v2.md``): as JSON, or embedded in a PNG image as a ``tEXt`` chunk with keyword
``chara`` whose text is the card's JSON in base64 (as SillyTavern writes it).

A card::

    {"spec": "chara_card_v2", "spec_version": "2.0",
     "data": {"name": str, "description": str, "personality": str, "scenario": str,
              "first_mes": str, "mes_example": str, "creator_notes": str,
              "system_prompt": str, "post_history_instructions": str,
              "alternate_greetings": [str], "character_book"?: CharacterBook,
              "tags": [str], "creator": str, "character_version": str, "extensions": {}}}

V1 cards (the same six first fields at the top level, no ``spec``) are read too.

The character becomes one ``character`` entry keyed by its ``name``; content
``"Description: …\\nPersonality: …\\nScenario: …"`` (empty fields left out, LIGHT's
``"Label: text"`` rule); tags ``sillytavern``, ``card``, ``type:character``, ``tag:<t>``
per card tag. The greetings and example messages (dialogue prompts, not lore), and
``creator_notes``, ``system_prompt``, ``post_history_instructions`` (which the spec keeps out
of, or reserves for, prompt engineering) are not imported. The embedded ``character_book``
entries become lore entries as in :mod:`memory.importers.sillytavern`, ``{{char}}`` standing
for the card's name.

The PNG is read with the standard library (PNG chunk layout: W3C PNG specification,
https://www.w3.org/TR/png/#5Chunk-layout), checking each chunk's CRC; the image itself is
never decoded, so no imaging library is needed.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memory.importers.sillytavern import SILLYTAVERN_SOURCE, entry_specs, macros, parse_entries
from memory.importers.spec import ENTITY_TYPES, EntitySpec, WorldSpec, _read_json

CARD_SPEC = "chara_card_v2"
CARD_SPEC_VERSION = "2.0"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CARD_KEYWORD = b"chara"
"""The ``tEXt`` keyword of a V2 card in a PNG (V3 cards add ``ccv3``)."""
MAX_PNG_CHUNK = 64 * 1024 * 1024
"""Chunks larger than this are refused (a card's text is kilobytes; this bounds memory)."""

_LORE_FIELDS = (("Description", "description"), ("Personality", "personality"),
                ("Scenario", "scenario"))


@dataclass(frozen=True)
class Card:
    """A parsed card: ``data`` is the V2 ``data`` object (or the V1 top level), ``spec`` is
    ``"chara_card_v2"`` or ``"v1"``; ``origin`` the file it came from."""

    data: dict[str, Any]
    spec: str
    origin: str

    @property
    def name(self) -> str:
        return " ".join(self.data["name"].split())


@dataclass(frozen=True)
class CardImport:
    """Loaded cards as one world, with ``counts`` (``cards``, ``characters``,
    ``book_entries`` imported, ``disabled_skipped``, ``empty_skipped``)."""

    world: WorldSpec
    counts: dict[str, Any] = field(default_factory=dict)


def png_text_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    """``(keyword, text bytes)`` of each ``tEXt`` chunk (and each ``zTXt``, inflated) of a
    PNG, in file order.

    Raises:
        ValueError: not a PNG, a truncated or oversized chunk, or a CRC mismatch.
    """
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG file (bad signature)")
    pos = len(PNG_SIGNATURE)
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError(f"truncated chunk header at byte {pos}")
        length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
        if length > MAX_PNG_CHUNK:
            raise ValueError(f"chunk {ctype!r} at byte {pos} is {length} bytes, over the limit")
        end = pos + 8 + length
        if end + 4 > len(data):
            raise ValueError(f"truncated chunk {ctype!r} at byte {pos}")
        body = data[pos + 8:end]
        (crc,) = struct.unpack(">I", data[end:end + 4])
        if zlib.crc32(ctype + body) & 0xFFFFFFFF != crc:
            raise ValueError(f"chunk {ctype!r} at byte {pos}: CRC mismatch (corrupt file)")
        if ctype in (b"tEXt", b"zTXt"):
            keyword, sep, text = body.partition(b"\x00")
            if not sep:
                raise ValueError(f"{ctype.decode()} chunk at byte {pos} has no keyword separator")
            if ctype == b"zTXt":
                if text[:1] != b"\x00":
                    raise ValueError(f"zTXt chunk at byte {pos}: unknown compression method")
                dec = zlib.decompressobj()
                text = dec.decompress(text[1:], MAX_PNG_CHUNK)
                if dec.unconsumed_tail:
                    raise ValueError(f"zTXt chunk at byte {pos} inflates past the limit")
            yield keyword, text
        pos = end + 4
        if ctype == b"IEND":
            break


def card_json_from_png(data: bytes) -> Any:
    """The card JSON embedded in PNG bytes (the ``chara`` text chunk, base64 of UTF-8 JSON).

    Raises:
        ValueError: not a PNG, no ``chara`` chunk (the message says when only a V3 ``ccv3``
            chunk is there), or a chunk that is not base64 of UTF-8 JSON.
    """
    keywords = []
    for keyword, text in png_text_chunks(data):
        keywords.append(keyword)
        if keyword == CARD_KEYWORD:
            try:
                raw = base64.b64decode(text, validate=False)
                return json.loads(raw.decode("utf-8"))
            except (binascii.Error, UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ValueError(f"the 'chara' chunk is not base64 of UTF-8 JSON ({exc})") from exc
    if b"ccv3" in keywords:
        raise ValueError("only a Character Card V3 ('ccv3') chunk found; V2 needs 'chara'")
    raise ValueError("no 'chara' text chunk: not a character card image")


def parse_card(obj: Any, origin: str = "<card>") -> Card:
    """Check a card object (V2, or V1 without ``spec``) and return it.

    Raises:
        ValueError: (prefixed with ``origin``) another ``spec`` or ``spec_version``, a
            missing or non-object ``data``, a missing/empty ``name``, or a text field that is
            not a string.
    """
    try:
        if not isinstance(obj, dict):
            raise ValueError(f"a card must be a JSON object, got {type(obj).__name__}")
        if "spec" in obj:
            if obj["spec"] != CARD_SPEC:
                raise ValueError(f"spec is {obj['spec']!r}; this importer reads {CARD_SPEC!r}")
            if obj.get("spec_version", CARD_SPEC_VERSION) != CARD_SPEC_VERSION:
                raise ValueError(f"spec_version is {obj['spec_version']!r}, expected "
                                 f"{CARD_SPEC_VERSION!r}")
            data, spec = obj.get("data"), CARD_SPEC
            if not isinstance(data, dict):
                raise ValueError("'data' must be an object")
        else:
            data, spec = obj, "v1"
            if "description" not in data:
                raise ValueError(f"neither a V2 card ('spec': {CARD_SPEC!r}) nor a V1 card "
                                 "('name', 'description', ...)")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"'name' must be a non-empty string, got {name!r}")
        for _, f in _LORE_FIELDS:
            if data.get(f) is not None and not isinstance(data[f], str):
                raise ValueError(f"{f!r} must be a string")
        tags = data.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("'tags' must be a list of strings")
        book = data.get("character_book")
        if book is not None and not (isinstance(book, dict) and "entries" in book):
            raise ValueError("'character_book' must be an object with 'entries'")
        return Card(data=data, spec=spec, origin=origin)
    except ValueError as exc:
        raise ValueError(f"{origin}: {exc}") from exc


def read_card(path: str | os.PathLike[str]) -> Card:
    """Read a card from a ``.png`` (embedded ``chara`` chunk) or a JSON file.

    Raises:
        ValueError: naming the file, as :func:`card_json_from_png` / :func:`parse_card`.
        FileNotFoundError: no such file.
    """
    p = Path(path)
    raw = p.read_bytes()
    if raw.startswith(PNG_SIGNATURE):
        try:
            obj = card_json_from_png(raw)
        except ValueError as exc:
            raise ValueError(f"{p}: {exc}") from exc
    else:
        obj = _read_json(p)
    return parse_card(obj, origin=str(p))


def card_entries(card: Card, *, book_type: str = "item",
                 include_disabled: bool = False) -> tuple[list[EntitySpec], dict[str, int]]:
    """The card's character entry followed by its book's entries (keys ``"<title>_<id>"``),
    with counts ``book_entries``, ``disabled_skipped``, ``empty_skipped``.

    Raises:
        ValueError: a malformed book entry (message names the card's file).
    """
    name, data = card.name, card.data
    lines = [f"{label}: {macros(data[f].strip(), name)}" for label, f in _LORE_FIELDS
             if isinstance(data.get(f), str) and data[f].strip()]
    tags = ["sillytavern", "card", "type:character",
            *(f"tag:{' '.join(t.split())}" for t in data.get("tags", []) if t.strip())]
    out = [EntitySpec(key=name, entity_type="character", title=name, content="\n".join(lines),
                      tags=tuple(dict.fromkeys(tags)))]
    counts = {"book_entries": 0, "disabled_skipped": 0, "empty_skipped": 0}
    book = data.get("character_book")
    if book is not None:
        try:
            specs, stats = entry_specs(parse_entries(book["entries"]), default_type=book_type,
                                       include_disabled=include_disabled, char_name=name)
        except ValueError as exc:
            raise ValueError(f"{card.origin}: character_book: {exc}") from exc
        out += specs
        counts = {"book_entries": stats["imported"],
                  "disabled_skipped": stats["disabled_skipped"],
                  "empty_skipped": stats["empty_skipped"]}
    return out, counts


def load_cards(
    paths: Iterable[str | os.PathLike[str]],
    *,
    world_key: str | None = None,
    title: str | None = None,
    extra: Iterable[WorldSpec] = (),
    book_type: str = "item",
    include_disabled: bool = False,
) -> CardImport:
    """Cards (and optionally other worlds' entries, e.g. lorebooks loaded with
    :func:`memory.importers.sillytavern.load_world_info`) as one world.

    Args:
        paths: ``.png`` or ``.json`` card files, at least one.
        world_key: default: the first card's name, lower-cased, non-alphanumerics as "-".
        title: default: the card names joined with ", ".
        extra: worlds whose entries join this one (their keys must not clash).
        book_type: entity type of ``character_book`` entries that do not name one.

    Raises:
        ValueError: no path, a bad card (naming its file), or two entries with one key
            (e.g. two cards of one name).
    """
    if book_type not in ENTITY_TYPES:
        raise ValueError(f"entity type must be one of {', '.join(ENTITY_TYPES)}, "
                         f"got {book_type!r}")
    cards = [read_card(p) for p in paths]
    if not cards:
        raise ValueError("no card to import")
    entries: list[EntitySpec] = []
    counts = {"cards": len(cards), "characters": len(cards), "book_entries": 0,
              "disabled_skipped": 0, "empty_skipped": 0}
    for card in cards:
        got, c = card_entries(card, book_type=book_type, include_disabled=include_disabled)
        entries += got
        for k, v in c.items():
            counts[k] += v
    sources = [Path(c.origin).name for c in cards]
    extra = list(extra)
    for w in extra:
        entries += w.entries
        sources.append(w.source)
    counts["entries"] = len(entries)
    key = world_key or ("-".join("".join(ch if ch.isalnum() else " " for ch in
                                         cards[0].name.lower()).split()) or "card")
    world = WorldSpec(
        key=key,
        title=title or ", ".join(c.name for c in cards),
        description="; ".join(m for m in (_description(c) for c in cards) if m),
        entries=tuple(entries),
        source=f"Character Card V2 / {SILLYTAVERN_SOURCE}; {', '.join(sources)}",
    )
    return CardImport(world=world, counts=counts)


def _description(card: Card) -> str:
    scenario = card.data.get("scenario")
    return macros(scenario.strip(), card.name) if isinstance(scenario, str) else ""


__all__ = ["CARD_KEYWORD", "CARD_SPEC", "Card", "CardImport", "card_entries",
           "card_json_from_png", "load_cards", "parse_card", "png_text_chunks", "read_card"]
