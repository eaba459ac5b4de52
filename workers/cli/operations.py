"""Operations (monitoring and repair): ``dead-letters``, ``replay-dead-letter``, ``rollback-note``,
``fork-session``, ``rollback-session``, ``show-entry``, ``show-cards``, ``session-tasks``,
``retry-task``, ``export-session``, ``queues``, ``tick``, ``analyze-turn``, ``tick-world``,
``reindex``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from workers.cli.common import celery, echo, run_ops, send

app = typer.Typer()


@app.command("dead-letters")
def dead_letters(
    limit: int = typer.Option(20, min=1, max=1000),
    task_name: str | None = typer.Option(None, help="only this task name"),
    show: int | None = typer.Option(None, help="print this dead letter whole (payload, error)"),
) -> None:
    """List the newest dead-lettered tasks (one JSON line each), or show one with --show ID."""
    from memory import ops

    if show is not None:
        echo(run_ops(ops.get_dead_letter, show))
        return
    for d in run_ops(ops.list_dead_letters, limit=limit, task_name=task_name):
        typer.echo(json.dumps({"id": d["id"], "task": d["task_name"], "queue": d["queue"],
                               "error": d["error"][:200], "payload": d["payload"],
                               "created_at": d["created_at"], "replayed_at": d["replayed_at"]},
                              default=str))


@app.command("replay-dead-letter")
def replay_dead_letter(dead_letter_id: int = typer.Argument(..., help="dead letter id")) -> None:
    """Send a dead letter's task again with its stored payload (effects are idempotent)."""
    from workers import operations

    echo(run_ops(operations.replay_dead_letter, dead_letter_id, send))


@app.command("rollback-note")
def rollback_note(
    session_id: str = typer.Argument(...),
    entry_key: str = typer.Argument(..., help="lore entry key, e.g. baker_27"),
    version: int = typer.Argument(..., min=0, help="revision to restore (0: the empty note)"),
) -> None:
    """Restore a session note's content at VERSION as a new revision, publish it to Redis and
    enqueue its re-embedding."""
    from workers import operations

    try:
        res = run_ops(operations.rollback_note, session_id, entry_key, version, send)
    except operations.NotPublished as exc:
        typer.echo(f"error: note rolled back (now version {exc.result['version']}) but not "
                   f"published: {exc.cause}; run the command again to publish it", err=True)
        raise typer.Exit(1) from exc
    echo(res)


@app.command("fork-session")
def fork_session(
    session_id: str = typer.Argument(...),
    at_turn: str = typer.Argument(..., help="turn id whose memory the new session starts from"),
) -> None:
    """Make a new session whose memory is SESSION_ID's as of turn AT_TURN (a save slot); the
    session itself is only read. Prints the new session id and what was copied."""
    from memory import nearline, timeline

    echo(run_ops(timeline.fork_session, nearline.get_redis(), session_id, at_turn, send))


@app.command("rollback-session")
def rollback_session(
    session_id: str = typer.Argument(...),
    to_turn: str = typer.Argument(..., help="the last turn to keep"),
) -> None:
    """Undo everything derived from the turns after TO_TURN (loading a save): note revisions,
    created entities, card events, summaries, evidence, queued and dead-lettered tasks of
    those turns; tasks in flight for them do not apply afterwards. Prints what was undone."""
    from memory import nearline, timeline

    echo(run_ops(timeline.rollback_session, nearline.get_redis(), session_id, to_turn, send))


@app.command("show-entry")
def show_entry(session_id: str = typer.Argument(...), entry_key: str = typer.Argument(...)) -> None:
    """Print an entity's lore, session note, composite document and note revisions."""
    from memory import ops

    echo(run_ops(ops.entry_with_history, session_id, entry_key))


@app.command("show-cards")
def show_cards(session_id: str = typer.Argument(...),
               npc_id: str = typer.Argument(..., help="the NPC's entry key, e.g. baker_27"),
               events: int = typer.Option(20, min=0, max=500, help="applied events to list")) -> None:
    """Print an NPC's relationship and quest cards in a session (live, from Redis), their sizes,
    the dialogue-prompt text they give and the newest applied events."""
    from memory import cards, nearline, ops
    from settings import get_settings

    try:
        echo(ops.session_cards(nearline.get_redis(), session_id, npc_id, events=events,
                                budget_chars=get_settings().cards_prompt_chars))
    except (ops.NotFound, cards.CardCorrupt) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command("session-tasks")
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
    for t in run_ops(ops.session_tasks, session_id, status=status, limit=limit):
        typer.echo(json.dumps(t, default=str))


@app.command("retry-task")
def retry_task(task_id: str = typer.Argument(...),
               force: bool = typer.Option(False, help="retry even if started/retrying")) -> None:
    """Send a ledger task again with its recorded payload (effects are idempotent)."""
    from workers import operations

    echo(run_ops(operations.retry_task, task_id, send, force=force))


@app.command("export-session")
def export_session(
    session_id: str = typer.Argument(...),
    out: Path | None = typer.Option(None, help="write the JSON here instead of stdout"),
    revisions: bool = typer.Option(False, help="include each note's revisions"),
) -> None:
    """Export a session's notes and created entities as JSON (npc-memory.session-export)."""
    from memory.export import export_session as export

    doc = run_ops(export, session_id, revisions=revisions)
    if out is None:
        echo(doc)
        return
    out.write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    typer.echo(f"wrote {out}: {doc['counts']['notes']} notes, "
               f"{doc['counts']['created_entities']} created entities")


@app.command()
def queues() -> None:
    """Messages waiting per queue and the workers that answer (with their queues)."""
    from workers import operations

    echo(operations.queues(celery()))


@app.command()
def tick(session_id: str = typer.Argument(..., help="session id")) -> None:
    """Trigger a world tick for one session now (even if one is pending); prints the tick id
    and the task id whose ledger result is the tick's trace."""
    from memory import nearline, ops
    from workers import operations

    try:
        echo(operations.tick_session(nearline.get_redis(), send, session_id))
    except ops.NotFound as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


@app.command("analyze-turn")
def analyze_turn(session_id: str = typer.Argument(..., help="session id"),
                 turn_id: str = typer.Argument(..., help="turn id")) -> None:
    """Re-analyse a recorded turn now: send npc_memory.analyze_turn under a new task id (the
    turn from Redis, else the ledger, else the archive). Effects the turn already had (note
    updates, creations, card events) are not applied twice."""
    from memory import nearline
    from workers import operations

    r = nearline.get_redis()
    echo(run_ops(operations.reanalyze_turn, r, session_id, turn_id, send))


@app.command("tick-world")
def tick_world(
    world: str | None = typer.Option(None, help="only this world's sessions (world key)"),
    idle_after: float | None = typer.Option(None, min=0.001, help="skip sessions idle this many "
                                            "seconds (default SIMULATE_IDLE_AFTER_S)"),
) -> None:
    """Run a world tick now (npc_memory.world_tick, as beat does) for every active session,
    or one world's; prints the task id whose ledger result has the tick's counts."""
    from workers import operations

    echo(run_ops(operations.request_world_tick, send, world_key=world, idle_after_s=idle_after))


@app.command()
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
    echo(res.as_dict())
