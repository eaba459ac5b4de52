"""Keeping adapters loaded on their vLLM servers (vLLM's runtime LoRA API).

vLLM started with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1`` loads an
adapter with ``POST {server}/load_lora_adapter {"lora_name", "lora_path"}`` (200, text) and
drops it with ``POST {server}/unload_lora_adapter {"lora_name"}`` (200; 404 when not
loaded); a chat call then names the adapter as its ``model``. Answers to a load are mapped:

- 200: loaded; 400 whose message says the adapter "has already been loaded": loaded too (a
  restarted coordinator, or a load that another client made);
- 404 (vLLM: "No adapter found for <path>"), and any other 4xx: the adapter is broken
  (``registry.mark_broken``) and the call falls back to the base model;
- 5xx, timeouts and connection errors: retried (``inference.retry``, ``LORA_LOAD_ATTEMPTS``
  tries, honouring ``Retry-After``); still failing, the call falls back to the base model
  this time and the next call tries again.

State in Redis, shared by every process (dialogue servers, workers):

- ``lora:loaded:{server_url}``  sorted set adapter name -> unix time of last use: what is
  loaded on that server, in LRU order;
- ``lora:usage:{adapter name}`` hash ``requests``, ``loads``, ``unloads``, ``fallbacks``,
  ``last_used`` (usage statistics).

One load per adapter across processes: a load happens under a Redis lock per server
(redis-py ``Lock``: ``SET NX PX`` with a token, released by a Lua compare-and-delete; it
expires after ``LORA_LOCK_TIMEOUT_S`` should its holder die). Whoever gets the lock checks the
sorted set again, so a second request for the same adapter finds it loaded and does not load
it again. The lock is per server, not per adapter, because the cap needs it: with a lock per
adapter, two processes loading two different adapters could both see one free slot and
overshoot ``LORA_MAX_LOADED_ADAPTERS``; vLLM applies adapter loads one at a time anyway, so
the wider lock costs no parallelism at the server.

Observers (``add_lora_observer``) get ``(event, labels)`` for ``load``
(``server``, ``outcome``: loaded/already_loaded/broken/failed), ``unload`` (``server``,
``outcome``) and ``fallback`` (``archetype``, ``reason``); ``workers.metrics`` turns them into
counters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import redis
from redis.exceptions import LockError

from inference.lora import registry
from inference.retry import transient_retry
from memory import keys as rkeys
from settings import get_settings

log = logging.getLogger(__name__)

LoraObserver = Callable[[str, dict], None]
_observers: list[LoraObserver] = []


def add_lora_observer(observer: LoraObserver) -> None:
    """Call ``observer(event, labels)`` on every load, unload and fallback of this process
    (see the module docstring); an observer that raises is logged and ignored."""
    if observer not in _observers:
        _observers.append(observer)


def emit(event: str, **labels: str) -> None:
    """Tell the observers about ``event``."""
    for observer in list(_observers):
        try:
            observer(event, labels)
        except Exception:  # noqa: BLE001 - observing must never break a call
            log.exception("lora observer failed")


class LoadFailed(Exception):
    """A load or unload answered with an HTTP error: ``status_code`` and vLLM's ``message``
    (5xx ones are retried by ``inference.retry``, which reads ``status_code``)."""

    def __init__(self, status_code: int, message: str, headers: dict | None = None):
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.headers = headers or {}  # Retry-After is honoured by inference.retry


@dataclass(frozen=True)
class LoadResult:
    """How :meth:`Coordinator.ensure_loaded` ended: ``outcome`` is ``cached`` (already loaded
    by us), ``loaded``, ``already_loaded`` (vLLM had it), ``broken`` or ``failed``; ``detail``
    the server's message for the last two."""

    outcome: str
    detail: str = ""

    @property
    def ok(self) -> bool:
        """The adapter can be used."""
        return self.outcome in ("cached", "loaded", "already_loaded")


