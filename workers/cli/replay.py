"""Replays over HTTP against a running dialogue server: ``replay-smallville``, ``replay-script``."""

from __future__ import annotations

from pathlib import Path

import typer

from workers.cli.common import SHARED, echo, load

app = typer.Typer()


@app.command("replay-smallville")
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
    from workers.replay_events import (ReplayError, conversation_events, http_poster, open_session,
                               replay_events)
    from settings import get_settings

    conversations = load(load_smallville_conversations, directory)
    events = load(conversation_events, conversations)[:limit]
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
    echo({"session_id": sid, "server": server, "conversations": len(conversations),
           "events": len(events), "recorded": result.recorded,
           "duplicates": result.duplicates})


@app.command("replay-script")
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

    from workers.replay_events import ReplayError
    from workers.replay_script import load_replay_script, run_script
    from npc_memory_client import NpcMemoryClient
    from settings import get_settings

    script = load(load_replay_script, path)
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
    echo({"server": server, **result.as_dict()})
