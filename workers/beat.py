"""Beat's scheduler: celery-redbeat's, made to ride out a Redis outage instead of exiting.

``celery beat`` (Procfile ``beat``) runs ``ResilientRedBeatScheduler`` (``celeryconfig.
beat_scheduler``). redbeat keeps the schedule and its single-beat lock in Redis and lets any
``redis.exceptions.ConnectionError`` escape ``tick()``, which ends the beat process within
seconds of Redis going away; and the lock, expired while Redis was down, cannot be extended
afterwards (``LockNotOwnedError``), which ends it too. This subclass:

- catches ``ConnectionError``/``TimeoutError`` in ``tick()``, logs a warning and tries again
  after a capped exponential backoff (1 s doubling to ``MAX_BACKOFF_S``); ticks missed
  during the outage are simply late (the schedule's ``expires`` drops stale ones);
- on a lost lock, takes it again without blocking if it is free; if another beat holds it,
  this one stands by (no task sent) and retries every ``max_interval`` s;
- waits for Redis at start-up (schedule set-up and lock acquisition) instead of exiting.
"""

from __future__ import annotations

import logging
import time

import redis.exceptions
from celery.signals import beat_init
from redbeat import schedulers as redbeat_schedulers
from redbeat.schedulers import LUA_EXTEND_TO_SCRIPT, RedBeatScheduler, get_redis
from redis.exceptions import LockError

log = logging.getLogger(__name__)

REDIS_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
MAX_BACKOFF_S = 30.0


def _backoff(failures: int) -> float:
    """Seconds to wait after ``failures`` consecutive failures: 1, 2, 4 ... capped at
    ``MAX_BACKOFF_S``."""
    return min(MAX_BACKOFF_S, 2.0 ** max(0, failures - 1))


def wait_for_redis(what: str, fn):
    """Call ``fn()`` until it does not raise a Redis connection error; returns its result.
    Logs a warning per failed try and sleeps with :func:`_backoff` in between."""
    failures = 0
    while True:
        try:
            return fn()
        except REDIS_DOWN as exc:
            failures += 1
            delay = _backoff(failures)
            log.warning("beat: redis unavailable during %s (%s): retry in %.0f s", what,
                        type(exc).__name__, delay)
            time.sleep(delay)


class ResilientRedBeatScheduler(RedBeatScheduler):
    """``redbeat.RedBeatScheduler`` that survives Redis outages and a lost lock (module
    docstring). ``tick()`` returns the seconds to sleep, as Celery's schedulers do."""

    _failures = 0

    def setup_schedule(self):
        wait_for_redis("schedule set-up", super().setup_schedule)

    def tick(self, *args, **kwargs):
        try:
            if self.lock is not None and not self._holds_lock():
                return self.max_interval  # another beat holds the lock: stand by
            delay = super().tick(*args, **kwargs)
        except REDIS_DOWN as exc:
            self._failures += 1
            delay = _backoff(self._failures)
            log.warning("beat: redis unavailable (%s: %s): retry in %.0f s",
                        type(exc).__name__, exc, delay)
            return delay
        except LockError as exc:  # expired while Redis was away (or taken over)
            log.warning("beat: lock lost (%s): taking it again", exc)
            self._holds_lock(force=True)
            return min(self.max_interval, 1.0)
        if self._failures:
            log.warning("beat: redis reachable again after %d failed ticks", self._failures)
            self._failures = 0
        return delay

    def _holds_lock(self, force: bool = False) -> bool:
        """Whether this beat holds the lock, taking it (without blocking) when it is free.
        Raises the Redis connection errors (handled by ``tick``)."""
        if not force and self.lock.owned():
            return True
        got = self.lock.acquire(blocking=False)
        if got:
            log.warning("beat: lock taken again")
        return bool(got)


def acquire_lock_waiting_for_redis(sender=None, **kwargs) -> None:
    """``beat_init`` handler replacing redbeat's ``acquire_distributed_beat_lock``: the same
    lock (key, timeout, extend script), but a Redis outage at start-up is waited out."""
    scheduler = sender.scheduler
    if not scheduler.lock_key:
        return
    client = get_redis(scheduler.app)
    lock = client.lock(scheduler.lock_key, timeout=scheduler.lock_timeout,
                       sleep=scheduler.max_interval)
    lock.lua_extend = client.register_script(LUA_EXTEND_TO_SCRIPT)
    wait_for_redis("lock acquisition", lock.acquire)
    log.info("beat: acquired lock")
    scheduler.lock = lock


beat_init.disconnect(redbeat_schedulers.acquire_distributed_beat_lock)
beat_init.connect(acquire_lock_waiting_for_redis, weak=False)
