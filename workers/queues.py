"""The broker's queues as an operator sees them: messages waiting per queue (kombu's Redis
lists) and the workers that answer, with the queues each consumes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from contract.names import Queues

# kombu's Redis transport keeps messages of priority p > 0 in "<queue>\x06\x16<p>" lists.
_KOMBU_PRIORITY_SEP = "\x06\x16"
_KOMBU_PRIORITY_STEPS = (3, 6, 9)


def queue_lengths(r, names: Iterable[str] | None = None) -> dict[str, int]:
    """Messages waiting in each queue of a Redis broker (``LLEN``, plus kombu's priority
    sub-lists). ``names`` defaults to every queue of ``contract.names.Queues``. Messages that a
    worker has already reserved are not waiting and are not counted.

    Raises:
        redis.RedisError: the broker does not answer.
    """
    names = [q.value for q in Queues] if names is None else list(names)
    pipe = r.pipeline(transaction=False)
    for name in names:
        pipe.llen(name)
        for p in _KOMBU_PRIORITY_STEPS:
            pipe.llen(f"{name}{_KOMBU_PRIORITY_SEP}{p}")
    counts = pipe.execute()
    step = 1 + len(_KOMBU_PRIORITY_STEPS)
    return {name: int(sum(counts[i * step:(i + 1) * step])) for i, name in enumerate(names)}


def queue_status(r, active_queues: Callable[[], dict | None] | None = None) -> dict:
    """Queue lengths and the workers that answer, with the queues each consumes.

    ``r`` is a client of the Redis broker (None when the broker is not Redis: lengths are then
    omitted). ``active_queues`` is e.g. ``app.control.inspect(timeout=1.0).active_queues``;
    it returns ``{worker: [{"name": queue, ...}]}`` or None when no worker answers.
    Never raises: a broker or inspect failure is reported in ``errors``.

    Returns:
        ``{"queues": {name: int | None}, "workers": {worker: {"queues": [name]}},
        "errors": [str]}``
    """
    errors: list[str] = []
    queues: dict[str, int | None] = {q.value: None for q in Queues}
    if r is None:
        errors.append("queue lengths need a Redis broker")
    else:
        try:
            queues = queue_lengths(r)
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            errors.append(f"queue lengths: {type(exc).__name__}: {exc}")
    workers: dict[str, dict[str, Any]] = {}
    if active_queues is not None:
        try:
            for name, qs in sorted((active_queues() or {}).items()):
                workers[name] = {"queues": sorted(q.get("name", "") for q in qs or [])}
        except Exception as exc:  # noqa: BLE001
            errors.append(f"workers: {type(exc).__name__}: {exc}")
    return {"queues": queues, "workers": workers, "errors": errors}
