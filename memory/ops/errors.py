"""The operations' errors, the ``send`` protocol they take, and their time format."""

from __future__ import annotations

from datetime import datetime

from contract.send import Send  # noqa: F401  (the operations' send protocol, re-exported)


class NotFound(LookupError):
    """An unknown session, entry, version, dead letter or task (the message says which)."""


class TaskBusy(Exception):
    """The task is ``running`` or ``retrying``: retrying it now could run it twice at once."""


class NotReplayable(Exception):
    """The task name has no queue in the caller's routing table (nothing would consume it)."""


def iso(dt: datetime | None) -> str | None:
    """``dt`` as an ISO 8601 string, or None."""
    return dt.isoformat() if dt is not None else None
