"""The public task contract (``task_contract.json`` next to this file): every task name a
game backend may send, its queue, and the JSON Schema of its kwargs.

The file is generated from the server's payload models (``npc-memory task-contract --out
npc_memory_client/task_contract.json``); a test keeps it equal to them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from jsonschema import Draft202012Validator

CONTRACT_PATH = Path(__file__).with_name("task_contract.json")


class UnknownTask(ValueError):
    """The task name is not in the contract."""


class InvalidPayload(ValueError):
    """The payload does not satisfy the task's schema; ``errors`` lists
    ``"<field path>: <message>"`` for each violation."""

    def __init__(self, task_name: str, errors: list[str]):
        super().__init__(f"invalid payload for {task_name}: " + "; ".join(errors))
        self.task_name = task_name
        self.errors = errors


@dataclass
class Contract:
    """A loaded contract: ``exchange``, ``queues`` (names), and per task its queue and schema."""

    exchange: str
    queues: tuple[str, ...]
    tasks: dict
    _validators: dict = field(default_factory=dict, repr=False)

    def queue_of(self, task_name: str) -> str:
        """The queue ``task_name`` is routed to.

        Raises:
            UnknownTask: not a public task name.
        """
        try:
            return self.tasks[task_name]["queue"]
        except KeyError:
            raise UnknownTask(f"unknown task {task_name!r}; public tasks: "
                              f"{', '.join(sorted(self.tasks))}") from None

    def validate(self, task_name: str, payload: dict) -> None:
        """Check ``payload`` (the task's kwargs) against the task's schema.

        Raises:
            UnknownTask: not a public task name.
            InvalidPayload: the payload violates the schema (every violation listed).
        """
        self.queue_of(task_name)
        validator = self._validators.get(task_name)
        if validator is None:
            validator = self._validators[task_name] = Draft202012Validator(
                self.tasks[task_name]["payload"])
        errors = sorted(validator.iter_errors(payload), key=lambda e: list(e.absolute_path))
        if errors:
            raise InvalidPayload(task_name, [
                f"{'.'.join(str(p) for p in e.absolute_path) or '(payload)'}: {e.message}"
                for e in errors])


def load_contract(path: Path | str = CONTRACT_PATH) -> Contract:
    """Read a contract file (default: the one shipped with this client).

    Raises:
        ValueError: not an ``npc-memory.task-contract`` version 1 document.
    """
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    if doc.get("format") != "npc-memory.task-contract" or doc.get("version") != 1:
        raise ValueError(f"{path}: not an npc-memory.task-contract v1 document")
    return Contract(exchange=doc["exchange"], queues=tuple(doc["queues"]), tasks=doc["tasks"])
