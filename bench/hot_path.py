"""Benchmark 7, hot path: the dialogue server's own overhead under 100 and 500 concurrent
sessions (quick: 20), with the zero-latency model and embedding server (``bench.zero``), so
what is measured is the server's work (Level 1 cache check, Redis, index search, ranking,
prompt rendering, recording and enqueueing), not the model.

Starts ``uvicorn workers.web:app`` on the run's Redis and database (``bench.common.Env``),
opens N sessions on the example world and plays ``turns`` turns in each, all sessions
concurrently (asyncio + httpx). Per concurrency level: client round trip and server hot-path
overhead (server time minus the model stage) p50/p95/p99 in ms, turns/s, and each stage's
share of the server time, read from the turn endpoint's ``Server-Timing`` header (context,
embed, retrieve, model, record). Baseline: ``GET /healthz`` round trips of the same server at
the same concurrency (the HTTP and event-loop floor), same run.
"""

from __future__ import annotations

import asyncio
import time

from bench.common import Env, Result, Target, dist


async def _drive(base: str, headers: dict, world: str, npcs: list[str], sessions: int,
                 turns: int, think_s: float = 0.0, seed: int = 0) -> dict:
    """Open ``sessions`` sessions on ``world`` and play ``turns`` turns in each, all sessions
    concurrently. ``think_s``: the player's mean think time between turns (exponential; the
    first turn comes uniformly within one think time), 0 for back-to-back turns (saturation).
    Returns ``{"rtt": [ms], "overhead": [ms], "stages": {stage: [ms]}, "errors": n,
    "wall": s}``; ``overhead`` is the server's time minus the two model calls (``model``:
    generation, ``embed``: the query embedding)."""
    import random

    import httpx

    rng = random.Random(seed)

    limits = httpx.Limits(max_connections=sessions, max_keepalive_connections=sessions)
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
                if think_s:
                    await asyncio.sleep(rng.uniform(0, think_s) if t == 0
                                        else rng.expovariate(1 / think_s))
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
                overhead.append(sum(timing.values()) - timing.get("model", 0.0)
                                - timing.get("embed", 0.0))

        t0 = time.perf_counter()
        await asyncio.gather(*(play(i, sid) for i, sid in enumerate(sids)))
        wall = time.perf_counter() - t0
    return {"rtt": rtt, "overhead": overhead, "stages": stages, "errors": errors, "wall": wall}


async def _floor(base: str, sessions: int, requests: int) -> list[float]:
    """``GET /healthz`` round trips (ms), ``sessions`` concurrent clients."""
    import httpx

    limits = httpx.Limits(max_connections=sessions, max_keepalive_connections=sessions)
    out: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        async def one(_i: int) -> None:
            for _ in range(requests):
                t0 = time.perf_counter()
                try:
                    await client.get("/healthz")
                except httpx.TransportError:  # left out of the floor, like a failed turn
                    continue
                out.append((time.perf_counter() - t0) * 1000)

        await asyncio.gather(*(one(i) for i in range(sessions)))
    return out


def _server_memory(base: str) -> tuple[float, int]:
    """(resident bytes from ``/metrics``, hot-cache entries from ``/healthz``) of the server."""
    import httpx

    text = httpx.get(f"{base}/metrics", timeout=30).text
    rss = next(float(line.split()[-1]) for line in text.splitlines()
               if line.startswith("process_resident_memory_bytes"))
    entries = httpx.get(f"{base}/healthz", timeout=30).json()["hot_cache"]["entries"]
    return rss, entries


def _embedder_ms(queries: int) -> dict:
    """The local MiniLM embedder's own time for one short query (ms, in this process): the
    part of a turn's ``embed`` stage the zero-latency server leaves out."""
    from inference.embedders.minilm import MiniLMEmbedder

    emb = MiniLMEmbedder()
    text = "Tell me about the road north, friend."
    emb.embed([text])
    xs = []
    for i in range(queries):
        t0 = time.perf_counter()
        emb.embed([f"{text} ({i})"])
        xs.append((time.perf_counter() - t0) * 1000)
    return dist(xs, 2)


THINK_S = 20.0
"""A player's mean think time between turns (reading the reply, typing the next line)."""


PROCESSES = (1, 2)
"""Dialogue-server processes compared in a full run (uvicorn ``--workers``, ``WEB_CONCURRENCY``)."""


