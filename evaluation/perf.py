"""Performance measurements: latency percentiles and the dialogue server's resident memory.

Memory is read from the server's ``GET /metrics`` (Prometheus ``process_resident_memory_bytes``
of the process serving the API, ``workers/metrics.py``), so it works against a remote server.
"""

from __future__ import annotations

import re

import httpx
import numpy as np

_RSS = re.compile(r"^process_resident_memory_bytes\s+([0-9.eE+]+)\s*$", re.M)


def percentile(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100, linear interpolation) of ``values``; None if empty."""
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=float), q))


def latency_metrics(latencies_ms: list[float], errors: int, wall_s: float | None = None) -> dict:
    """``{p50_latency_ms, p95_latency_ms, error_rate, requests, errors[, throughput_rps]}``
    from the latencies (ms) of the successful requests, the failed count and, when given, the
    wall time in seconds (throughput = successful requests / wall time)."""
    n = len(latencies_ms) + errors
    out = {"requests": n, "errors": errors,
           "p50_latency_ms": percentile(latencies_ms, 50),
           "p95_latency_ms": percentile(latencies_ms, 95),
           "error_rate": errors / n if n else None}
    if wall_s is not None:
        out["throughput_rps"] = len(latencies_ms) / wall_s if wall_s > 0 else None
    return out


def parse_rss_mb(metrics_text: str) -> float | None:
    """``process_resident_memory_bytes`` from Prometheus text, in MB (10^6 bytes); None if
    absent (not Linux, or not this project's server)."""
    m = _RSS.search(metrics_text)
    return float(m.group(1)) / 1e6 if m else None


def server_rss_mb(base_url: str, api_key: str | None = None, timeout: float = 10.0) -> float | None:
    """Resident memory of the dialogue server process, MB, from its ``/metrics``; None when
    the endpoint is unreachable or does not report it (never raises)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        res = httpx.get(f"{base_url.rstrip('/')}/metrics", headers=headers, timeout=timeout)
        return parse_rss_mb(res.text) if res.status_code == 200 else None
    except httpx.HTTPError:
        return None


async def server_rss_mb_async(client: httpx.AsyncClient) -> float | None:
    """:func:`server_rss_mb` over an existing async client (its base URL and headers)."""
    try:
        res = await client.get("/metrics", timeout=10.0)
        return parse_rss_mb(res.text) if res.status_code == 200 else None
    except httpx.HTTPError:
        return None
