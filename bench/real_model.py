"""Benchmark 8, real model, embedded default: local llama.cpp servers with SmolLM2-135M
(``workers.embedded.llm_argv``, one thread each, as the embedded stack starts them on 2 cores)
and the local MiniLM embedder (``EMBEDDER=minilm``), one dialogue server, one ``worker``
(analysis, note_update, -c 1) and one ``embedder`` (embed, -c 1). Two layouts in the same run:
``split`` (the dialogue has its own model server: the embedded default on 4+ cores) and
``shared`` (one server, the default on fewer cores,
pipeline calls yielding to dialogue calls, ``inference.priority``).

Two sessions play turns concurrently (20 turns in all; quick: 2 turns, one session). Reported: turns per minute,
dialogue latency p50/p95 (client round trip), and the pipeline behind the dialogue: the model
server is serial, so analysis and note rewrites queue up behind the dialogue's generations;
queue depths are sampled every 0.5 s from the first turn until the pipeline drains (or the
drain limit passes), giving the peak depth per queue and the lag (last turn -> drained).
Baseline: the same model server answering a bare chat completion of the same length
(``max_tokens`` 80), same run.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time

import httpx

from bench.common import Env, Result, Target, dist

QUEUES = ("analysis", "note_update", "embed")
ALIAS = "smollm2-135m-instruct"


def _depths(env: Env) -> dict[str, int]:
    r = env.r()
    pipe = r.pipeline(transaction=False)
    for q in QUEUES:
        pipe.llen(q)
    pipe.hlen("unacked")
    vals = pipe.execute()
    return {**dict(zip(QUEUES, vals[:-1])), "reserved": vals[-1]}


def _raw_model(url: str, n: int) -> list[float]:
    out = []
    for i in range(n):
        t0 = time.perf_counter()
        httpx.post(f"{url}/chat/completions", timeout=120, json={
            "model": ALIAS, "max_tokens": 80, "temperature": 0.7,
            "messages": [{"role": "user", "content": f"Tell me about the road north ({i})."}]})
        out.append((time.perf_counter() - t0) * 1000)
    return out


async def _play(base: str, headers: dict, world: str, npcs: list[str], sessions: int,
                turns: int) -> tuple[list[float], int, float]:
    async with httpx.AsyncClient(base_url=base, timeout=300, headers=headers) as client:
        sids = []
        for _ in range(sessions):
            res = await client.post("/v1/sessions", json={"world": world})
            res.raise_for_status()
            sids.append(res.json()["session_id"])
        lat: list[float] = []
        errors = 0

        async def play(i: int, sid: str) -> None:
            nonlocal errors
            for t in range(turns):
                t0 = time.perf_counter()
                res = await client.post(f"/v1/sessions/{sid}/turns", json={
                    "npc_id": npcs[(i + t) % len(npcs)],
                    "player_text": f"Have you heard anything about the old lighthouse? ({t})"})
                if res.status_code == 200:
                    lat.append((time.perf_counter() - t0) * 1000)
                else:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(play(i, s) for i, s in enumerate(sids)))
        return lat, errors, time.perf_counter() - t0


def _start_llm(env: Env, name: str) -> tuple[subprocess.Popen, str]:
    from workers.embedded import free_port, llm_argv

    port = free_port()
    log = open(env.tmp / f"{name}.log", "wb")
    # one thread each, the embedded stack's rule on 2 cores (workers.embedded.llm_threads)
    proc = subprocess.Popen(llm_argv(port, ALIAS, 2048, 1), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    log.close()
    return proc, f"http://127.0.0.1:{port}/v1"


def _stop(proc: subprocess.Popen) -> None:
    from workers.embedded import stop_process

    stop_process(proc)


def _config(env: Env, layout: str, sessions: int, turns: int, drain_s: float) -> dict:
    """Play the turns with the pipeline busy on one model-server layout: ``split`` (a
    llama.cpp server for the dialogue, another for the pipeline) or ``shared`` (one server
    for both, pipeline calls yielding to dialogue calls)."""
    from workers.embedded import wait_http

    servers = [_start_llm(env, f"llm-{layout}")]
    if layout == "split":
        servers.append(_start_llm(env, f"llm-{layout}-dialogue"))
    llm_url, gen_url = servers[0][1], servers[-1][1]
    procs = []
    model_env = {"LLM_BACKEND": "llamacpp", "LLM_BASE_URL": llm_url, "LLM_MODEL": ALIAS,
                 "GENERATION_BASE_URL": gen_url, "DIALOGUE_PRIORITY": "auto",
                 "GENERATION_MODEL": "", "ANALYSIS_MODEL": "", "MAINTENANCE_MODEL": "",
                 "EMBEDDER": "minilm", "LLM_MAX_RETRIES": "2"}
    try:
        for _proc, url in servers:
            wait_http(f"{url}/models", 180)
        w = env.world()
        env.reset_queues()
        procs.append(env.web(f"real-web-{layout}", **model_env))
        procs.append(env.worker(f"real-worker-{layout}", "analysis,note_update", 1, "prefork",
                                **model_env))
        procs.append(env.worker(f"real-embedder-{layout}", "embed", 1, "prefork", **model_env))
        samples: list[tuple[float, dict]] = []
        stop = threading.Event()
        t_start = time.monotonic()

        def sample() -> None:
            while not stop.is_set():
                samples.append((round(time.monotonic() - t_start, 1), _depths(env)))
                stop.wait(0.5)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        lat, errors, wall = asyncio.run(_play(procs[0].url, env.headers(), w["key"], w["npcs"],
                                              sessions, turns))
        t_last = time.monotonic()
        done = env.wait_drained(drain_s, queues=QUEUES, poll=0.25)
        stop.set()
        th.join(2)
    finally:
        for p in reversed(procs):
            p.stop()
        for proc, _url in servers:
            _stop(proc)
    d = dist(lat, 1)
    peak = {q: max((s[q] for _, s in samples), default=0) for q in (*QUEUES, "reserved")}
    at_last = min(samples, key=lambda s: abs(s[0] - (t_last - t_start)))[1] if samples else {}
    step = max(1, len(samples) // 60)
    return {"layout": layout, "turns_ok": len(lat), "errors": errors,
            "turns_per_min": round(len(lat) / wall * 60, 1) if wall else 0.0,
            "latency_p50_ms": d["p50"], "latency_p95_ms": d["p95"],
            "queued_at_last_turn": sum(v for k, v in at_last.items() if k != "reserved"),
            "peak_depth": peak,
            "lag_after_last_turn_s": round(done - t_last, 1) if done else None,
            "queued_at_end": sum(v for k, v in samples[-1][1].items() if k != "reserved")
            if samples else None,
            "drained": done is not None,
            "queue_depths": [{"t_s": t, **s} for t, s in samples[::step]]}


def run(env: Env, quick: bool) -> Result:
    """20 turns over 2 sessions per layout, drain limit 300 s (quick: 2 turns in 1 session,
    30 s); layouts ``split`` (the embedded default) and ``shared``; the baseline is a bare
    completion on an idle server of the same kind, measured first."""
    sessions, turns, drain_s = (1, 2, 30) if quick else (2, 10, 300)
    proc, url = _start_llm(env, "llm-baseline")
    try:
        from workers.embedded import wait_http

        wait_http(f"{url}/models", 180)
        raw = _raw_model(url, 2 if quick else 8)
    finally:
        _stop(proc)
    rows = [_config(env, layout, sessions, turns, drain_s) for layout in ("split", "shared")]
    b = dist(raw, 1)
    depths = {r["layout"]: r.pop("queue_depths") for r in rows}
    split = rows[0]
    return Result(
        "real_model", rows, baseline={"raw_model_ms": b},
        ratio=round(split["latency_p95_ms"] / b["p95"], 2) if b["p95"] else None,
        targets=[Target("split dialogue p95 / bare completion p95",
                        round(split["latency_p95_ms"] / b["p95"], 2) if b["p95"] else None,
                        "<=", 1.5)],
        params={"sessions": sessions, "turns_per_session": turns, "model": ALIAS,
                "embedder": "minilm", "drain_limit_s": drain_s, "queue_depths": depths},
        notes="ratio = dialogue p95 of the split layout / a bare "
              "80-token completion p95 on an idle server, same run (target <= 1.5); "
              "shared = one server, pipeline calls yielding to dialogue calls "
              "(inference.priority); lag None = not drained within the limit.")
