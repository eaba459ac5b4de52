"""A fault-injecting HTTP reverse proxy in front of an OpenAI-compatible model server.

``FaultProxy(upstream).start()`` serves on 127.0.0.1 (a free port) in a daemon thread and
forwards every request to ``upstream`` (e.g. ``http://127.0.0.1:8089``). Chat completion
requests (``POST .../chat/completions``) consume the next fault of a scriptable plan:

- ``"pass"``: forward unchanged;
- ``"429"``: answer 429 with ``Retry-After: 0`` (the model server is not called);
- ``"500"``: answer 500 (not called);
- ``"slow"`` / ``("slow", seconds)``: wait, then forward;
- ``"truncated"``: forward, then cut the content in half and set ``finish_reason: "length"``;
- ``"invalid_json"``: forward, then replace the content with text that is not JSON (an
  otherwise valid ``chat.completion`` body, ``finish_reason: "stop"``); both also apply to a
  streamed request (pipeline calls stream on a shared llama.cpp server), answered with the
  changed text as one delta;
- ``("reply", text)``: forward, then replace the content with ``text`` (a scripted reply
  from an otherwise real answer); a streamed request (``"stream": true``) is answered here
  with ``text`` as one delta (the model server is not called).

``plan(*faults)`` queues faults for the next requests; when the queue is empty
``default`` applies (``"pass"`` unless set; a callable is called for each request). ``chat_requests`` counts chat completion requests
(counted on arrival, before any delay), ``chat_bodies`` keeps their JSON bodies (what the
model was asked: the prompts), and ``faults`` counts injected faults by kind. Thread
safe: the test thread scripts it while the server threads serve.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

# not JSON and beyond json-repair (a merely broken object such as '{"a": b' gets repaired)
INVALID_CONTENT = "Sorry, I would rather talk about bread <|im_end|>"
HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host",
               "content-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


def _sse_text(data: bytes) -> str:
    """The reply text of an upstream streamed chat completion (its ``data:`` chunks)."""
    out = []
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith("data: ") and line[6:].strip() != "[DONE]":
            for choice in json.loads(line[6:]).get("choices") or []:
                out.append((choice.get("delta") or {}).get("content") or "")
    return "".join(out)


def _sse_reply(text: str, finish_reason: str = "stop") -> bytes:
    """A streamed chat completion of ``text`` in one delta, with usage, then ``[DONE]``."""
    base = {"id": "chatcmpl-proxy", "object": "chat.completion.chunk", "model": "proxy"}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"content": text},
                                    "finish_reason": None}]},
              {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish_reason}]},
              {**base, "choices": [], "usage": {"prompt_tokens": 1,
                                                "completion_tokens": len(text.split()),
                                                "total_tokens": 1 + len(text.split())}}]
    return "".join(f"data: {json.dumps(c)}\n\n" for c in chunks).encode() + b"data: [DONE]\n\n"


class FaultProxy:
    def __init__(self, upstream: str, default="pass"):
        self.upstream = upstream.rstrip("/")
        if self.upstream.endswith("/v1"):
            self.upstream = self.upstream[: -len("/v1")]
        self.default = default
        self._plan: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.chat_requests = 0
        self.chat_bodies: list[dict] = []
        self.faults: collections.Counter = collections.Counter()
        self.client = httpx.Client(timeout=600.0)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---- scripting -------------------------------------------------------------------
    @property
    def url(self) -> str:
        """Base URL to give clients as ``LLM_BASE_URL`` (ends with ``/v1``)."""
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def plan(self, *faults) -> None:
        """Queue faults for the next chat completion requests, in order."""
        with self._lock:
            self._plan.extend(faults)

    def clear(self, default="pass") -> None:
        with self._lock:
            self._plan.clear()
            self.default = default

    def pending(self) -> int:
        with self._lock:
            return len(self._plan)

    def wait_requests(self, n: int, timeout: float) -> bool:
        """Block until at least ``n`` chat requests arrived in total; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.chat_requests < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def _next_fault(self):
        with self._cond:
            self.chat_requests += 1
            if self._plan:
                fault = self._plan.popleft()
            else:
                fault = self.default() if callable(self.default) else self.default
            kind = fault[0] if isinstance(fault, tuple) else fault
            if kind != "pass":
                self.faults[kind] += 1
            self._cond.notify_all()
            return fault

    # ---- lifecycle -------------------------------------------------------------------
    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                proxy._handle(self)

            def do_POST(self):
                proxy._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="faultproxy")
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        self.client.close()

    # ---- serving ---------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        try:
            length = int(h.headers.get("content-length") or 0)
            body = h.rfile.read(length) if length else b""
            is_chat = h.command == "POST" and h.path.rstrip("/").endswith("/chat/completions")
            if is_chat:
                with self._lock:
                    self.chat_bodies.append(json.loads(body or b"{}"))
            fault = self._next_fault() if is_chat else "pass"
            kind, arg = (fault if isinstance(fault, tuple) else (fault, None))
            if kind == "429":
                return self._send(h, 429, json.dumps({"error": {"message": "rate limited (injected)",
                                  "type": "rate_limit", "code": 429}}).encode(),
                                  {"Retry-After": "0", "Content-Type": "application/json"})
            if kind == "500":
                return self._send(h, 500, json.dumps({"error": {"message": "injected 500",
                                  "type": "server_error", "code": 500}}).encode(),
                                  {"Content-Type": "application/json"})
            if kind == "reply" and json.loads(body or b"{}").get("stream"):
                return self._send(h, 200, _sse_reply(arg), {"Content-Type": "text/event-stream"})
            if kind == "slow":
                time.sleep(float(arg if arg is not None else 2.0))
            headers = {k: v for k, v in h.headers.items() if k.lower() not in HOP_HEADERS}
            up = self.client.request(h.command, self.upstream + h.path, content=body,
                                     headers=headers)
            data = up.content
            streamed = json.loads(body or b"{}").get("stream")
            if streamed and kind in ("truncated", "invalid_json") and up.status_code == 200:
                content = _sse_text(data)  # the same faults, in the streamed wire format
                if kind == "truncated":
                    data = _sse_reply(content[: max(1, len(content) // 2)], "length")
                else:
                    data = _sse_reply(INVALID_CONTENT)
            elif kind in ("truncated", "invalid_json", "reply") and up.status_code == 200:
                doc = json.loads(data)
                choice = doc["choices"][0]
                content = choice["message"].get("content") or ""
                if kind == "truncated":
                    choice["message"]["content"] = content[: max(1, len(content) // 2)]
                    choice["finish_reason"] = "length"
                elif kind == "reply":
                    choice["message"]["content"] = arg
                    choice["finish_reason"] = "stop"
                else:
                    choice["message"]["content"] = INVALID_CONTENT
                    choice["finish_reason"] = "stop"
                data = json.dumps(doc).encode()
            ctype = up.headers.get("content-type", "application/json")
            self._send(h, up.status_code, data, {"Content-Type": ctype})
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client (a killed worker) went away
        except Exception as exc:  # upstream down: a 502 the client retries
            try:
                self._send(h, 502, json.dumps({"error": {"message": f"proxy: {exc}"}}).encode(),
                           {"Content-Type": "application/json"})
            except OSError:
                pass

    @staticmethod
    def _send(h: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict) -> None:
        h.send_response(status)
        for k, v in headers.items():
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)
        h.wfile.flush()