def _level(url: str, headers: dict, w: dict, n: int, think: float, turns: int,
           processes: int) -> dict:
    """One concurrency level against a running server: its row of the table."""
    out = asyncio.run(_drive(url, headers, w["key"], w["npcs"], n, turns, think_s=think))
    done = len(out["overhead"])
    total = {k: sum(v) for k, v in out["stages"].items()}
    grand = sum(total.values()) or 1.0
    rtt, over = dist(out["rtt"], 2), dist(out["overhead"], 2)
    return {"processes": processes, "sessions": n, "think_s": think, "turns_ok": done,
            "errors": out["errors"], "turns_per_s": round(done / out["wall"], 1),
            "rtt_p50_ms": rtt["p50"], "rtt_p95_ms": rtt["p95"],
            "overhead_p50_ms": over["p50"], "overhead_p95_ms": over["p95"],
            "overhead_p99_ms": over["p99"],
            "stage_share_pct": {k: round(100 * v / grand, 1) for k, v in total.items()},
            # where the tail is: each stage's own p95, next to the overhead's p95
            "stage_p95_ms": {k: dist(v, 2)["p95"] for k, v in out["stages"].items()}}


def run(env: Env, quick: bool) -> Result:
    """Paced: 100 and 500 sessions x 4 turns, each player thinking ``THINK_S`` s on average
    between turns (quick: 20 sessions x 2 turns, 1 s); then saturation: the top level's
    sessions with back-to-back turns (2 each), which gives the server's capacity in turns/s
    and the queueing it causes. A full run repeats the paced levels with each count of
    :data:`PROCESSES` server processes (quick: one), each beside its own ``/healthz``
    baseline at the top concurrency."""
    levels = [(20, 1.0, 2), (20, 0.0, 2)] if quick else [
        (100, THINK_S, 4), (500, THINK_S, 4), (500, 0.0, 2)]
    top_n = max(n for n, _, _ in levels)
    w = env.world()
    rows, base, cache = [], {}, {}
    for procs in (1,) if quick else PROCESSES:
        web = env.web(f"hot-path-web-{procs}", WEB_CONCURRENCY=str(procs))
        try:  # warm-up (imports, connection pools) before the memory baseline
            asyncio.run(_drive(web.url, env.headers(), w["key"], w["npcs"], 5 * procs, 2))
            rss0, entries0 = _server_memory(web.url)
            # the saturation level only with one process: it measures one process's capacity
            for n, think, turns in levels if procs == 1 else [lv for lv in levels if lv[1]]:
                rows.append(_level(web.url, env.headers(), w, n, think, turns, procs))
            if procs == 1:
                rss1, entries1 = _server_memory(web.url)
                grown = entries1 - entries0
                cache = {"entries": grown, "rss_growth_mb": round((rss1 - rss0) / 1e6, 1),
                         "mb_per_10k_npcs": round((rss1 - rss0) / grown * 10_000 / 1e6, 1)
                         if grown else None}
            base[f"healthz_{top_n}_{procs}p"] = dist(asyncio.run(_floor(web.url, top_n, 2)), 2)
        finally:
            web.stop()
    embed = _embedder_ms(50 if quick else 300)
    one = [row for row in rows if row["processes"] == 1]
    paced = [row for row in one if row["think_s"]]
    top, sat = paced[-1], one[-1]
    floor_p50 = base[f"healthz_{top_n}_1p"]["p50"]
    return Result(
        "hot_path", rows, baseline=base,
        ratio=round(sat["rtt_p50_ms"] / floor_p50, 2) if floor_p50 else None,
        targets=[Target(f"overhead p95 ms at {p['sessions']} paced sessions, "
                        f"{p['processes']} process(es)", p["overhead_p95_ms"], "<=", 10.0, "ms")
                 for p in rows if p["think_s"] and p["sessions"] == top["sessions"]],
        params={"levels": [{"sessions": n, "think_s": t, "turns": k} for n, t, k in levels],
                "processes": [1] if quick else list(PROCESSES),
                "hot_cache": cache, "minilm_embed_one_query_ms": embed},
        notes="overhead = server time minus the generation and query-embedding calls "
              "(Server-Timing); stage_p95_ms names the stage behind a tail. The turn's "
              "pipeline tasks are sent by the server's outbox relay after the reply, so "
              "`record` is the Redis write only. ratio = saturated turn round trip p50 (one "
              "process) / GET /healthz round trip p50 at the same concurrency (back-to-back). "
              f"Hot cache: {cache.get('entries')} entries grew the server by "
              f"{cache.get('rss_growth_mb')} MB ({cache.get('mb_per_10k_npcs')} MB per 10k "
              "(session, NPC) entries; an upper bound: all growth of the process is counted). "
              f"Local MiniLM embedder, one query in-process: p50 {embed['p50']} ms, p95 "
              f"{embed['p95']} ms (the zero server embeds during the run). Target: overhead "
              "p95 <= 10 ms at 500 paced sessions. A quick run (20 sessions, one process) "
              "tells a regression of several times from noise, not a 20% one.")
