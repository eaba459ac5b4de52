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

from bench.common import Env, Result, dist


async def _drive(base: str, headers: dict, world: str, npcs: list[str], sessions: int,
                 turns: int) -> dict:
    """Open ``sessions`` sessions on ``world`` and play ``turns`` turns in each, all sessions
    concurrently; returns ``{"rtt": [ms], "overhead": [ms], "stages": {stage: [ms]},
    "errors": n, "wall": s}``."""
    import httpx

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


async def _floor(base: str, sessions: int, requests: int) -> list[float]:
    """``GET /healthz`` round trips (ms), ``sessions`` concurrent clients."""
    import httpx

    limits = httpx.Limits(max_connections=sessions, max_keepalive_connections=sessions)
    out: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=120, limits=limits) as client:
        async def one(_i: int) -> None:
            for _ in range(requests):
                t0 = time.perf_counter()
                await client.get("/healthz")
                out.append((time.perf_counter() - t0) * 1000)

        await asyncio.gather(*(one(i) for i in range(sessions)))
    return out


def run(env: Env, quick: bool) -> Result:
    """100 and 500 sessions x 5 turns (quick: 20 sessions x 2 turns)."""
    levels, turns = ([20], 2) if quick else ([100, 500], 5)
    w = env.world()
    web = env.web("hot-path-web")
    rows, base = [], {}
    try:
        for n in levels:
            out = asyncio.run(_drive(web.url, env.headers(), w["key"], w["npcs"], n, turns))
            floor = asyncio.run(_floor(web.url, n, turns))
            done = len(out["overhead"])
            total = {k: sum(v) for k, v in out["stages"].items()}
            grand = sum(total.values()) or 1.0
            rtt, over = dist(out["rtt"], 2), dist(out["overhead"], 2)
            rows.append({"sessions": n, "turns_ok": done, "errors": out["errors"],
                         "turns_per_s": round(done / out["wall"], 1),
                         "rtt_p50_ms": rtt["p50"], "rtt_p95_ms": rtt["p95"], "rtt_p99_ms": rtt["p99"],
                         "overhead_p50_ms": over["p50"], "overhead_p95_ms": over["p95"],
                         "overhead_p99_ms": over["p99"],
                         "stage_share_pct": {k: round(100 * v / grand, 1) for k, v in total.items()}})
            base[f"healthz_{n}"] = dist(floor, 2)
    finally:
        web.stop()
    top = rows[-1]
    floor_p50 = base[f"healthz_{top['sessions']}"]["p50"]
    return Result(
        "hot_path", rows, baseline=base,
        ratio=round(top["rtt_p50_ms"] / floor_p50, 2) if floor_p50 else None,
        targets=[],  # the memory-tiers issue states no number; the figures are reported
        params={"turns_per_session": turns, "levels": levels},
        notes="ratio = turn round trip p50 / GET /healthz round trip p50 at the top concurrency.")
