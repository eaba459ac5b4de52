"""Benchmark 10, LoRA routing: what routing an NPC to its archetype adapter adds to a turn.

Publishes a synthetic 7-adapter chain to the run's Redis, gives a character that archetype,
marks its ``dialogue_style`` adapter loaded, then times ``inference.lora.routing.resolve`` for
a dialogue call: on ``vllm`` with the adapter loaded (the steady state: one Lua round trip),
for an unregistered archetype (the fallback), and on ``llamacpp`` (no Redis at all, the
baseline). In-process, one thread; the keys it wrote are deleted at the end.
"""

from __future__ import annotations

import os
import time
import uuid

from bench.common import Env, Result, dist

SERVER = "http://gpu:8000/v1"


def run(env: Env, quick: bool) -> Result:
    """5,000 resolutions per case (500 quick); figures in microseconds."""
    from inference.lora import registry, routing
    from memory import keys as rkeys
    from memory.nearline import get_redis
    from models.archetypes import ADAPTER_TASKS
    from settings import get_settings

    n = 500 if quick else 5000
    saved = {k: os.environ.get(k) for k in ("GENERATION_BACKEND", "GENERATION_BASE_URL",
                                             "GENERATION_MODEL")}
    r = get_redis()
    arch, world_id, entry_id = f"bench{uuid.uuid4().hex[:6]}", 10**9, 1
    chain = {"name": arch, "server_url": SERVER, "server_id": "", "base_model": "base",
             "services": {}, "adapters": {t: {"name": f"{arch}-{t}-v1", "path": f"/a/{t}",
                                              "rank": 16, "size_mb": 100.0, "base_model": "base",
                                              "version": "1", "trained_on": "", "metrics": {},
                                              "mistral_model": None} for t in ADAPTER_TASKS}}
    npc = {"id": entry_id, "world_id": world_id}
    ghost = {"id": entry_id + 1, "world_id": world_id}

    def backend(name: str) -> None:
        os.environ.update(GENERATION_BACKEND=name, GENERATION_BASE_URL=SERVER,
                          GENERATION_MODEL="base")
        get_settings.cache_clear()

    def timed(case: str, fn) -> dict:
        for _ in range(20):
            fn()
        xs = []
        for _ in range(n):
            t0 = time.perf_counter()
            fn()
            xs.append((time.perf_counter() - t0) * 1e6)
        d = dist(xs, 1)
        return {"case": case, "calls": n, **{f"{k}_us": d[k] for k in ("p50", "p95", "p99")}}

    registry.publish(r, chain)
    r.hset(rkeys.world_archetypes(world_id), mapping={entry_id: arch, entry_id + 1: f"x{arch}"})
    r.zadd(rkeys.lora_loaded(SERVER), {f"{arch}-dialogue_style-v1": time.time()})
    try:
        backend("vllm")
        route = routing.resolve(r, "dialogue", npc=npc)
        if route.adapter != f"{arch}-dialogue_style-v1":
            raise RuntimeError(f"routing did not pick the adapter: {route}")
        rows = [timed("vllm, adapter loaded", lambda: routing.resolve(r, "dialogue", npc=npc)),
                timed("vllm, unregistered archetype",
                      lambda: routing.resolve(r, "dialogue", npc=ghost))]
        backend("llamacpp")
        base = timed("llamacpp (no adapters)", lambda: routing.resolve(r, "dialogue", npc=npc))
        rows.append(base)
    finally:
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
        get_settings.cache_clear()
        r.delete(rkeys.lora_chain(arch), rkeys.world_archetypes(world_id), rkeys.lora_loaded(SERVER),
                 rkeys.lora_usage(f"{arch}-dialogue_style-v1"))
        r.srem(rkeys.LORA_CHAINS, arch)
    return Result(
        "lora_route", rows, baseline={"llamacpp_p50_us": base["p50_us"]},
        ratio=round(rows[0]["p50_us"] / base["p50_us"], 1) if base["p50_us"] else None,
        params={"calls": n, "adapter_tasks": len(ADAPTER_TASKS)},
        notes="ratio = vLLM route p50 / llamacpp route p50 (no Redis); the adapter load itself "
              "(first use on a server) is not included.")
