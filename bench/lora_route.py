"""What routing an NPC to its archetype adapter adds to a dialogue turn.

Publishes a synthetic 7-adapter chain to Redis (``REDIS_URL``, default
``redis://127.0.0.1:6379/15``), gives a character that archetype, marks its
``dialogue_style`` adapter loaded, then times ``inference.lora.routing.resolve`` for a
dialogue call: on ``vllm`` with the adapter loaded (the steady state: one Lua round trip), an
unregistered archetype (fallback), and on ``llamacpp`` (no Redis at all). Prints p50/p95/p99
in microseconds; the keys it wrote are deleted at the end. A benchmark, not a test.

    python bench/lora_route.py --n 5000
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _pct(xs: list[float], q: float) -> float:
    return statistics.quantiles(xs, n=100)[int(q) - 1] if len(xs) > 1 else xs[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=5000)
    args = ap.parse_args()
    os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:6379/15")
    os.environ.update(GENERATION_BACKEND="vllm", GENERATION_BASE_URL="http://gpu:8000/v1",
                      GENERATION_MODEL="base")

    from inference.lora import registry, routing
    from inference.lora.coordinator import loaded_key, usage_key
    from memory.nearline import get_redis
    from models.archetypes import ADAPTER_TASKS
    from settings import get_settings

    r = get_redis()
    arch, world_id, entry_id = f"bench{uuid.uuid4().hex[:6]}", 10**9, 1
    server = "http://gpu:8000/v1"
    chain = {"name": arch, "server_url": server, "server_id": "", "base_model": "base",
             "services": {}, "adapters": {t: {"name": f"{arch}-{t}-v1", "path": f"/a/{t}",
                                              "rank": 16, "size_mb": 100.0, "base_model": "base",
                                              "version": "1", "trained_on": "", "metrics": {},
                                              "mistral_model": None} for t in ADAPTER_TASKS}}
    registry.publish(r, chain)
    r.hset(registry.archetypes_key(world_id), entry_id, arch)
    r.hset(registry.archetypes_key(world_id), entry_id + 1, "nobody" + arch)
    r.zadd(loaded_key(server), {f"{arch}-dialogue_style-v1": time.time()})
    npc = {"id": entry_id, "world_id": world_id}
    ghost = {"id": entry_id + 1, "world_id": world_id}

    def timed(label: str, fn) -> None:
        fn()
        xs = []
        for _ in range(args.n):
            t0 = time.perf_counter()
            fn()
            xs.append((time.perf_counter() - t0) * 1e6)
        print(f"{label:32s} p50 {_pct(xs, 50):8.1f} us  p95 {_pct(xs, 95):8.1f} us  "
              f"p99 {_pct(xs, 99):8.1f} us")

    try:
        route = routing.resolve(r, "dialogue", npc=npc)
        assert route.adapter == f"{arch}-dialogue_style-v1", route
        timed("vllm, adapter loaded", lambda: routing.resolve(r, "dialogue", npc=npc))
        timed("vllm, unregistered archetype", lambda: routing.resolve(r, "dialogue", npc=ghost))
        os.environ["GENERATION_BACKEND"] = "llamacpp"
        get_settings.cache_clear()
        timed("llamacpp (no adapters)", lambda: routing.resolve(r, "dialogue", npc=npc))
    finally:
        r.delete(registry.chain_key(arch), registry.archetypes_key(world_id), loaded_key(server),
                 usage_key(f"{arch}-dialogue_style-v1"))
        r.srem(registry.CHAINS, arch)


if __name__ == "__main__":
    main()
