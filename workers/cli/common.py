"""What the command modules share: the shared data folder, JSON output, importer errors as
exit status 1, the project's Celery app and a ``send`` over it, operations in a transaction."""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from settings import ROOT

SHARED = Path(os.environ.get("SHARED_DIR", ROOT.parent / "shared"))
"""The shared data folder (``SHARED_DIR``, default next to the repository)."""


def load(fn, *args, **kwargs):
    """Run an importer; its ValueError (bad input, naming the file) is printed on stderr and
    exits with status 1 before anything is written."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, FileNotFoundError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from exc


def celery():
    """The project's Celery app (``workers.celery_app.app``), made current in this thread."""
    from workers.celery_app import app

    app.set_current()
    return app


def send(name: str, kwargs: dict, task_id: str | None = None, **options) -> str:
    """``contract.send.Send`` over the project's Celery app: sends task ``name`` with
    ``kwargs`` (under ``task_id``, default a new one); returns the task id."""
    from contract.send import celery_sender

    return celery_sender(celery())(name, kwargs, task_id, **options)


def echo(value) -> None:
    """Print ``value`` as indented JSON on stdout."""
    typer.echo(json.dumps(value, default=str, ensure_ascii=False, indent=2))


def run_ops(fn, *args, **kwargs):
    """Run ``fn(session, *args, **kwargs)`` (a ``memory.ops`` or ``workers.operations``
    function) in a transaction and return its result; a NotFound, TaskBusy, NotReplayable
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
