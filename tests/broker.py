"""Reading what waits in a Redis broker queue, for tests that check what was sent."""

from __future__ import annotations

import base64
import json


def queued_messages(r, queue: str) -> list[dict]:
    """Task messages waiting in ``queue`` (kombu's Redis list of JSON envelopes), oldest
    last: ``[{"task", "id", "kwargs"}]``."""
    out = []
    for raw in r.lrange(queue, 0, -1):
        msg = json.loads(raw)
        body = msg["body"]
        if msg.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        _args, kwargs, _embed = json.loads(body)
        out.append({"task": msg["headers"]["task"], "id": msg["headers"]["id"], "kwargs": kwargs})
    return out
