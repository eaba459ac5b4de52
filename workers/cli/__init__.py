"""Command line: ``npc-memory demo``, ``up``, ``chat``, ``migrate``, ``serve-llm``, ``embedded-redis``;
importers: ``import-light``, ``import-light-db``, ``import-smallville``, ``import-lorebook``,
``import-card``, ``import-world``; ``replay-smallville``; operations: ``dead-letters``,
``replay-dead-letter``, ``rollback-note``, ``fork-session``, ``rollback-session``, ``show-entry``, ``show-cards``, ``session-tasks``, ``retry-task``,
``queues``, ``export-session``, ``tick``, ``tick-world``, ``analyze-turn``, ``task-contract``;
``replay-script``, ``reindex``; archetype adapters: ``provision-archetypes``, ``archetypes``,
``set-archetype``; planning and evaluation: ``plan-capacity``, ``evaluate``."""

from __future__ import annotations

import os
import sys

import typer

from capacity.cli import plan_capacity
from evaluation.cli import evaluate
from workers.cli import archetypes, development, importers, operations, replay

cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False, no_args_is_help=True,
                  help=__doc__)
"""The root app: every command is at the top level (the sub-apps are added without a name)."""

cli.add_typer(development.app)
cli.add_typer(importers.app)
cli.add_typer(operations.app)
cli.add_typer(replay.app)
cli.add_typer(archetypes.app)

planning = typer.Typer()
"""Planning and evaluation: ``plan-capacity`` (``capacity.cli``), ``evaluate``
(``evaluation.cli``)."""
planning.command("plan-capacity")(plan_capacity)
planning.command("evaluate")(evaluate)
cli.add_typer(planning)


def main() -> None:
    """Console entry point (JSON logs on stderr at ``LOG_LEVEL``, default WARNING; the
    commands' own output is on stdout)."""
    from workers.logging_setup import configure_logging

    configure_logging("cli", os.environ.get("LOG_LEVEL", "WARNING"))
    sys.exit(cli())
