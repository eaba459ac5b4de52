"""Importers: ``import-light``, ``import-light-db``, ``import-smallville``, ``import-lorebook``,
``import-card``, ``import-world`` (each inserts a world and embeds its lore)."""

from __future__ import annotations

from pathlib import Path

import typer

from workers.cli.common import SHARED, echo, load

app = typer.Typer()


def _import(spec, counts: dict | None = None) -> None:
    """Insert ``spec`` (a world key already present is left as it is), embed its base lore,
    print one line, then the importer's ``counts`` as JSON when given."""
    from inference.embedding import get_embedder
    from memory import nearline
    from memory.db import session_scope
    from memory.vectors import embed_world_base
    from memory.worlds import import_world

    with session_scope() as s:
        world, created = import_world(s, spec)
        n = embed_world_base(s, nearline.get_redis(), get_embedder(), world.id)
    typer.echo(f"world {spec.key!r}: {'imported' if created else 'already present'}, "
               f"{len(spec.entries)} entries, {n} vectors (re)embedded")
    if counts is not None:
        echo(counts)


@app.command("import-light")
def import_light(path: Path = typer.Argument(..., exists=True, dir_okay=False)) -> None:
    """Import a LIGHT world map (e.g. possibly-vampires.json) and embed its lore."""
    from memory.importers.light import load_light_world

    _import(load_light_world(path))


@app.command("import-light-db")
def import_light_db(
    directory: Path = typer.Argument(SHARED / "data" / "light", exists=True, file_okay=False,
                                     help="folder with characters.json, objects.json, rooms.json"),
    limit: int | None = typer.Option(None, min=0, help="at most N records of each table"),
    tables: str = typer.Option("characters,objects,rooms", help="which tables, comma-separated"),
    world_key: str | None = typer.Option(None, help="default light-db (light-db-N with --limit)"),
) -> None:
    """Import LIGHT's entity database (characters, objects, rooms) as one world and embed it."""
    from memory.importers.light_db import load_light_db, table_names

    try:
        names = table_names(tables)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--tables") from exc
    got = load(load_light_db, directory, limit=limit, tables=names, world_key=world_key)
    _import(got.world, got.counts)


@app.command("import-smallville")
def import_smallville(
    directory: Path = typer.Argument(SHARED / "data" / "smallville", exists=True, file_okay=False,
                                     help="folder with personas_n25/, spatial_n25/, world/"),
    world_key: str = typer.Option("smallville"),
) -> None:
    """Import Generative Agents' Smallville (25 residents, the town's places) and embed it."""
    from memory.importers.smallville import load_smallville_world

    world = load(load_smallville_world, directory, key=world_key)
    _import(world, {"characters": len(world.characters()), "locations": len(world.locations()),
                    "items": len(world.items()), "entries": len(world.entries)})


@app.command("import-lorebook")
def import_lorebook(
    path: Path = typer.Argument(..., exists=True, dir_okay=False, help="World Info JSON"),
    world_key: str | None = typer.Option(None, help="default: from the file name"),
    entity_type: str = typer.Option("item", help="type of entries that do not name one: "
                                                 "character, location or item"),
    include_disabled: bool = typer.Option(False, help="import disabled entries too"),
    char_name: str | None = typer.Option(None, help="the name {{char}} stands for"),
) -> None:
    """Import a SillyTavern World Info (lorebook) file as a world and embed it."""
    from memory.importers.sillytavern import load_world_info

    got = load(load_world_info, path, world_key=world_key, default_type=entity_type,
                include_disabled=include_disabled, char_name=char_name)
    _import(got.world, got.counts)


@app.command("import-card")
def import_card(
    paths: list[Path] = typer.Argument(..., exists=True, dir_okay=False,
                                       help="Character Card V2 files (.png or .json)"),
    lorebook: list[Path] = typer.Option([], exists=True, dir_okay=False,
                                        help="World Info files to add to the same world"),
    world_key: str | None = typer.Option(None, help="default: from the first card's name"),
    title: str | None = typer.Option(None, help="default: the card names"),
    book_type: str = typer.Option("item", help="type of lorebook entries that do not name one"),
    include_disabled: bool = typer.Option(False, help="import disabled lorebook entries too"),
) -> None:
    """Import Character Card V2 files (and optional lorebooks) as one world and embed it."""
    from memory.importers.card import load_cards
    from memory.importers.sillytavern import load_world_info

    books = [load(load_world_info, p, default_type=book_type,
                   include_disabled=include_disabled).world for p in lorebook]
    got = load(load_cards, paths, world_key=world_key, title=title, extra=books,
                book_type=book_type, include_disabled=include_disabled)
    _import(got.world, {**got.counts, "lorebook_entries": sum(len(b.entries) for b in books)})


@app.command("import-world")
def import_world_cmd(path: Path = typer.Argument(..., exists=True, dir_okay=False)) -> None:
    """Import a world in the project's own JSON format and embed its lore."""
    from memory.importers.spec import load_world_json

    _import(load_world_json(path))
