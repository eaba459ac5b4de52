"""Dialogue priority on a shared model server: pipeline calls yield to dialogue calls.

A llama.cpp server answers one request at a time, so an analysis or note rewrite that reaches
it first makes the next player turn wait for the whole background generation. Where the
dialogue has a model server of its own (the embedded default starts two, see
``workers.stack``) nothing needs to wait. Where one server is shared, this admission rule
applies:

- every generation-role call holds a slot for its server in Redis while it runs;
- every pipeline call (analysis, maintenance) to the same server first waits while any slot
  is held, polling every ``POLL_S`` seconds, for at most
  ``DIALOGUE_PRIORITY_MAX_WAIT_S`` (default 5 s); then it goes ahead anyway, so a steady
  stream of dialogue can slow the pipeline but never starve it;
- a pipeline call also waits for ``DIALOGUE_PRIORITY_GRACE_S`` (default 1 s) after a dialogue
  call on the server ended (a key ``llm:dialogue_recent:{base_url}`` living that long), within
  the same bound: a player reading a reply and typing the next line would otherwise find the
  server busy with a pipeline call that slipped in between two turns.

Pre-emption: a llama.cpp server stops generating for a streamed request as soon as its client
disconnects (llama-cpp-python's server checks between tokens), while a non-streamed request
always runs to the end. So on a shared llama.cpp server a pipeline call is streamed
(``ChatModel.complete``) and looks every :data:`PREEMPT_POLL_S` seconds for a dialogue slot
(:func:`dialogue_in_flight`); when one appears it closes its stream, the server is free after
one more token, and the call is sent again once the dialogue is done (:func:`admitted` waits
for it). A player turn arriving mid-analysis so waits a fraction of a second instead of the
whole analysis. After ``DIALOGUE_PREEMPT_MAX`` cuts (default 3) the call is sent non-streamed
and finishes, so a steady stream of turns cannot starve the pipeline. The server's own
``interrupt_requests`` stays off: it would also let one player's turn cut another's reply.

A crashed dialogue process cannot leave the count stuck: each slot is a member of a sorted set
per server (``llm:dialogue_inflight:{base_url}``) scored with its expiry (now + the model
timeout), and waiters drop expired members before counting.

``DIALOGUE_PRIORITY=auto`` (the default) turns the rule on only where it helps: the
generation role and the pipeline role use the same base URL on a ``llamacpp`` backend. vLLM
batches concurrent requests continuously (Kwon et al. 2023, "Efficient Memory Management for
Large Language Model Serving with PagedAttention"), so a dialogue request never queues behind
a whole pipeline generation there, and Mistral's API is not ours to schedule: the rule stays
off for both. ``on`` forces it for any backend, ``off`` disables it.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from memory import keys as rkeys
from settings import get_settings

log = logging.getLogger(__name__)

POLL_S = 0.05
"""How often a waiting pipeline call looks again, in seconds."""

PREEMPT_POLL_S = 0.1
"""How often a streaming pipeline call looks for a dialogue slot, in seconds."""

def active(role: str, base_url: str) -> bool:
    """Whether the rule applies to a call of ``role`` to ``base_url`` under the settings."""
    s = get_settings()
    if s.dialogue_priority == "off":
        return False
    gen_backend, gen_url, _ = s.role("generation")
    if gen_url.rstrip("/") != base_url.rstrip("/"):
        return False  # the dialogue has a server of its own
    if s.dialogue_priority == "on":
        return True
    if role == "generation":  # auto: on when a pipeline role shares this llama.cpp server
        return gen_backend == "llamacpp" and any(
            s.role(r)[1].rstrip("/") == base_url.rstrip("/") for r in ("analysis", "maintenance"))
    return s.role(role)[0] == "llamacpp" and gen_backend == "llamacpp"


def _redis() -> redis.Redis:
    from memory.nearline import get_redis  # the nearline store holds the counters

    return get_redis()


@contextmanager
def dialogue_slot(base_url: str, r: redis.Redis | None = None) -> Iterator[None]:
    """Hold a dialogue slot on ``base_url`` for the duration of the block (one ``ZADD`` of a
    member expiring after ``LLM_TIMEOUT_S`` before; after, one pipelined round trip: ``ZREM``
    and, with ``DIALOGUE_PRIORITY_GRACE_S`` > 0, ``SET llm:dialogue_recent:{base_url}`` expiring
    after the grace period). A Redis failure never blocks the dialogue: the call then runs
    without a slot."""
    r = r or _redis()
    s = get_settings()
    key, member = rkeys.dialogue_inflight(base_url), uuid.uuid4().hex
    try:
        r.zadd(key, {member: time.time() + s.llm_timeout_s})
    except redis.RedisError as exc:
        log.warning("dialogue priority slot not taken: %s", exc)
        member = ""
    try:
        yield
    finally:
        if member:
            try:
                pipe = r.pipeline(transaction=False)
                pipe.zrem(key, member)
                if s.dialogue_priority_grace_s > 0:
                    pipe.set(rkeys.dialogue_recent(base_url), 1,
                             px=max(1, int(s.dialogue_priority_grace_s * 1000)))
                pipe.execute()
            except redis.RedisError:
                pass


def dialogue_in_flight(base_url: str, r: redis.Redis | None = None) -> int:
    """Live dialogue slots on ``base_url``: expired ones (a process that died holding one)
    are removed first; one pipelined round trip."""
    r = r or _redis()
    pipe = r.pipeline(transaction=False)
    pipe.zremrangebyscore(rkeys.dialogue_inflight(base_url), "-inf", time.time())
    pipe.zcard(rkeys.dialogue_inflight(base_url))
    return int(pipe.execute()[1])


def dialogue_busy(base_url: str, r: redis.Redis | None = None) -> bool:
    """Whether a pipeline call to ``base_url`` should wait now: a live dialogue slot is held
    (expired ones are removed first), or a dialogue call ended less than
    ``DIALOGUE_PRIORITY_GRACE_S`` ago; one pipelined round trip."""
    r = r or _redis()
    pipe = r.pipeline(transaction=False)
    pipe.zremrangebyscore(rkeys.dialogue_inflight(base_url), "-inf", time.time())
    pipe.zcard(rkeys.dialogue_inflight(base_url))
    pipe.exists(rkeys.dialogue_recent(base_url))
    _, inflight, recent = pipe.execute()
    return bool(inflight or recent)


def yield_to_dialogue(base_url: str, r: redis.Redis | None = None,
                      max_wait_s: float | None = None) -> float:
    """Wait while a dialogue call is in flight on ``base_url`` or ended within the grace
    period (:func:`dialogue_busy`), at most ``max_wait_s`` (default
    ``DIALOGUE_PRIORITY_MAX_WAIT_S``). Returns the seconds waited. A Redis failure ends the
    wait (the pipeline never stalls on the rule itself)."""
    r = r or _redis()
    limit = get_settings().dialogue_priority_max_wait_s if max_wait_s is None else max_wait_s
    t0 = time.monotonic()
    try:
        while dialogue_busy(base_url, r) and time.monotonic() - t0 < limit:
            time.sleep(POLL_S)
    except redis.RedisError as exc:
        log.warning("dialogue priority check failed: %s", exc)
    return time.monotonic() - t0


@contextmanager
def admitted(role: str, base_url: str) -> Iterator[None]:
    """The admission rule around one model call of ``role``: a dialogue slot for the
    generation role, a bounded wait for the others; nothing where the rule is off."""
    if not active(role, base_url):
        yield
    elif role == "generation":
        with dialogue_slot(base_url):
            yield
    else:
        yield_to_dialogue(base_url)
        yield


def preemptible(role: str, base_url: str) -> bool:
    """Whether a call of ``role`` to ``base_url`` is streamed so that dialogue can cut it: a
    pipeline role under the admission rule, with ``DIALOGUE_PREEMPT_MAX`` > 0."""
    return (role != "generation" and get_settings().dialogue_preempt_max > 0
            and active(role, base_url))



def dialogue_waiting(base_url: str) -> bool:
    """Whether a dialogue slot is held on ``base_url`` now (a streaming pipeline call then
    gives the server up); False when Redis fails."""
    try:
        return dialogue_in_flight(base_url) > 0
    except redis.RedisError:
        return False
