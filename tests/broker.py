"""Reading what waits in a Redis broker queue, for tests that check what was sent."""

from __future__ import annotations

import base64
import json
import time
from contextlib import contextmanager


def _decode(msg: dict) -> dict:
    body = msg["body"]
    if msg.get("properties", {}).get("body_encoding") == "base64":
        body = base64.b64decode(body)
    _args, kwargs, _embed = json.loads(body)
    return {"task": msg["headers"]["task"], "id": msg["headers"]["id"], "kwargs": kwargs}


def queued_messages(r, queue: str, reserved: bool = True) -> list[dict]:
    """Task messages sent to ``queue`` and not yet acknowledged: those waiting in kombu's Redis
    list (oldest last) and, with ``reserved``, those a worker has taken but not finished
    (kombu's ``unacked`` hash of ``[message, exchange, routing_key]``; our routing keys are the
    queue names). ``[{"task", "id", "kwargs"}]``. Waits first for the in-process dialogue
    server's outbox relay (``workers.relay``) to send what it holds, so a turn's tasks are
    seen once its request returned."""
    from workers.state import state

    relay = getattr(state, "relay", None)
    if relay is not None:
        relay.wait_idle(30)
    out = [_decode(json.loads(raw)) for raw in r.lrange(queue, 0, -1)]
    if reserved:
        for raw in r.hvals("unacked"):
            msg, _exchange, routing_key = json.loads(raw)
            if routing_key == queue:
                out.append(_decode(msg))
    return out


@contextmanager
def consumers_paused(app, timeout: float = 1.0):
    """Within the block, no running worker of ``app``'s broker consumes any of its queues
    (Celery remote control: ``cancel_consumer``, then ``add_consumer`` for exactly the queues
    each worker had). For tests that inspect what a turn *sent* while the session-wide
    in-process worker (``conftest.worker``), started by an earlier module, is still running.
    With no worker answering, it costs one ``inspect`` round (``timeout`` s)."""
    active = app.control.inspect(timeout=timeout).active_queues() or {}
    had = {name: [q["name"] for q in queues] for name, queues in active.items()}
    for name, queues in had.items():
        for q in queues:
            app.control.cancel_consumer(q, destination=[name], reply=True, timeout=timeout)
    try:
        yield
    finally:
        for name, queues in had.items():
            for q in queues:
                app.control.add_consumer(q, destination=[name], reply=True, timeout=timeout)


@contextmanager
def pipeline_quiet(app, r, timeout: float = 180.0):
    """Within the block, no pipeline task runs anywhere: consumers are paused
    (:func:`consumers_paused`) and the tasks a worker had already taken have finished (kombu's
    ``unacked`` hash is empty; tasks acknowledge late). For tests that time model calls or
    count documents while the session-wide in-process worker may still be working through an
    earlier module's turns on the same model server and world. Raises ``TimeoutError`` if the
    taken tasks do not finish within ``timeout`` seconds."""
    with consumers_paused(app):
        deadline = time.monotonic() + timeout
        while r.hlen("unacked"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"tasks still running after {timeout} s")
            time.sleep(0.2)
        yield
