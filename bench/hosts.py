"""Benchmark 12, hosts: several servers, one world. Two "hosts" on this machine
(``devtools.hosts.Host``: a dialogue server and its worker group in one process group of its
own, with their own ports and data directory) behind HAProxy (``devtools.hosts.HAProxy``:
health checks on ``/healthz``, ``option redispatch``, ``retries 3``), sharing the run's
PostgreSQL database and nearline Redis, with the Celery broker on a private Redis of its own
(``BROKER_URL`` apart from ``REDIS_URL``), on the zero-latency model server.

Three phases, players playing turns one after another with a short think time:

1. ``direct``: every player to server B's own port (the same-run baseline);
2. ``haproxy``: the same through HAProxy, both hosts up;
3. ``haproxy, host killed``: through HAProxy, and one host's whole process group is killed
   (``kill -9``) mid-phase; afterwards ``npc_memory.reconcile`` (beat's job) runs every few
   seconds on the surviving host until every accepted turn is archived and its tasks ended.

Figures: turns, turn latency p50/p95 (ms, client round trip), kills, turns refused (requests
in flight to the killed server), turns lost (answered 200 but not archived, or not in the
session's recent turns, which keep its last ``TURNS_CAP``), tasks lost (an accepted turn's
analysis or archive task not ``succeeded`` after the drain), messages the killed host's
workers held and tasks run more than once (redelivered), and the drain time after the kill
(kill -> every task ended). Needs ``haproxy`` (Debian: ``apt-get install haproxy``); without
it the benchmark reports itself skipped.
"""

from __future__ import annotations

import random
import threading
import time

import httpx
import redis as redis_py

from bench.common import Env, Result, Target, dist
from contract.names import TaskName
from contract.send import TURN_TASKS

TASKS = tuple(n.value for n in TURN_TASKS)


class _Player(threading.Thread):
    """Plays turns against ``base_url`` until ``turns`` are played or ``stop`` is set; keeps
    ``(started, ms, status, served_by, turn_id)`` per turn (status 0: transport error)."""

    def __init__(self, base_url: str, headers: dict, sid: str, npc: str, turns: int | None,
                 stop: threading.Event, think_s: float, seed: int):
        super().__init__(daemon=True)
        self.client = httpx.Client(base_url=base_url, timeout=60, headers=headers)
        self.sid, self.npc, self.n, self.stop_event = sid, npc, turns, stop
        self.think_s, self.rng = think_s, random.Random(seed)
        self.turns: list[tuple[float, float, int, str, str | None]] = []

    def run(self) -> None:
        i = 0
        while not self.stop_event.is_set() and (self.n is None or i < self.n):
            t0 = time.monotonic()
            try:
                res = self.client.post(f"/v1/sessions/{self.sid}/turns", json={
                    "npc_id": self.npc, "player_text": f"What news of the road, friend? ({i})"})
                status, served = res.status_code, res.headers.get("x-served-by", "")
                tid = res.json().get("turn_id") if status == 200 else None
            except httpx.HTTPError:
                status, served, tid = 0, "", None
            self.turns.append((t0, (time.monotonic() - t0) * 1000, status, served, tid))
            i += 1
            self.stop_event.wait(self.rng.expovariate(1 / self.think_s))


def _play(base_url: str, headers: dict, sessions: list[tuple[str, str]], turns: int | None,
          think_s: float, stop: threading.Event | None = None) -> list[_Player]:
    stop = stop or threading.Event()
    players = [_Player(base_url, headers, sid, npc, turns, stop, think_s, i)
               for i, (sid, npc) in enumerate(sessions)]
    for p in players:
        p.start()
    return players


def _row(path: str, players: list[_Player]) -> dict:
    turns = [t for p in players for t in p.turns]
    ok = [t[1] for t in turns if t[2] == 200]
    d = dist(ok, 1)
    return {"path": path, "turns": len(turns), "accepted": len(ok), "refused": len(turns) - len(ok),
            "p50_ms": d["p50"], "p95_ms": d["p95"], "p99_ms": d["p99"]}


def _held(app, nodes: list[str], ids: list[str]) -> set[str]:
    if not ids:
        return set()
    replies = app.control.broadcast("held_tasks", arguments={"ids": ids}, reply=True,
                                    timeout=1.0, destination=nodes) or []
    return {i for reply in replies for held in reply.values() for i in held}


