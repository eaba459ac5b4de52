"""Benchmark 6, retrieval: session-scoped top-10 search (``memory.vector_index.VectorIndex.
search_session``: the session's own documents plus the world's base documents minus those the
session overrides) at 10k and 100k entries, against raw FAISS (``IndexFlatIP``, the same
vectors, one query at a time) in the same run. In-process, one thread.
"""

from __future__ import annotations

import time

import numpy as np

from bench.common import Env, Result, Target, dist

DIM = 384
K = 10


def _unit(rng, n: int) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def measure(n: int, queries: int, own: int, seed: int = 0) -> tuple[dict, dict]:
    """Search latencies at ``n`` entries: ``own`` of them also have a session document.
    Returns ``(row, raw_row)`` with p50/p95/p99 in ms."""
    import faiss

    from memory.vector_index import VectorIndex, session_scope, world_scope

    rng = np.random.default_rng(seed)
    base = _unit(rng, n)
    ids = list(range(1, n + 1))
    index = VectorIndex(DIM)
    index.upsert(world_scope(1), ids, base)
    own_ids = ids[:own]
    own_vecs = _unit(rng, own)
    index.upsert(session_scope("s"), own_ids, own_vecs)
    raw = faiss.IndexFlatIP(DIM)
    raw.add(np.vstack([own_vecs, base[own:]]))
    qs = _unit(rng, queries)
    ours, theirs = [], []
    for q in qs[:5]:  # warm-up
        index.search_session(1, "s", q, K)
        raw.search(q.reshape(1, DIM), K)
    for q in qs:
        t0 = time.perf_counter()
        index.search_session(1, "s", q, K)
        t1 = time.perf_counter()
        raw.search(q.reshape(1, DIM), K)
        t2 = time.perf_counter()
        ours.append((t1 - t0) * 1000)
        theirs.append((t2 - t1) * 1000)
    d, b = dist(ours), dist(theirs)
    row = {"entries": n, "session_docs": own, "queries": queries,
           **{f"{k}_ms": v for k, v in d.items() if k != "n"},
           "raw_faiss_p50_ms": b["p50"], "raw_faiss_p95_ms": b["p95"],
           "ratio_p50": round(d["p50"] / b["p50"], 2) if b["p50"] else None}
    return row, b


def run(env: Env, quick: bool) -> Result:
    """10k and 100k entries (1% with a session document), 1,000 queries (200 quick)."""
    queries = 200 if quick else 1000
    rows, bases = [], {}
    for n in (10_000, 100_000):
        row, base = measure(n, queries, own=max(10, n // 100))
        rows.append(row)
        bases[f"raw_faiss_{n}"] = {k: base[k] for k in ("p50", "p95", "p99")}
    return Result(
        "retrieval", rows, baseline=bases, ratio=rows[-1]["ratio_p50"],
        targets=[Target("p95 ms at 10k", rows[0]["p95_ms"], "<=", 2.0, "ms"),
                 Target("p95 ms at 100k", rows[1]["p95_ms"], "<=", 15.0, "ms")],
        params={"k": K, "dim": DIM, "queries": queries, "index": "IndexIDMap2(IndexFlatIP)"},
        notes="ratio = our p50 / raw FAISS p50 at 100k (two scoped searches + exclusion).")
