"""Benchmark 8, real model, embedded default: local llama.cpp servers with SmolLM2-135M
started as the embedded stack starts them (``workers.embedded.llm_argv``: prompt cache
``LLM_PROMPT_CACHE_MB``, threads ``workers.embedded.llm_threads``) and the local MiniLM
embedder (``EMBEDDER=minilm``), one dialogue server, one ``worker`` (analysis, note_update,
-c 1) and one ``embedder`` (embed, -c 1), with the embedded stack's dialogue settings
(``workers.stack.EMBEDDED_DIALOGUE_DEFAULTS`` where the environment does not set them).

Layouts (``--layouts``, default both, the embedded default of this machine first):
``split`` (the dialogue has its own model server: the embedded default on 4+ cores) and
``shared`` (one server, the default on fewer cores, pipeline calls yielding to dialogue calls,
``inference.priority``).

Per layout: first the baseline, a bare streamed chat completion of the same length
(``max_tokens`` = ``DIALOGUE_MAX_TOKENS``) on the layout's idle dialogue model server; then
two sessions play turns concurrently (20 turns in all; quick: 2 turns, one session), each
talking to one NPC for ``TURNS_PER_NPC`` turns in a row, then to the next, each turn streamed
(``"stream": true``). Reported per layout (a row): turns per minute, dialogue latency p50/p95
(client: request to the ``done`` event), time to first token p50/p95 (client: request to the
first ``token`` event), the bare completion's p95 and the ratio, the share of prompt tokens
the dialogue's model server reused instead of evaluating (from its log,
:func:`prompt_cache_use`; on ``shared`` the pipeline's calls count too), and the pipeline's
lag behind the dialogue (last turn -> drained, queue depths sampled every 0.5 s until the
pipeline drains or the drain limit passes). ``params.detail`` holds per layout the server's
own TTFT (model call to first token, from ``done``), the full distributions, the prompt
token counts, peak queue depths and the sampled depths.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx

from bench.common import Env, Result, Target, dist

QUEUES = ("analysis", "note_update", "embed")
ALIAS = "smollm2-135m-instruct"
LAYOUTS = ("split", "shared")
OPTIONS = ("layouts",)
TURNS_PER_NPC = 5
"""A player talks to one NPC for this many turns in a row, then to the next."""

_PREFIX_HIT = re.compile(r"Llama\.generate: (\d+) prefix-match hit, remaining (\d+) prompt tokens")


def _depths(env: Env) -> dict[str, int]:
    r = env.r()
    pipe = r.pipeline(transaction=False)
    for q in QUEUES:
        pipe.llen(q)
    pipe.hlen("unacked")
    vals = pipe.execute()
    return {**dict(zip(QUEUES, vals[:-1])), "reserved": vals[-1]}


def _bare_completions(url: str, n: int, max_tokens: int) -> tuple[list[float], list[float]]:
    """``n`` bare streamed chat completions after one unmeasured warm-up call (the server's
    first call pages the model in): (latency ms, time to first token ms)."""
    lat, ttft = [], []
    for i in range(-1, n):
        t0 = time.perf_counter()
        first = None
        with httpx.stream("POST", f"{url}/chat/completions", timeout=120, json={
                "model": ALIAS, "max_tokens": max_tokens, "temperature": 0.7, "stream": True,
                "messages": [{"role": "user",
                              "content": f"Tell me about the road north ({i})."}]}) as res:
            for line in res.iter_lines():
                if first is None and line.startswith("data:") and '"content"' in line:
                    first = time.perf_counter()
        end = time.perf_counter()
        if i >= 0:
            lat.append((end - t0) * 1000)
            ttft.append(((first or end) - t0) * 1000)
    return lat, ttft


async def _turn(client: httpx.AsyncClient, sid: str, body: dict) -> dict | None:
    """One streamed turn: ``{"latency_ms", "ttft_ms", "server_ttft_ms"}``, None on failure."""
    t0 = time.perf_counter()
    first = None
    event, done = "", None
    async with client.stream("POST", f"/v1/sessions/{sid}/turns",
                             json={**body, "stream": True}) as res:
        if res.status_code != 200:
            await res.aread()
            return None
        async for line in res.aiter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                if event == "token" and first is None:
                    first = time.perf_counter()
                elif event == "done":
                    done = json.loads(line[5:])
                elif event == "error":
                    return None
    if done is None:
        return None
    end = time.perf_counter()
    return {"latency_ms": (end - t0) * 1000, "ttft_ms": ((first or end) - t0) * 1000,
            "server_ttft_ms": done.get("ttft_ms")}


async def _play(base: str, headers: dict, world: str, npcs: list[str], sessions: int,
                turns: int) -> tuple[list[dict], int, float]:
    async with httpx.AsyncClient(base_url=base, timeout=300, headers=headers) as client:
        sids = []
        for _ in range(sessions):
            res = await client.post("/v1/sessions", json={"world": world})
            res.raise_for_status()
            sids.append(res.json()["session_id"])
        out: list[dict] = []
        errors = 0

        async def play(i: int, sid: str) -> None:
            nonlocal errors
            for t in range(turns):
                got = await _turn(client, sid, {
                    "npc_id": npcs[(i + t // TURNS_PER_NPC) % len(npcs)],
                    "player_text": f"Have you heard anything about the old lighthouse? ({t})"})
                if got is None:
                    errors += 1
                else:
                    out.append(got)

        t0 = time.perf_counter()
        await asyncio.gather(*(play(i, s) for i, s in enumerate(sids)))
        return out, errors, time.perf_counter() - t0


def _start_llm(env: Env, name: str, threads: int) -> tuple[subprocess.Popen, str, Path]:
    from workers.embedded import free_port, llm_argv

    port = free_port()
    path = env.tmp / f"{name}.log"
    log = open(path, "wb")
    proc = subprocess.Popen(llm_argv(port, ALIAS, 2048, threads), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    return proc, f"http://127.0.0.1:{port}/v1", path


def _stop(proc: subprocess.Popen) -> None:
    from workers.embedded import stop_process

    stop_process(proc)


def prompt_cache_use(log_text: str) -> dict:
    """Prompt reuse of a llama.cpp server from its log: llama-cpp-python prints one line per
    call that starts from a matching prefix, whether the prefix was already in its context
    or restored from the prompt cache. Every chat prompt starts with the chat template's
    first tokens, so in practice every call but a server's first prints one, and the sums
    are the prompt tokens of those calls: ``{"prefix_hits", "tokens_reused",
    "tokens_evaluated_after_hit"}``."""
    hits = [(int(a), int(b)) for a, b in _PREFIX_HIT.findall(log_text)]
    return {"prefix_hits": len(hits), "tokens_reused": sum(a for a, _ in hits),
            "tokens_evaluated_after_hit": sum(b for _, b in hits)}


def _dialogue_env() -> dict[str, str]:
    from workers.stack import embedded_dialogue_env

    return embedded_dialogue_env()


def _config(env: Env, layout: str, sessions: int, turns: int, drain_s: float,
            baseline_n: int) -> dict:
    """Measure the baseline, then play the turns with the pipeline busy on one model-server
    layout: ``split`` (a llama.cpp server for the dialogue, another for the pipeline) or
    ``shared`` (one server for both, pipeline calls yielding to dialogue calls)."""
    from settings import environment
    from workers.embedded import llm_threads, wait_http

    dialogue_env = _dialogue_env()
    with environment(dialogue_env):
        from settings import get_settings

        max_tokens = get_settings().dialogue_max_tokens
    n_servers = 2 if layout == "split" else 1
    threads = int(os.environ.get("LLM_THREADS") or 0) or llm_threads(n_servers)
    servers = [_start_llm(env, f"llm-{layout}", threads)]
    if layout == "split":
        servers.append(_start_llm(env, f"llm-{layout}-dialogue", threads))
    llm_url, gen_url, gen_log = servers[0][1], servers[-1][1], servers[-1][2]
    procs = []
    model_env = {"LLM_BACKEND": "llamacpp", "LLM_BASE_URL": llm_url, "LLM_MODEL": ALIAS,
                 "GENERATION_BASE_URL": gen_url, "DIALOGUE_PRIORITY": "auto",
                 "GENERATION_MODEL": "", "ANALYSIS_MODEL": "", "MAINTENANCE_MODEL": "",
                 "EMBEDDER": "minilm", "LLM_MAX_RETRIES": "2", **dialogue_env}
    try:
        for _proc, url, _log in servers:
            wait_http(f"{url}/models", 180)
        base_lat, base_ttft = _bare_completions(gen_url, baseline_n, max_tokens)
        log_mark = len(gen_log.read_text(errors="replace"))
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
        played, errors, wall = asyncio.run(_play(procs[0].url, env.headers(), w["key"],
                                                 w["npcs"], sessions, turns))
        t_last = time.monotonic()
        done = env.wait_drained(drain_s, queues=QUEUES, poll=0.25)
        stop.set()
        th.join(2)
        cache = prompt_cache_use(gen_log.read_text(errors="replace")[log_mark:])
    finally:
        for p in reversed(procs):
            p.stop()
        for proc, _url, _log in servers:
            _stop(proc)
    d = dist([p["latency_ms"] for p in played], 1)
    tt = dist([p["ttft_ms"] for p in played], 1)
    st = dist([p["server_ttft_ms"] for p in played if p["server_ttft_ms"] is not None], 1)
    b, bt = dist(base_lat, 1), dist(base_ttft, 1)
    peak = {q: max((s[q] for _, s in samples), default=0) for q in (*QUEUES, "reserved")}
    at_last = min(samples, key=lambda s: abs(s[0] - (t_last - t_start)))[1] if samples else {}
    step = max(1, len(samples) // 60)
    seen = cache["tokens_reused"] + cache["tokens_evaluated_after_hit"]
    row = {"layout": layout, "turns_ok": len(played), "errors": errors,
           "turns_per_min": round(len(played) / wall * 60, 1) if wall else 0.0,
           "latency_p50_ms": d["p50"], "latency_p95_ms": d["p95"],
           "ttft_p50_ms": tt["p50"], "ttft_p95_ms": tt["p95"], "bare_p95_ms": b["p95"],
           "ratio_p95": round(d["p95"] / b["p95"], 2) if b["p95"] else None,
           "prompt_reused": round(cache["tokens_reused"] / seen, 2) if seen else None,
           "lag_after_last_turn_s": round(done - t_last, 1) if done else None,
           "drained": done is not None}
    detail = {"llm_threads": threads, "server_ttft_ms": st, "bare_ms": b, "bare_ttft_ms": bt,
              "latency_ms": d, "ttft_ms": tt, "model_server_prompt": cache,
              "queued_at_last_turn": sum(v for k, v in at_last.items() if k != "reserved"),
              "peak_depth": peak,
              "queued_at_end": sum(v for k, v in samples[-1][1].items() if k != "reserved")
              if samples else None,
              "queue_depths": [{"t_s": t, **s} for t, s in samples[::step]],
              "dialogue_settings": {k: model_env[k] for k in sorted(dialogue_env)}}
    return row, detail


def default_layout() -> str:
    """The layout the embedded stack uses on this machine (``SPLIT_LLM``, else
    ``workers.embedded.split_dialogue_server``)."""
    from settings import get_settings
    from workers.embedded import split_dialogue_server

    split = get_settings().split_llm
    return "split" if (split if split is not None else split_dialogue_server()) else "shared"


def parse_layouts(value: str | None) -> list[str]:
    """``--layouts``: comma-separated ``split``/``shared``; empty: both, the embedded default
    of this machine first.

    Raises:
        ValueError: an unknown layout name.
    """
    names = [n.strip() for n in (value or "").split(",") if n.strip()]
    unknown = [n for n in names if n not in LAYOUTS]
    if unknown:
        raise ValueError(f"unknown layout(s) {', '.join(unknown)}; choose from {', '.join(LAYOUTS)}")
    if not names:
        first = default_layout()
        names = [first, *(n for n in LAYOUTS if n != first)]
    return list(dict.fromkeys(names))


def run(env: Env, quick: bool, layouts: str | None = None) -> Result:
    """20 turns over 2 sessions per layout, drain limit 300 s, 8 baseline completions (quick:
    2 turns in 1 session, 30 s, 2 completions). Targets on the embedded default layout of
    this machine (else the first one run): dialogue p95 <= 1.5x the bare completion p95 of
    the same run, time to first token p95 <= 500 ms."""
    sessions, turns, drain_s, baseline_n = (1, 2, 30, 2) if quick else (2, 10, 300, 8)
    names = parse_layouts(layouts)
    measured = [_config(env, layout, sessions, turns, drain_s, baseline_n) for layout in names]
    rows = [row for row, _ in measured]
    detail = {row["layout"]: d for row, d in measured}
    main = next((r for r in rows if r["layout"] == default_layout()), rows[0])
    main_detail = detail[main["layout"]]
    return Result(
        "real_model", rows,
        baseline={"layout": main["layout"], "bare_p50_ms": main_detail["bare_ms"]["p50"],
                  "bare_p95_ms": main["bare_p95_ms"],
                  "bare_ttft_p95_ms": main_detail["bare_ttft_ms"]["p95"]},
        ratio=main["ratio_p95"],
        targets=[Target(f"{main['layout']} dialogue p95 / bare completion p95",
                        main["ratio_p95"], "<=", 1.5),
                 Target(f"{main['layout']} time to first token p95", main["ttft_p95_ms"],
                        "<=", 500, "ms")],
        params={"sessions": sessions, "turns_per_session": turns,
                "turns_per_npc": TURNS_PER_NPC, "model": ALIAS, "embedder": "minilm",
                "drain_limit_s": drain_s, "baseline_completions": baseline_n,
                "layouts": names, "default_layout": default_layout(),
                "dialogue_settings": main_detail["dialogue_settings"], "detail": detail},
        notes="every turn streamed, a player talks to one NPC for "
              f"{TURNS_PER_NPC} turns in a row; latency = request to the done event, ttft = "
              "request to the first token event (client; the server's own TTFT, model call "
              "to first token, is in params.detail); bare = a streamed chat completion of "
              "DIALOGUE_MAX_TOKENS tokens on the layout's idle dialogue model server, same "
              "run; ratio_p95 = latency p95 / bare p95 (target <= 1.5 on the embedded "
              "default layout, TTFT p95 <= 500 ms); prompt_reused = share of the prompt "
              "tokens the dialogue's model server took from its context or prompt cache "
              "instead of evaluating (shared: pipeline calls included; counts in "
              "params.detail); lag None = not drained within the limit.")
