"""Benchmark 6, retrieval: session-scoped top-10 search (``memory.vector_index.VectorIndex.
search_session``: the session's own documents plus the world's base documents minus those the
session overrides) at 10k and 100k entries, exact and approximate (IVF), against raw FAISS
(``IndexFlatIP``, the same vectors, one query at a time) in the same run. In-process, one
thread. The approximate rows report recall@10 against the exact search of the same index on
the same queries, so their latency is never read without their quality.

Two kinds of vectors: ``clustered`` (unit vectors around 2,000 random centres, cosine about
0.7 to their centre: sentence embeddings of related texts gather like this) and ``uniform``
(independent random unit vectors: no neighbourhood structure at all, the worst case for any
approximate index, where recall is low by nature). The targets are read on the clustered set;
the uniform row says how far it can fall.
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


CENTRES = 2000
SPREAD = 0.052  # per-dimension noise: cosine to the centre 1 / sqrt(1 + 384 * 0.052^2) = 0.7


def _vectors(rng, n: int, kind: str, centres: np.ndarray | None) -> np.ndarray:
    if kind == "uniform":
        return _unit(rng, n)
    noise = rng.normal(0, SPREAD, (n, DIM)).astype(np.float32)
    v = centres[rng.integers(0, len(centres), n)] + noise
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _timed(search, qs) -> tuple[list[float], list[list[int]]]:
    times, results = [], []
    for q in qs:
        t0 = time.perf_counter()
        hits = search(q)
        times.append((time.perf_counter() - t0) * 1000)
        results.append(hits)
    return times, results


def measure(n: int, queries: int, own: int, seed: int = 0, ann=None,
            kind: str = "clustered") -> tuple[list[dict], dict]:
    """Search latencies at ``n`` entries of ``kind`` vectors (``own`` of them also have a
    session document), exact and, when ``ann`` (``AnnParams``) is given, through the IVF
    index. Returns ``(rows, raw)``: one row per mode with p50/p95/p99 in ms (and recall@10 of the approximate mode
    against the exact one), and raw FAISS's latency distribution."""
    import faiss

    from memory.vector_index import AnnParams, VectorIndex, session_scope, world_scope

    rng = np.random.default_rng(seed)
    centres = _unit(rng, CENTRES)
    base = _vectors(rng, n, kind, centres)
    ids = list(range(1, n + 1))
    index = VectorIndex(DIM)
    index.upsert(world_scope(1), ids, base)
    own_ids = ids[:own]
    own_vecs = _vectors(rng, own, kind, centres)
    index.upsert(session_scope("s"), own_ids, own_vecs)
    raw = faiss.IndexFlatIP(DIM)
    raw.add(np.vstack([own_vecs, base[own:]]))
    qs = _vectors(rng, queries, kind, centres)

    def ours(q):
        return [h.lore_entry_id for h in index.search_session(1, "s", q, K)]

    for q in qs[:5]:  # warm-up
        ours(q)
        raw.search(q.reshape(1, DIM), K)
    exact_ms, exact_hits = _timed(ours, qs)
    raw_ms, _ = _timed(lambda q: raw.search(q.reshape(1, DIM), K), qs)
    b = dist(raw_ms)
    rows = [_row("exact", kind, n, own, queries, dist(exact_ms), b)]
    if ann is not None:
        index.ann = AnnParams(min_size=min(ann.min_size, n), nlist=ann.nlist, nprobe=ann.nprobe)
        t0 = time.perf_counter()
        index.build_approximate(world_scope(1))
        build_s = time.perf_counter() - t0
        assert index.approximate(world_scope(1))
        approx_ms, approx_hits = _timed(ours, qs)
        recall = float(np.mean([len(set(a) & set(e)) / max(1, len(e))
                                for a, e in zip(approx_hits, exact_hits)]))
        rows.append({**_row("ivf", kind, n, own, queries, dist(approx_ms), b),
                     "recall_at_10": round(recall, 4), "build_s": round(build_s, 1),
                     "cells": index.ann.cells(n), "nprobe": ann.nprobe})
    return rows, b


def _row(mode: str, kind: str, n: int, own: int, queries: int, d: dict, b: dict) -> dict:
    return {"mode": mode, "vectors": kind, "entries": n, "session_docs": own, "queries": queries,
            **{f"{k}_ms": v for k, v in d.items() if k != "n"},
            "raw_faiss_p50_ms": b["p50"], "raw_faiss_p95_ms": b["p95"],
            "ratio_p50": round(d["p50"] / b["p50"], 2) if b["p50"] else None}


def run(env: Env, quick: bool) -> Result:
    """Clustered vectors: 10k exact, 100k exact and IVF; uniform vectors: 100k exact and IVF
    (1% of entries with a session document); 1,000 queries. Quick: 20k instead of 100k and
    200 queries. The IVF parameters are the configured ``VECTOR_IVF_*`` settings."""
    from memory.vector_index import AnnParams

    queries = 200 if quick else 1000
    ann = AnnParams.from_settings()
    ann = AnnParams(min_size=1, nlist=ann.nlist, nprobe=ann.nprobe)
    rows, bases = [], {}
    large = 20_000 if quick else 100_000  # quick: a smoke run, the build costs seconds
    for n, kind, with_ann in ((10_000, "clustered", False), (large, "clustered", True),
                              (large, "uniform", True)):
        measured, base = measure(n, queries, own=max(10, n // 100), kind=kind,
                                 ann=ann if with_ann else None)
        rows.extend(measured)
        bases[f"raw_faiss_{kind}_{n}"] = {k: base[k] for k in ("p50", "p95", "p99")}
    exact10, _exact100, ivf100, _uniform, ivf_uniform = rows
    return Result(
        "retrieval", rows, baseline=bases, ratio=ivf100["ratio_p50"],
        targets=[Target("p95 ms at 10k (exact)", exact10["p95_ms"], "<=", 2.0, "ms"),
                 Target(f"p95 ms at {large // 1000}k (ivf)", ivf100["p95_ms"], "<=", 15.0, "ms"),
                 Target(f"recall@10 at {large // 1000}k (ivf vs exact)", ivf100["recall_at_10"],
                        ">=", 0.95, "")],
        params={"k": K, "dim": DIM, "queries": queries, "nprobe": ann.nprobe,
                "index": "IndexIDMap2(IndexFlatIP); large world scopes also IndexIVFFlat"},
        notes=(f"ratio = IVF p50 / raw exact FAISS p50 at {large // 1000}k clustered. "
               f"Uniform random vectors (no structure, the worst case): IVF recall@10 "
               f"{ivf_uniform['recall_at_10']}. A quick run (20k, 200 queries) is a smoke test: "
               f"it shows a broken index or a regression of several times, not the targets, "
               f"which are for 100k."))
