"""Prometheus metrics of the dialogue server (``GET /metrics``, prometheus_client).

Measured in this process as they happen:

- ``npc_http_request_duration_seconds{method, route, status}``: histogram per route template
  (unmatched paths share ``route="unmatched"``, so scans cannot grow the label set);
- ``npc_turns_served_total{kind}``: turns answered (``turn``) and events recorded
  (``event``; a duplicate ``event_id`` is not counted);
- ``npc_dialogue_ttft_seconds{mode}``: time to first token of a played turn, from the start
  of its model call: to the first streamed delta (``mode="stream"``), or to the whole reply
  when it is not streamed (``mode="reply"``: the ``model`` stage of ``Server-Timing``);
- ``npc_model_call_duration_seconds{role, backend, outcome}`` and
  ``npc_model_tokens_total{role, kind}`` (``kind``: prompt/completion): every
  ``inference.llm.ChatModel`` call made by this process (through ``add_call_observer``);
- ``npc_lora_loads_total{server, outcome}``, ``npc_lora_unloads_total{server, outcome}`` and
  ``npc_lora_fallbacks_total{archetype, reason}``: archetype adapter loads, LRU unloads and
  base-model fallbacks of this process (``inference.lora``, through ``add_lora_observer``).

Read from the stores at scrape time, reused for ``METRICS_CACHE_S`` seconds so frequent
scrapes do not hammer the database (:class:`StoreCollector`):

- ``npc_queue_length{queue}``: messages waiting per Celery queue (Redis ``LLEN``);
- ``npc_tasks{task, status}``: the task ledger's rows per task name and status; the workers'
  task outcomes come from here (the ledger is written by every worker, so no worker process
  needs an endpoint of its own or prometheus_client's multiprocess mode);
- ``npc_task_tokens{task}``: model tokens the ledger records per task name (the workers'
  model usage: analysis, rewrites, creations, simulation);
- ``npc_dead_letters{task, replayed}``: dead letters per task name;
- ``npc_vector_index_vectors``: vectors in this server's in-process index;
- ``npc_metrics_source_up{source}``: 1 when the last reading of ``broker`` / ``database``
  succeeded, 0 when it failed (the other families then keep their last good values).

Metrics live in :data:`REGISTRY` (not the global default registry), with the process and
platform collectors.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram,
                               PlatformCollector, ProcessCollector, generate_latest)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from inference.llm import Completion, add_call_observer
from inference.lora.coordinator import add_lora_observer

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

HTTP_LATENCY = Histogram(
    "npc_http_request_duration_seconds", "Dialogue server request latency per route template",
    ["method", "route", "status"], registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
TURNS = Counter("npc_turns_served", "Turns answered (kind=turn) and events recorded (kind=event)",
                ["kind"], registry=REGISTRY)
TTFT = Histogram(
    "npc_dialogue_ttft_seconds", "Played turns: model call start to the first token "
    "(mode=stream) or to the whole reply (mode=reply)", ["mode"], registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64))
MODEL_LATENCY = Histogram(
    "npc_model_call_duration_seconds", "Model calls of this process, retries included",
    ["role", "backend", "outcome"], registry=REGISTRY,
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128))
MODEL_TOKENS = Counter("npc_model_tokens", "Model tokens of this process's calls",
                       ["role", "kind"], registry=REGISTRY)
for _kind in ("turn", "event"):
    TURNS.labels(_kind)
for _mode in ("stream", "reply"):
    TTFT.labels(_mode)


def observe_model_call(role: str, backend: str, seconds: float, done: Completion | None) -> None:
    """``inference.llm`` call observer: latency per role and outcome, tokens per role."""
    MODEL_LATENCY.labels(role, backend, "ok" if done is not None else "error").observe(seconds)
    if done is not None:
        MODEL_TOKENS.labels(role, "prompt").inc(done.prompt_tokens)
        MODEL_TOKENS.labels(role, "completion").inc(done.completion_tokens)


add_call_observer(observe_model_call)

CANON_FLAGS = Counter("npc_canon_contradictions", "Played turns whose reply the lore guard found "
                      "contradicting the canon, per pass that found it (rules/model) and what "
                      "was done (regenerated/flagged: streamed)", ["by", "action"],
                      registry=REGISTRY)
LORA_LOADS = Counter("npc_lora_loads", "LoRA adapter loads by this process per vLLM server and "
                     "outcome (loaded/already_loaded/broken/failed)", ["server", "outcome"],
                     registry=REGISTRY)
LORA_UNLOADS = Counter("npc_lora_unloads", "LoRA adapter unloads (LRU) by this process per "
                       "server and outcome (unloaded/not_loaded/failed)", ["server", "outcome"],
                       registry=REGISTRY)
LORA_FALLBACKS = Counter("npc_lora_fallbacks", "Calls of an NPC with an archetype that fell back "
                         "to the base model, per archetype and reason (unregistered/no_adapter/"
                         "broken/load_failed)", ["archetype", "reason"], registry=REGISTRY)


def observe_lora(event: str, labels: dict) -> None:
    """``inference.lora.coordinator`` observer: loads, unloads, fallbacks."""
    if event == "load":
        LORA_LOADS.labels(labels["server"], labels["outcome"]).inc()
    elif event == "unload":
        LORA_UNLOADS.labels(labels["server"], labels["outcome"]).inc()
    elif event == "fallback":
        LORA_FALLBACKS.labels(labels["archetype"], labels["reason"]).inc()


add_lora_observer(observe_lora)


def observe_request(method: str, route: str | None, status: int, seconds: float) -> None:
    """Record one HTTP request; ``route`` is the matched route template or None."""
    HTTP_LATENCY.labels(method, route or "unmatched", str(status)).observe(seconds)


class StoreCollector(Collector):
    """Queue lengths, ledger and dead-letter counts, and index size, read on scrape.

    Args:
        read_queues: ``() -> {queue: waiting}`` (raises when the broker is unreachable).
        read_ledger: ``() -> (task counts, dead-letter counts, tokens per task)`` as
            ``memory.ops`` ``task_outcome_counts``, ``dead_letter_counts`` and
            ``task_token_sums`` return them.
        index_size: ``() -> vectors in the index`` (or None before the index is loaded).
        ttl_s: ``() -> seconds`` a reading is reused.
    """

    def __init__(self, read_queues: Callable[[], dict[str, int]],
                 read_ledger: Callable[[], tuple[dict, dict, dict]],
                 index_size: Callable[[], int | None], ttl_s: Callable[[], float]):
        self._read_queues = read_queues
        self._read_ledger = read_ledger
        self._index_size = index_size
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._at = {"broker": -1e18, "database": -1e18}
        self._up = {"broker": 0, "database": 0}
        self._queues: dict[str, int] = {}
        self._tasks: dict[tuple[str, str], int] = {}
        self._dead: dict[tuple[str, bool], int] = {}
        self._tokens: dict[str, int] = {}
        self.reads = {"broker": 0, "database": 0}

    def _refresh(self) -> None:
        now = time.monotonic()
        ttl = self._ttl_s()
        if now - self._at["broker"] >= ttl:
            self._at["broker"] = now
            self.reads["broker"] += 1
            try:
                self._queues = self._read_queues()
                self._up["broker"] = 1
            except Exception:  # noqa: BLE001 - reported as npc_metrics_source_up 0
                self._up["broker"] = 0
        if now - self._at["database"] >= ttl:
            self._at["database"] = now
            self.reads["database"] += 1
            try:
                self._tasks, self._dead, self._tokens = self._read_ledger()
                self._up["database"] = 1
            except Exception:  # noqa: BLE001
                self._up["database"] = 0

    def collect(self):
        """Yield the gauge families (refreshing the readings when older than the TTL)."""
        with self._lock:
            self._refresh()
            queues, tasks, dead, tokens, up = (dict(self._queues), dict(self._tasks),
                                               dict(self._dead), dict(self._tokens),
                                               dict(self._up))
        g = GaugeMetricFamily("npc_queue_length", "Messages waiting per Celery queue",
                              labels=["queue"])
        for name, n in sorted(queues.items()):
            g.add_metric([name], n)
        yield g
        g = GaugeMetricFamily("npc_tasks", "Task ledger rows per task name and status",
                              labels=["task", "status"])
        for (name, status), n in sorted(tasks.items()):
            g.add_metric([name, status], n)
        yield g
        g = GaugeMetricFamily("npc_task_tokens", "Model tokens recorded in the ledger per task",
                              labels=["task"])
        for name, n in sorted(tokens.items()):
            g.add_metric([name], n)
        yield g
        g = GaugeMetricFamily("npc_dead_letters", "Dead letters per task name",
                              labels=["task", "replayed"])
        for (name, replayed), n in sorted(dead.items()):
            g.add_metric([name, "true" if replayed else "false"], n)
        yield g
        size = self._index_size()
        g = GaugeMetricFamily("npc_vector_index_vectors", "Vectors in this server's index")
        if size is not None:
            g.add_metric([], size)
        yield g
        g = GaugeMetricFamily("npc_metrics_source_up", "Whether the last store reading worked",
                              labels=["source"])
        for source, ok in sorted(up.items()):
            g.add_metric([source], ok)
        yield g

    def describe(self):
        """No description at registration (the families are produced on scrape)."""
        return []


def render() -> tuple[bytes, str]:
    """The exposition text of :data:`REGISTRY` and its content type."""
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