def _error_message(response: httpx.Response) -> str:
    """vLLM's error message: ``{"error": {"message"}}``, the older flat ``{"message"}``, or
    the text."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500]
    if isinstance(body, dict):
        inner = body.get("error")
        if isinstance(inner, dict) and "message" in inner:
            return str(inner["message"])
        if "message" in body:
            return str(body["message"])
    return response.text[:500]


class Coordinator:
    """Loads and unloads adapters on vLLM servers (see the module docstring).

    Args:
        r: the Redis client (shared state and locks).
        max_loaded: adapters per server before LRU unloading (``LORA_MAX_LOADED_ADAPTERS``).
        client: the HTTP client (default: one with ``LORA_LOAD_TIMEOUT_S``).
    """

    def __init__(self, r: redis.Redis, max_loaded: int | None = None,
                 client: httpx.Client | None = None):
        s = get_settings()
        self.r = r
        self.max_loaded = max_loaded or s.lora_max_loaded_adapters
        self.attempts = s.lora_load_attempts
        self.lock_timeout_s = s.lora_lock_timeout_s
        self.http = client or httpx.Client(timeout=s.lora_load_timeout_s,
                                           headers={"Authorization": f"Bearer {s.llm_api_key}"})

    # ------------------------------------------------------------------ HTTP
    def _post(self, server_url: str, op: str, body: dict) -> str:
        """POST ``{server_url}/{op}``; the text on 2xx, else :class:`LoadFailed`."""
        response = self.http.post(f"{server_url.rstrip('/')}/{op}", json=body)
        if response.is_success:
            return response.text
        raise LoadFailed(response.status_code, _error_message(response), response.headers)

    def _post_retried(self, server_url: str, op: str, body: dict) -> str:
        return transient_retry(self.attempts)(self._post)(server_url, op, body)

    # ------------------------------------------------------------------ state
    def touch(self, server_url: str, name: str) -> None:
        """Record one use of a loaded adapter (LRU position, request count)."""
        now = time.time()
        pipe = self.r.pipeline(transaction=False)
        pipe.zadd(rkeys.lora_loaded(server_url), {name: now}, xx=True)
        pipe.hincrby(rkeys.lora_usage(name), "requests", 1)
        pipe.hset(rkeys.lora_usage(name), "last_used", now)
        pipe.execute()

    def loaded(self, server_url: str) -> list[str]:
        """Adapters loaded on ``server_url``, least recently used first."""
        return [m.decode() for m in self.r.zrange(rkeys.lora_loaded(server_url), 0, -1)]

    def usage(self, name: str) -> dict[str, float]:
        """Usage statistics of an adapter (``requests``, ``loads``, ``unloads``,
        ``fallbacks``, ``last_used``; absent ones are 0)."""
        raw = {k.decode(): float(v) for k, v in self.r.hgetall(rkeys.lora_usage(name)).items()}
        return {k: raw.get(k, 0.0) for k in ("requests", "loads", "unloads", "fallbacks",
                                             "last_used")}

    def forget(self, server_url: str, name: str) -> None:
        """Drop ``name`` from the server's loaded set (the server no longer has it, e.g. it
        restarted): the next use loads it again."""
        self.r.zrem(rkeys.lora_loaded(server_url), name)

    # ------------------------------------------------------------------ load / unload
    def ensure_loaded(self, server_url: str, name: str, path: str,
                      archetype: str = "") -> LoadResult:
        """Make sure adapter ``name`` (PEFT folder ``path`` on the server's disk) is loaded
        on ``server_url`` (OpenAI base URL, ``.../v1``), unloading the least recently used
        adapters beyond the cap first. Concurrent callers in any process cause one load.

        Never raises for server answers (see :class:`LoadResult`); Redis errors propagate.
        """
        key = rkeys.lora_loaded(server_url)
        if self.r.zscore(key, name) is not None:
            self.touch(server_url, name)
            return LoadResult("cached")
        lock = self.r.lock(rkeys.lora_lock(server_url), timeout=self.lock_timeout_s,
                           blocking_timeout=self.lock_timeout_s)
        try:
            with lock:
                if self.r.zscore(key, name) is not None:  # loaded while we waited
                    self.touch(server_url, name)
                    return LoadResult("cached")
                reason = self.r.hget(rkeys.LORA_BROKEN, name)
                if reason is not None:
                    return LoadResult("broken", reason.decode())
                self._evict(server_url, self.max_loaded - 1)
                result = self._load(server_url, name, path, archetype)
                if result.ok:
                    self.r.zadd(key, {name: time.time()})
                    self.r.hincrby(rkeys.lora_usage(name), "loads", 1)
                    self.touch(server_url, name)
        except LockError as exc:
            log.warning("lora: no lock on %s for %s: %s", server_url, name, exc)
            return LoadResult("failed", f"lock: {exc}")
        emit("load", server=server_url, outcome=result.outcome)
        return result

    def _load(self, server_url: str, name: str, path: str, archetype: str) -> LoadResult:
        try:
            self._post_retried(server_url, "load_lora_adapter",
                               {"lora_name": name, "lora_path": path})
            log.info("lora: loaded %s on %s", name, server_url)
            return LoadResult("loaded")
        except LoadFailed as exc:
            if exc.status_code == 400 and "already" in exc.message.lower():
                return LoadResult("already_loaded", exc.message)
            if 400 <= exc.status_code < 500:
                log.warning("lora: adapter %s of %s is broken: %s", name, archetype or "?",
                            exc)
                registry.mark_broken(self.r, name, f"HTTP {exc.status_code}: {exc.message}")
                return LoadResult("broken", exc.message)
            log.warning("lora: loading %s on %s failed: %s", name, server_url, exc)
            return LoadResult("failed", str(exc))
        except httpx.HTTPError as exc:
            log.warning("lora: loading %s on %s failed: %s", name, server_url, exc)
            return LoadResult("failed", f"{type(exc).__name__}: {exc}")

    def _evict(self, server_url: str, keep: int) -> list[str]:
        """Unload the least recently used adapters until at most ``keep`` remain (call with
        the server's lock held). An unload answered 404 counts: the server did not have it."""
        key = rkeys.lora_loaded(server_url)
        excess = self.r.zcard(key) - max(keep, 0)
        if excess <= 0:
            return []
        victims = [m.decode() for m in self.r.zrange(key, 0, excess - 1)]
        for name in victims:
            self.unload(server_url, name)
        return victims

    def unload(self, server_url: str, name: str) -> bool:
        """Unload ``name`` from ``server_url`` and forget it; True when the server had it
        (404: it did not, still forgotten). 5xx are retried; still failing raises
        :class:`LoadFailed` and the adapter stays listed as loaded."""
        try:
            self._post_retried(server_url, "unload_lora_adapter", {"lora_name": name})
            had = True
        except LoadFailed as exc:
            if exc.status_code != 404:
                emit("unload", server=server_url, outcome="failed")
                raise
            had = False
        self.forget(server_url, name)
        self.r.hincrby(rkeys.lora_usage(name), "unloads", 1)
        emit("unload", server=server_url, outcome="unloaded" if had else "not_loaded")
        log.info("lora: unloaded %s from %s", name, server_url)
        return had


_coordinators: dict[int, Coordinator] = {}


def get_coordinator(r: redis.Redis) -> Coordinator:
    """The process-wide coordinator over ``r``."""
    found = _coordinators.get(id(r))
    if found is None:
        found = _coordinators[id(r)] = Coordinator(r)
    return found
