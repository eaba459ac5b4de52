"""Zero-latency OpenAI-compatible model and embedding server for the benchmarks, so what they
time is the project's own work, not a model.

    python -m bench.zero --port 9001

Routes (OpenAI wire format):

- ``POST /v1/embeddings``: a deterministic 384-d unit vector per input (sha256-seeded).
- ``POST /v1/chat/completions``: with ``response_format`` of schema name ``analysis`` (or an
  ``analysis`` schema under ``json_object``), a valid analysis answer naming one or two
  entries of the schema's ``lore_entry_id`` enum (picked by a hash of the prompt, so updates
  spread over the world's entries); with any other ``response_format``, a valid new lore
  entry; otherwise a fixed line of text (a dialogue reply or a rewritten note).
- ``GET /stats``: chat calls counted per requested ``model`` name (the benchmarks give each
  role its own model name: ``zero-generation``, ``zero-analysis``, ``zero-maintenance``);
  ``POST /stats/reset`` zeroes them.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import time

DIM = 384
UPDATES_PER_TURN = 2


def _vec(text: str) -> list[float]:
    import numpy as np

    seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
    v = np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)
    return (v / np.linalg.norm(v)).tolist()


def _enum(node, prop: str) -> list[str]:
    """The ``enum`` of the first property called ``prop`` anywhere in a JSON schema."""
    if isinstance(node, dict):
        props = node.get("properties") or {}
        if prop in props and "enum" in props[prop]:
            return list(props[prop]["enum"])
        for v in node.values():
            found = _enum(v, prop)
            if found:
                return found
    elif isinstance(node, list):
        for v in node:
            found = _enum(v, prop)
            if found:
                return found
    return []


def _analysis(body: dict, schema: dict) -> dict:
    keys = _enum(schema, "lore_entry_id") or ["unknown"]
    h = int.from_bytes(hashlib.sha256(json.dumps(body["messages"]).encode()).digest()[:8], "little")
    picks = []
    for i in range(min(UPDATES_PER_TURN, len(keys))):
        k = keys[(h + i * 7919) % len(keys)]
        if k not in picks:
            picks.append(k)
    return {"updates": [{"lore_entry_id": k, "update_summary": f"The player asked about {k} "
                         f"and heard news number {h % 1000}"} for k in picks],
            "creations": []}


def zero_app():
    """The FastAPI app (see the module docstring)."""
    from fastapi import FastAPI

    app = FastAPI()
    calls: collections.Counter = collections.Counter()

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": "zero", "object": "model"}]}

    @app.get("/stats")
    def stats():
        return dict(calls)

    @app.post("/stats/reset")
    def reset():
        calls.clear()
        return {}

    @app.post("/v1/embeddings")
    def embeddings(body: dict):
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        calls["embeddings"] += 1
        return {"object": "list", "model": "zero", "usage": {"prompt_tokens": 1, "total_tokens": 1},
                "data": [{"object": "embedding", "index": i, "embedding": _vec(t)}
                         for i, t in enumerate(texts)]}

    @app.post("/v1/chat/completions")
    def chat(body: dict):
        calls[body.get("model", "zero")] += 1
        fmt = body.get("response_format") or {}
        content = "Aye, that I can. The road north is quiet these days."
        if fmt:
            js = fmt.get("json_schema") or {}
            schema = js.get("schema") or fmt.get("schema") or {}
            if js.get("name") == "analysis" or "updates" in (schema.get("properties") or {}):
                content = json.dumps(_analysis(body, schema))
            else:
                content = json.dumps({"title": "A new thing", "content":
                                      "Something new that the benchmark made up.", "tags": []})
        return {"id": "zero", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "zero"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": content}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}

    return app


def main() -> None:
    ap = argparse.ArgumentParser(description="zero-latency model and embedding server")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    import uvicorn

    uvicorn.run(zero_app(), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
