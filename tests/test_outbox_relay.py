"""The dialogue server's outbox relay (``workers.relay.TurnRelay``): a recorded turn's pipeline
tasks reach the broker from the relay's thread, the outbox entry is settled only once they
did, a failed send leaves the turn to the reconcile task, and stopping sends what is queued.

Each test runs on private ``redis-server`` processes (``tests.procs.PrivateRedis``): one is the
nearline tier with the outbox, one the broker, so the broker can be killed on its own.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis as redis_py
from celery import Celery

import celeryconfig
from memory import keys as rkeys
from memory import nearline
from contract.send import celery_sender, send_turn_tasks
from tests.procs import PrivateRedis
from workers.relay import TurnRelay


@pytest.fixture()
def stores():
    """(nearline Redis client, broker PrivateRedis, Celery app on that broker)."""
    store, broker = PrivateRedis(), PrivateRedis()
    store.start()
    broker.start()
    app = Celery("npc_memory_relay_test", set_as_current=False)
    app.config_from_object(celeryconfig)
    app.conf.broker_url = broker.url
    app.conf.result_backend = None
    app.conf.broker_connection_retry_on_startup = False
    app.conf.task_publish_retry_policy = {"max_retries": 1, "interval_start": 0,
                                          "interval_step": 0.1, "interval_max": 0.1}
    r = redis_py.Redis.from_url(store.url)
    try:
        yield r, broker, app
    finally:
        app.close()
        broker.stop()
        store.stop()


def _recorded_turn(r: redis_py.Redis, session_id: str) -> dict:
    """A turn recorded in the nearline tier (recent turns + outbox), as the server records one."""
    kwargs = {"turn_id": uuid.uuid4().hex, "session_id": session_id, "world_id": 1,
              "seq": nearline.next_turn_seq(r, session_id), "npc_entry_id": 7,
              "player_text": "Have you seen the ferryman?", "npc_text": "Not since the storm.",
              "latency_ms": 1.0, "created_at": time.time()}
    nearline.record_turn(r, session_id, kwargs)
    return kwargs


def _queued(broker: PrivateRedis) -> int:
    b = redis_py.Redis.from_url(broker.url)
    return b.llen("analysis") + b.llen("archive")


def test_relay_sends_from_its_thread_and_settles_the_outbox(stores, wait_for):
    r, broker, app = stores
    threads = []
    real = celery_sender(app)

    def send(name, kwargs, task_id=None, **options):
        threads.append(threading.current_thread().name)
        return real(name, kwargs, task_id, **options)

    relay = TurnRelay(send, r)
    relay.start()
    try:
        turns = [_recorded_turn(r, "s-relay") for _ in range(5)]
        assert {t["turn_id"] for t in nearline.outbox_due(r, 0)} == {t["turn_id"] for t in turns}
        for t in turns:
            relay.submit(t)
        wait_for(lambda: _queued(broker) == 10 and r.zcard(rkeys.OUTBOX_TURNS) == 0, timeout=30)
    finally:
        relay.stop()
    assert set(threads) == {"outbox-relay"}  # never on the caller's thread
    assert relay.stats() == {"pending": 0, "sent": 5, "inline": 0, "failed": 0}


def test_a_failed_send_leaves_the_turn_to_reconcile(stores, wait_for):
    r, broker, app = stores
    relay = TurnRelay(celery_sender(app), r)
    relay.start()
    try:
        broker.stop()  # the broker is down; the nearline tier is not
        lost = _recorded_turn(r, "s-down")
        relay.submit(lost)
        wait_for(lambda: relay.failed == 1, timeout=60)
        assert [t["turn_id"] for t in nearline.outbox_due(r, 0)] == [lost["turn_id"]]
        broker.start()
        # what the reconcile task does with an overdue outbox entry
        for due in nearline.outbox_due(r, 0):
            send_turn_tasks(celery_sender(app), r, due)
        assert _queued(broker) == 2 and r.zcard(rkeys.OUTBOX_TURNS) == 0
        relay.submit(_recorded_turn(r, "s-down"))  # the relay itself carries on
        wait_for(lambda: relay.sent == 1 and _queued(broker) == 4, timeout=30)
    finally:
        relay.stop()


def test_stop_sends_every_queued_turn(stores):
    r, broker, app = stores
    relay = TurnRelay(celery_sender(app), r)
    relay.start()
    for _ in range(20):
        relay.submit(_recorded_turn(r, "s-stop"))
    assert relay.wait_idle(60) and _queued(broker) == 40 and relay.pending() == 0
    for _ in range(20):
        relay.submit(_recorded_turn(r, "s-stop"))
    relay.stop(timeout_s=60)
    assert _queued(broker) == 80
    assert r.zcard(rkeys.OUTBOX_TURNS) == 0
    assert relay.sent == 40 and not relay.running


def test_without_its_thread_or_room_the_relay_sends_inline(stores):
    r, broker, app = stores
    relay = TurnRelay(celery_sender(app), r, max_pending=1)  # never started: sends inline
    relay.submit(_recorded_turn(r, "s-inline"))
    assert _queued(broker) == 2 and r.zcard(rkeys.OUTBOX_TURNS) == 0  # before submit returned
    assert relay.inline == 1 and relay.sent == 0


def test_the_server_answers_a_turn_while_the_broker_is_down(stores):
    """End to end through ``memory.turns.record_turn`` with the relay as ``publish``: the turn
    is recorded and answered although the broker refuses it; the outbox keeps it."""
    from memory.turns import Target, record_turn

    r, broker, app = stores
    relay = TurnRelay(celery_sender(app), r)
    relay.start()
    try:
        broker.stop()
        target = Target(session_id="s-e2e", world_id=1, player_name="p", npc_entry_id=7,
                        npc={"id": 7, "key": "wenna", "title": "Wenna", "content": "",
                             "entity_type": "character"})
        rec = record_turn(r, celery_sender(app), target, player_text="hello", npc_text="hi",
                          publish=relay.submit)
        assert rec.turn.seq == 1
        assert [t["turn_id"] for t in nearline.recent_turns(r, "s-e2e", 5)] == [rec.turn.turn_id]
    finally:
        relay.stop()
    assert [t["turn_id"] for t in nearline.outbox_due(r, 0)] == [rec.turn.turn_id]
