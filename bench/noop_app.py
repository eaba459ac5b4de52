"""The baseline of the throughput benchmarks: a Celery app with one no-op task on the run's
broker, with the project's delivery settings (``celeryconfig``: acks late, prefetch 1, JSON),
on a queue of its own (``bench_noop``).

    celery -A bench.noop_app worker -Q bench_noop -c 2 --pool prefork
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

import celeryconfig

QUEUE = "bench_noop"
app = Celery("bench_noop", set_as_current=False)  # never the project app's stand-in
app.config_from_object(celeryconfig)
app.conf.task_queues = [Queue(QUEUE, routing_key=QUEUE)]
app.conf.task_default_queue = QUEUE
app.conf.task_routes = {"bench.noop": {"queue": QUEUE}}
app.conf.beat_schedule = {}


@app.task(name="bench.noop")
def noop(i: int = 0) -> None:
    """Does nothing."""
    return None