def run(env: Env, quick: bool) -> Result:
    """Full: 8 players, 25 turns each per latency phase, a 60 s kill phase (kill at 20 s);
    quick: 4 players, 8 turns, 20 s (kill at 8 s)."""
    from celery import Celery
    from sqlalchemy import select

    import celeryconfig
    from devtools.hosts import HAProxy, Host, haproxy_bin, start_hosts
    from devtools.procs import PrivateRedis
    from memory import nearline
    from memory.db import session_scope
    from models import TaskRecord, Turn
    from contract.send import turn_task_id

    if haproxy_bin() is None:  # reported, not failed: the rest of the suite still runs
        return Result("hosts", [], targets=[Target("turns lost after a host kill", None, "<=", 0)],
                      notes="skipped: haproxy is not installed (apt-get install haproxy)")
    players_n, turns, phase_s, kill_at_s, think_s = (4, 8, 20, 8, 0.1) if quick else \
        (8, 25, 60, 20, 0.1)
    drain_s = 180 if quick else 600
    broker = PrivateRedis()
    broker.start()
    child = env.child_env(UNACKED_RESTORE_AFTER_S="5")
    child["BROKER_URL"] = broker.url
    hosts = {n: Host(n, child) for n in ("a", "b")}
    lb = HAProxy({n: h.web.port for n, h in hosts.items()})
    app = Celery("npc_memory_bench_hosts", set_as_current=False)
    app.config_from_object(celeryconfig)
    app.conf.broker_url = broker.url
    w = env.world()
    headers = env.headers()
    try:
        start_hosts(hosts.values())
        if not all(h.alive() for h in hosts.values()):
            raise RuntimeError("a host did not start:\n" + "\n".join(h.tails() for h in hosts.values()))
        lb.start()
        client = httpx.Client(base_url=lb.url, timeout=60, headers=headers)
        served: set[str] = set()
        deadline = time.monotonic() + 30
        while served < {"a", "b"} and time.monotonic() < deadline:
            served.add(client.get("/healthz").headers.get("x-served-by", ""))

        def sessions() -> list[tuple[str, str]]:
            out = []
            for i in range(players_n):
                res = client.post("/v1/sessions", json={"world": w["key"]})
                res.raise_for_status()
                out.append((res.json()["session_id"], w["npcs"][i % len(w["npcs"])]))
            return out

        rows = []
        all_players: list[_Player] = []
        for path, url in (("direct to server b", hosts["b"].web.url), ("haproxy, 2 hosts", lb.url)):
            ps = _play(url, headers, sessions(), turns, think_s)
            for p in ps:
                p.join(600)
            rows.append(_row(path, ps))
            all_players += ps

        stop = threading.Event()
        ps = _play(lb.url, headers, sessions(), None, think_s, stop)
        all_players += ps
        time.sleep(kill_at_s)
        ids = [turn_task_id(n, t) for p in ps for t in [x[4] for x in p.turns if x[4]] for n in TASKS]
        held = _held(app, [x.node for x in hosts["a"].workers], ids)
        unacked_at_kill = redis_py.Redis.from_url(broker.url).hlen("unacked")
        hosts["a"].kill()
        killed_at = time.monotonic()
        time.sleep(max(0.0, phase_s - kill_at_s))
        stop.set()
        for p in ps:
            p.join(120)
        row = _row("haproxy, host a killed mid-run", ps)
        after = [t for p in ps for t in p.turns if t[0] > killed_at]
        row["kills"] = 1
        row["after_kill"] = len(after)
        row["after_kill_ok_on_b"] = sum(t[2] == 200 and t[3] == "b" for t in after)
        row["held_by_a_at_kill"] = len(held)
        row["unacked_at_kill"] = unacked_at_kill

        # drain: beat's reconcile on the surviving host, until every accepted turn's tasks end
        accepted = {p.sid: [t[4] for t in p.turns if t[4]] for p in all_players}
        turn_ids = [t for ts in accepted.values() for t in ts]
        task_ids = [turn_task_id(n, t) for t in turn_ids for n in TASKS]
        deadline = time.monotonic() + drain_s
        done_at = None
        last = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() - last > 5:
                app.send_task(TaskName.RECONCILE.value, kwargs={"older_than_s": 5})
                last = time.monotonic()
            with session_scope() as s:
                ok = s.scalars(select(TaskRecord.task_id).where(
                    TaskRecord.task_id.in_(task_ids), TaskRecord.status == "succeeded")).all()
            if len(set(ok)) == len(task_ids):
                done_at = time.monotonic()
                break
            time.sleep(1)
        with session_scope() as s:
            archived = set(s.scalars(select(Turn.id).where(Turn.session_id.in_(list(accepted)))))
            ok = set(s.scalars(select(TaskRecord.task_id).where(
                TaskRecord.task_id.in_(task_ids), TaskRecord.status == "succeeded")))
        r = nearline.get_redis()
        recent = {sid: {t["turn_id"] for t in nearline.recent_turns(r, sid, 1000)}
                  for sid in accepted}
        # the nearline list keeps a session's last TURNS_CAP turns; the archive keeps all
        lost_turns = sum(1 for sid, ts in accepted.items() for i, t in enumerate(ts)
                         if t not in archived
                         or (i >= len(ts) - nearline.TURNS_CAP and t not in recent[sid]))
        lost_tasks = len(set(task_ids) - ok)
        with session_scope() as s:
            row["redelivered"] = len(s.scalars(select(TaskRecord.task_id).where(
                TaskRecord.task_id.in_(task_ids), TaskRecord.attempts > 1)).all())
        row["turns_lost"] = lost_turns
        row["tasks_lost"] = lost_tasks
        row["drained_after_kill_s"] = round(done_at - killed_at, 1) if done_at else None
        rows.append(row)
        direct, via = rows[0], rows[1]
        return Result(
            "hosts", rows, baseline=direct,
            ratio=round(via["p95_ms"] / direct["p95_ms"], 2) if direct["p95_ms"] else None,
            targets=[Target("turns lost after a host kill", float(lost_turns), "<=", 0),
                     Target("tasks lost after a host kill", float(lost_tasks), "<=", 0),
                     Target("turns after the kill refused",
                            float(row["after_kill"] - row["after_kill_ok_on_b"]), "<=", 0)],
            params={"players": players_n, "turns_per_player": turns, "kill_phase_s": phase_s,
                    "kill_at_s": kill_at_s, "think_s": think_s, "accepted_turns": len(turn_ids)},
            notes="ratio = p95 through HAProxy (2 hosts) / p95 direct to one server. refused = "
                  "requests in flight to the killed server (not accepted: the client saw an "
                  "error). held_by_a_at_kill: messages the killed host's workers reported "
                  "holding just before the kill (given back by reconcile). Zero-latency model: "
                  "latency is the servers' and the balancer's own.")
    finally:
        lb.stop()
        for h in hosts.values():
            h.stop()
        app.close()
        broker.stop()
