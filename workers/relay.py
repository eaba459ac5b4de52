"""The dialogue server's outbox relay: sends recorded turns' pipeline tasks from a background
thread, so a player's turn returns once Redis holds it, without waiting on the broker.

A turn is recorded in Redis together with its outbox entry in one MULTI/EXEC
(``memory.nearline.record_turn``) before it is handed here, so the relay needs no durability of
its own: if the process dies with turns still queued in memory, or the broker refuses a send,
the outbox keeps them and the beat's reconcile task (``tasks.reconcile``) sends them once they
are older than its ``older_than_s``; their task ids are derived from the turn id
(``contract.send.turn_task_id``), so nothing runs twice. This is the relay half of the
transactional-outbox pattern (Richardson, *Microservices Patterns*, "Transactional outbox" and
"Transaction log tailing / polling publisher").

The queue is bounded: when ``max_pending`` turns wait (the broker is slower than the turns
arrive), ``submit`` sends inline on the caller's thread instead, so a backlog slows requests
down rather than growing memory without bound.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import redis

from contract.send import Send, send_turn_tasks

log = logging.getLogger(__name__)

_STOP = object()


class TurnRelay:
    """Sends turns' pipeline tasks (``contract.send.send_turn_tasks``) on one daemon thread.

    Args:
        send: how a task reaches the broker (``contract.send.Send``).
        r: the Redis client of the outbox (``memory.nearline``).
        max_pending: turns that may wait in memory before ``submit`` sends inline.

    Counters (read by ``/healthz`` and the benchmarks): ``sent`` turns whose tasks reached the
    broker from the thread, ``inline`` turns sent on the caller's thread (queue full or relay
    stopped), ``failed`` sends that raised (those turns stay in the outbox for reconcile).
    """

    def __init__(self, send: Send, r: redis.Redis, max_pending: int = 10_000):
        self._send = send
        self._r = r
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, max_pending))
        self._thread: threading.Thread | None = None
        self.sent = self.inline = self.failed = 0

    @property
    def running(self) -> bool:
        """Whether the sending thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the sending thread (idempotent)."""
        if self.running:
            return
        self._thread = threading.Thread(target=self._loop, name="outbox-relay", daemon=True)
        self._thread.start()

    def submit(self, kwargs: dict) -> None:
        """Queue a recorded turn's tasks for sending (``kwargs``: the turn payload as task
        kwargs, as given to ``send_turn_tasks``). Sends inline when the relay is not running
        or ``max_pending`` turns already wait; an inline send raises what the broker raises."""
        if self.running:
            try:
                self._queue.put_nowait(kwargs)
                return
            except queue.Full:
                pass
        self.inline += 1
        send_turn_tasks(self._send, self._r, kwargs)

    def pending(self) -> int:
        """Turns queued and not yet sent (approximate, as ``queue.Queue.qsize``)."""
        return self._queue.qsize()

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until every turn submitted so far has been sent (or failed), at most
        ``timeout_s`` seconds; returns whether it got there. For tests and shutdown paths that
        must see what a turn sent."""
        deadline = time.monotonic() + timeout_s
        with self._queue.all_tasks_done:
            while self._queue.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._queue.all_tasks_done.wait(left)
        return True

    def stats(self) -> dict:
        """``{"pending", "sent", "inline", "failed"}`` counts."""
        return {"pending": self.pending(), "sent": self.sent, "inline": self.inline,
                "failed": self.failed}

    def stop(self, timeout_s: float = 10.0) -> None:
        """Send what is queued (for at most ``timeout_s`` seconds), then stop the thread.
        Turns still queued after that stay in the outbox for the reconcile task."""
        if self._thread is None:
            return
        try:
            self._queue.put(_STOP, timeout=timeout_s)
        except queue.Full:
            log.warning("outbox relay: %d turns left to the reconcile task", self.pending())
            return
        self._thread.join(timeout_s)
        self._thread = None

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                self._send_one(item)
            finally:
                self._queue.task_done()

    def _send_one(self, kwargs: dict) -> None:
        try:
            send_turn_tasks(self._send, self._r, kwargs)
            self.sent += 1
        except Exception:  # noqa: BLE001 - the outbox keeps the turn; reconcile resends it
            self.failed += 1
            log.warning("outbox relay: sending turn %s failed; it stays in the outbox for the "
                        "reconcile task", kwargs.get("turn_id"), exc_info=True)


__all__ = ["TurnRelay"]
