"""Benchmark (not a test): hot-path overhead of the dialogue server under 100 and 500
concurrent sessions, with zero-latency OpenAI-compatible model and embedding servers, so what
is measured is the server's own work (Level 1 cache check, Redis, index search, ranking, prompt
rendering, recording and enqueueing), not the model.

    PYTHONPATH=. python bench/hot_path.py --sessions 100 500 --turns 5

What it does: starts ``bench/hot_path.py serve-zero`` (a FastAPI app answering
``/v1/chat/completions`` with a fixed line and ``/v1/embeddings`` with a deterministic 384-d
hashed vector, both at once), imports the example world with that embedder into
``DATABASE_URL`` (default: a fresh SQLite file in a temporary folder) and ``REDIS_URL``
(default ``redis://127.0.0.1:6379/15``), starts ``uvicorn workers.web:app`` against them, opens
N sessions and plays ``--turns`` turns in each, all sessions concurrently (asyncio + httpx).

It prints, per concurrency level: client round trip and server hot-path overhead (server time
minus the model stage) p50/p95/p99 in ms, turns/s, and each stage's share of the server time,
read from the turn endpoint's ``Server-Timing`` header (context, embed, retrieve, model,
record). The turn tasks it enqueues are deleted from the broker's queues at the end (only the
queue keys; nothing else in the Redis database is touched).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DIM = 384


def zero_app():
    """The zero-latency OpenAI-compatible model and embedding server."""
    import numpy as np
    from fastapi import FastAPI

    app = FastAPI()

    def vec(text: str) -> list[float]:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
        return (v / np.linalg.norm(v)).tolist()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "zero", "object": "model"}]}

    @app.post("/v1/embeddings")
    def embeddings(body: dict):
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return {"object": "list", "model": "zero", "usage": {"prompt_tokens": 1, "total_tokens": 1},
                "data": [{"object": "embedding", "index": i, "embedding": vec(t)}
                         for i, t in enumerate(texts)]}

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        return {"id": "zero", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "zero"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": "Aye, that I can."}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    return app


def _wait(url: str, timeout: float = 120) -> None:
    from workers.embedded import wait_http

    wait_http(url, timeout)


def _pct(values: list[float], p: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


async def _drive(base: str, world: str, npcs: list[str], sessions: int, turns: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=sessions, max_keepalive_connections=sessions)
    headers = {"Authorization": f"Bearer {os.environ['API_KEYS'].split(',')[0]}"}
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits,
                                 headers=headers) as client:
        sids = []
        for _ in range(sessions):
            res = await client.post("/v1/sessions", json={"world": world})
            res.raise_for_status()
            sids.append(res.json()["session_id"])
        rtt, overhead, stages, errors = [], [], {}, 0

        async def play(i: int, sid: str) -> None:
            nonlocal errors
            for t in range(turns):
                t0 = time.perf_counter()
                try:
                    res = await client.post(f"/v1/sessions/{sid}/turns", json={
                        "npc_id": npcs[(i + t) % len(npcs)],
                        "player_text": f"Tell me about the road north, friend ({t})."})
                except httpx.TransportError:  # counted, the session goes on
                    errors += 1
                    continue
                rtt.append((time.perf_counter() - t0) * 1000)
                if res.status_code != 200:
                    errors += 1
                    continue
                timing = dict(part.split(";dur=") for part in
                              res.headers["server-timing"].split(", "))
                timing = {k: float(v) for k, v in timing.items()}
                for k, v in timing.items():
                    stages.setdefault(k, []).append(v)
                overhead.append(sum(timing.values()) - timing.get("model", 0.0))

        t0 = time.perf_counter()
        await asyncio.gather(*(play(i, sid) for i, sid in enumerate(sids)))
        wall = time.perf_counter() - t0
    return {"rtt": rtt, "overhead": overhead, "stages": stages, "errors": errors, "wall": wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    z = sub.add_parser("serve-zero")
    z.add_argument("--port", type=int, required=True)
    ap.add_argument("--sessions", type=int, nargs="+", default=[100, 500])
    ap.add_argument("--turns", type=int, default=5)
    args = ap.parse_args()
    if args.cmd == "serve-zero":
        import uvicorn

        uvicorn.run(zero_app(), host="127.0.0.1", port=args.port, log_level="warning")
        return

    from workers.embedded import free_port

    tmp = Path(tempfile.mkdtemp(prefix="npcmem-bench-"))
    zport, wport = free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1",
           "DATA_DIR": str(tmp), "EMBEDDER": "openai",
           "EMBEDDING_BASE_URL": f"http://127.0.0.1:{zport}/v1", "EMBEDDING_MODEL": "zero",
           "LLM_BACKEND": "openai", "LLM_BASE_URL": f"http://127.0.0.1:{zport}/v1",
           "LLM_MODEL": "zero", "SIMULATE_EVERY_TURNS": "0", "SUMMARIZE_EVERY_TURNS": "0"}
    env.setdefault("API_KEYS", f"bench-{uuid.uuid4().hex}")  # the server requires a key
    env.setdefault("DATABASE_URL", f"sqlite:///{tmp / 'bench.db'}")
    env.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
    os.environ.update(env)
    procs = [subprocess.Popen([sys.executable, __file__, "serve-zero", "--port", str(zport)],
                              env=env, cwd=ROOT)]
    try:
        _wait(f"http://127.0.0.1:{zport}/v1/models")
        from inference.embedding import get_embedder
        from memory.db import migrate, session_scope
        from memory.importers.examples import load_example
        from memory.nearline import get_redis
        from memory.vectors import embed_world_base
        from memory.worlds import import_world

        migrate()
        spec, _script = load_example()
        with session_scope() as s:
            world, _ = import_world(s, spec)
            embed_world_base(s, get_redis(), get_embedder(), world.id)
            world_key = world.key
        npcs = [e.key for e in spec.characters()]
        log = open(tmp / "web.log", "wb")
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "workers.web:app", "--host", "127.0.0.1", "--port",
             str(wport), "--log-level", "warning", "--timeout-keep-alive", "120",
             "--backlog", "4096"], env=env, cwd=ROOT, stdout=log,
            stderr=subprocess.STDOUT))
        _wait(f"http://127.0.0.1:{wport}/healthz")
        print(f"world {world_key}: {len(npcs)} characters; database {env['DATABASE_URL']}; "
              f"redis {env['REDIS_URL']}; {args.turns} turns per session")
        for n in args.sessions:
            out = asyncio.run(_drive(f"http://127.0.0.1:{wport}", world_key, npcs, n, args.turns))
            done = len(out["overhead"])
            total = {k: sum(v) for k, v in out["stages"].items()}
            grand = sum(total.values()) or 1.0
            print(f"\n{n} concurrent sessions: {done} turns ok, {out['errors']} errors, "
                  f"{done / out['wall']:.0f} turns/s")
            for name, vals in (("client round trip", out["rtt"]),
                               ("server hot-path overhead", out["overhead"])):
                if vals:
                    print(f"  {name:26s} p50 {_pct(vals, 50):8.2f} ms  p95 {_pct(vals, 95):8.2f} ms"
                          f"  p99 {_pct(vals, 99):8.2f} ms")
            print("  stage shares of server time: " + ", ".join(
                f"{k} {100 * v / grand:.1f}%" for k, v in total.items()))
    finally:
        for p in reversed(procs):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        try:
            from memory.nearline import get_redis

            get_redis().delete("analysis", "archive", "simulate_world", "note_update")
        except Exception:
            pass


if __name__ == "__main__":
    main()
