"""Several servers, one world: two "hosts" (each a dialogue server and a worker group in one
process group of its own, with its own ports and data directory: ``devtools.hosts.Host``)
behind HAProxy, sharing PostgreSQL and the nearline Redis, with the Celery broker on a
private Redis of its own (``BROKER_URL`` apart from ``REDIS_URL``), on the real llama.cpp
model server.

- what a turn on server A wrote is found by a search answered by server B within the
  freshness target of the README's benchmarks (500 ms) after A finds it;
- players post turns through HAProxy (turns generated elsewhere, ``/events``: the same record
  path and tasks as a dialogue turn, without waiting for the model, which one CPU thread
  serves slowly; one dialogue turn goes through HAProxy after the kill);
- one host killed with ``kill -9`` of its process group while players keep talking: every
  turn HAProxy answered 200 is archived and in the recent turns, every such turn's tasks end
  in the ledger, the messages the dead host's workers held are delivered again (dead
  workers' unacknowledged messages restored by reconcile), and the players' next turns are
  answered by the surviving server.

Skipped where ``haproxy`` is not installed (Debian: ``apt-get install haproxy``).
"""

from __future__ import annotations

import os

import threading
import time

import httpx
import pytest
import redis as redis_py
from sqlalchemy import select

from memory import nearline
from memory.db import session_scope
from models import Turn
from contract.send import turn_task_id
from tests.procs import (LINES, HAProxy, Host, PrivateRedis, api_headers, haproxy_bin, ledger,
                         open_session, play_turn, process_env_with_broker, start_hosts)

pytestmark = [
    pytest.mark.skipif(haproxy_bin() is None,
                       reason="haproxy not installed (apt-get install haproxy)"),
    # minutes of real model calls on two hosts: run on request (HOSTS_TEST=1), not by default,
    # until it is reliable on a 2-core machine (see README "Several servers, one world")
    pytest.mark.skipif(os.environ.get("HOSTS_TEST") != "1",
                       reason="the multi-host test runs with HOSTS_TEST=1"),
]

FRESHNESS_TARGET_S = 0.5  # the freshness benchmark's target: turn -> searchable, p95 <= 500 ms
TASKS = ("npc_memory.analyze_turn", "npc_memory.archive_turn")
PLAYERS = 2
def _found(client: httpx.Client, sid: str, text: str, turn_id: str) -> bool:
    resp = client.get(f"/v1/sessions/{sid}/search", params={"q": text, "k": 10})
    assert resp.status_code == 200, resp.text
    return any(h.get("turn_id") == turn_id for h in resp.json()["hits"])


def _archived(sids: list[str]) -> set[str]:
    with session_scope() as s:
        return set(s.scalars(select(Turn.id).where(Turn.session_id.in_(sids))))


def _app(broker_url: str):
    from celery import Celery

    import celeryconfig

    app = Celery("npc_memory_hosts", set_as_current=False)  # never the tests' current app
    app.config_from_object(celeryconfig)
    app.conf.broker_url = broker_url
    return app


class _Player(threading.Thread):
    """Posts turns generated elsewhere (``/events``: the turn's record path and tasks without
    the dialogue model, which one CPU thread serves slowly) through the balancer, one every
    ``pace_s`` seconds until stopped; keeps ``(started, ended, status, served_by, turn_id)``
    of each."""

    def __init__(self, base_url: str, sid: str, npc: str, stop: threading.Event,
                 pace_s: float = 1.0):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base_url, timeout=180, headers=api_headers())
        self.sid, self.npc, self.stop_event, self.pace_s = sid, npc, stop, pace_s
        self.turns: list[tuple[float, float, int, str, str | None]] = []

    def run(self) -> None:
        i = 0
        while not self.stop_event.is_set():
            t0 = time.monotonic()
            try:
                resp = self.client.post(f"/v1/sessions/{self.sid}/events", json={
                    "npc_id": self.npc, "text": LINES[i % len(LINES)], "npc_text": "Aye."})
                status, served = resp.status_code, resp.headers.get("x-served-by", "")
                tid = resp.json().get("turn_id") if status in (200, 201) else None
            except httpx.HTTPError:
                status, served, tid = 0, "", None
            self.turns.append((t0, time.monotonic(), status, served, tid))
            i += 1
            self.stop_event.wait(self.pace_s)

    def accepted(self) -> list[str]:
        return [t[4] for t in self.turns if t[4] is not None]


def test_two_hosts_behind_haproxy_share_memory_and_survive_a_host_kill(light_world, llm_server,
                                                                        wait_for):
    broker = PrivateRedis()
    broker.start()
    env = process_env_with_broker(broker.url, UNACKED_RESTORE_AFTER_S="3",
                                  DIALOGUE_MAX_TOKENS="24")
    hosts = {n: Host(n, env) for n in ("a", "b")}
    lb = HAProxy({n: h.web.port for n, h in hosts.items()})
    app = _app(broker.url)
    br = redis_py.Redis.from_url(broker.url)
    stop = threading.Event()
    players: list[_Player] = []
    try:
        start_hosts(hosts.values())
        for h in hosts.values():
            assert h.alive(), h.tails()
        lb.start()
        client = httpx.Client(base_url=lb.url, timeout=180, headers=api_headers())
        # both servers in rotation
        served: set[str] = set()
        wait_for(lambda: served.add(client.get("/healthz").headers.get("x-served-by", ""))
                 or served >= {"a", "b"}, timeout=30)

        # (a) a turn on A, found by a search on B within the freshness target of A finding it
        a = httpx.Client(base_url=hosts["a"].web.url, timeout=180, headers=api_headers())
        b = httpx.Client(base_url=hosts["b"].web.url, timeout=180, headers=api_headers())
        sid, npc = open_session(client, light_world["key"])
        text = "The silver key is hidden under the third stone of the chapel well."
        resp = play_turn(a, sid, npc, text)
        assert resp.status_code == 200, resp.text
        tid = resp.json()["turn_id"]
        seen: dict[str, float] = {}

        def both_found() -> bool:
            for name, c in (("a", a), ("b", b)):
                if name not in seen and _found(c, sid, text, tid):
                    seen[name] = time.monotonic()
            return len(seen) == 2

        wait_for(both_found, timeout=120, interval=0.02)
        assert seen["b"] - seen["a"] <= FRESHNESS_TARGET_S, seen

        # (b) players talk through HAProxy; host A dies while its workers hold messages
        for _ in range(PLAYERS):
            psid, pnpc = open_session(client, light_world["key"])
            players.append(_Player(lb.url, psid, pnpc, stop))
        for p in players:
            p.start()
        a_nodes = [w.node for w in hosts["a"].workers]

        def a_holds() -> set[str]:
            ids = [turn_task_id(name, t) for p in players for t in p.accepted() for name in TASKS]
            if not ids:
                return set()
            replies = app.control.broadcast("held_tasks", arguments={"ids": ids}, reply=True,
                                            timeout=1.0, destination=a_nodes) or []
            return {i for reply in replies for held in reply.values() for i in held}

        held = wait_for(a_holds, timeout=120, interval=0.5)
        assert len(hosts["a"].pids()) >= 5  # sh, uvicorn, 2 workers and their pool children
        hosts["a"].kill()
        assert hosts["a"].pids() == []
        killed_at = time.monotonic()  # a request in flight to A until now may fail: not accepted
        # the players keep talking for a while (with 2 or more turns each after the kill)
        wait_for(lambda: all(sum(t[0] > killed_at for t in p.turns) >= 2 for p in players),
                 timeout=120, interval=0.5)
        stop.set()
        for p in players:
            p.join(200)
        # a dialogue turn (the model answers) through the balancer, after the kill
        resp = play_turn(client, players[0].sid, players[0].npc, LINES[0])
        assert resp.status_code == 200 and resp.headers["x-served-by"] == "b", resp.text
        players[0].turns.append((time.monotonic(), time.monotonic(), 200, "b",
                                 resp.json()["turn_id"]))

        # (c) every turn started after the kill was accepted, by the surviving server
        after = [t for p in players for t in p.turns if t[0] > killed_at]
        assert after and all(t[2] in (200, 201) and t[3] == "b" for t in after), after

        # no accepted turn lost: archived and in the session's recent turns
        accepted = {p.sid: p.accepted() for p in players}
        accepted[sid] = [tid]
        all_turns = [t for ts in accepted.values() for t in ts]
        last_reconcile = [0.0]

        def reconciled() -> bool:
            # beat's job on a live host: resend the outbox, restore dead workers' messages
            if time.monotonic() - last_reconcile[0] > 5:
                app.send_task("npc_memory.reconcile", kwargs={"older_than_s": 5})
                last_reconcile[0] = time.monotonic()
            return _archived(list(accepted)) >= set(all_turns)

        wait_for(reconciled, timeout=240, interval=0.5)
        r = nearline.get_redis()
        for s, ts in accepted.items():
            recent = [t["turn_id"] for t in nearline.recent_turns(r, s, 100)]
            assert set(ts) <= set(recent), (s, ts, recent)

        # no task lost: each accepted turn's tasks end in the ledger, those A held included
        ids = [turn_task_id(name, t) for t in all_turns for name in TASKS]
        assert held <= set(ids)

        def finished() -> bool:
            reconciled()
            rows = ledger(ids)
            return len(rows) == len(ids) and all(x.status in ("succeeded", "dead")
                                                 for x in rows.values())

        wait_for(finished, timeout=300, interval=1.0)
        for rec in ledger(ids).values():
            # the small test model may write unparseable analyses: dead-lettered, never lost
            assert rec.status == "succeeded" or "InvalidModelOutput" in (rec.error or ""), \
                (rec.task_id, rec.status, rec.error)
        # nothing left unacknowledged (the last reconcile runs on the surviving host)
        wait_for(lambda: br.hlen("unacked") == 0, timeout=60)
    finally:
        stop.set()
        for p in players:
            p.join(30)
        lb.stop()
        for h in hosts.values():
            h.stop()
        app.close()
        broker.stop()
