"""Local HTTP stand-ins for model servers that cannot run in the test environment.

Only third-party services get a fake: vLLM (needs a GPU) and the Mistral API (remote). Each
fake answers with the documented wire format of the real service (the OpenAI
chat/embeddings shapes that vLLM serves, the Mistral API shapes that the ``mistralai`` SDK
unmarshals), so the project's real SDK clients are exercised end to end over
real HTTP.

``FakeServer`` is a threaded ``http.server`` on 127.0.0.1 with a free port. It records every
request (method, path, headers, parsed JSON body) and answers from a per-test script:
``server.script(r1, r2, ...)`` queues replies used one per request, in order; once the queue is
empty ``server.default`` answers (HTTP 500 unless a test sets it). A reply is a ``Reply``, a
``StreamReply``, a callable ``(Request) -> Reply | StreamReply``, or ``DROP`` (close the
connection without answering: what a crashed or restarting server looks like to the client).

A ``StreamReply`` is sent as the streaming servers send it: ``text/event-stream`` with chunked
transfer encoding, one SSE ``data:`` event per chunk as it is written; it can stop short
(close the connection mid-body, as a crashed server) or wait on a gate mid-way.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from collections import deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Union

import numpy as np


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: Any  # parsed JSON, or the raw text when not JSON


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-serialised unless it is str/bytes
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class StreamReply:
    """A streamed answer: ``events`` are SSE ``data:`` payloads (JSON-serialised unless str),
    each written as ``data: <payload>\n\n`` in its own HTTP chunk.

    ``drop_after``: close the connection after that many events without ending the chunked
    body (the client sees an incomplete read). ``gate``/``gate_after``: after that many
    events wait until the gate is set (at most 60 s) before writing the rest.
    """

    events: list[Any]
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    drop_after: int | None = None
    gate: threading.Event | None = None
    gate_after: int = 1


DROP = object()
Action = Union[Reply, StreamReply, Callable[[Request], Reply | StreamReply], object]


class FakeServer:
    """A scripted HTTP server in a daemon thread; use as a context manager."""

    def __init__(self) -> None:
        self.requests: list[Request] = []
        self.errors: list[Exception] = []  # exceptions raised by callable replies
        self._queue: deque[Action] = deque()
        self.default: Action = Reply(500, {"error": {"message": "fake server: script exhausted",
                                                     "type": "InternalServerError", "code": 500}})
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def _handle(self):
                length = int(self.headers.get("content-length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw.decode("utf-8", "replace")
                req = Request(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                with fake._lock:
                    fake.requests.append(req)
                    action = fake._queue.popleft() if fake._queue else fake.default
                if action is DROP:
                    self.close_connection = True
                    return
                try:
                    reply = action(req) if callable(action) else action
                except Exception as exc:  # a broken responder must show up, not hang a client
                    fake.errors.append(exc)
                    reply = Reply(500, {"error": {"message": f"fake responder failed: {exc!r}",
                                                  "type": "InternalServerError", "code": 500}})
                if isinstance(reply, StreamReply):
                    self._stream(reply)
                    return
                if isinstance(reply.body, (bytes, str)):
                    payload = reply.body.encode() if isinstance(reply.body, str) else reply.body
                    ctype = "text/plain; charset=utf-8"
                else:
                    payload = json.dumps(reply.body).encode()
                    ctype = "application/json"
                self.send_response(reply.status)
                headers = {"content-type": ctype, **{k.lower(): v for k, v in reply.headers.items()}}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def _stream(self, reply: StreamReply) -> None:
                self.send_response(reply.status)
                headers = {"content-type": "text/event-stream; charset=utf-8",
                           "cache-control": "no-cache",
                           **{k.lower(): v for k, v in reply.headers.items()},
                           "transfer-encoding": "chunked"}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                try:
                    for i, event in enumerate(reply.events):
                        if reply.drop_after is not None and i == reply.drop_after:
                            self.wfile.flush()
                            self.close_connection = True  # no terminating chunk
                            return
                        if reply.gate is not None and i == reply.gate_after:
                            reply.gate.wait(60)
                        data = event if isinstance(event, str) else json.dumps(event)
                        payload = f"data: {data}\n\n".encode()
                        self.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:  # the client went away
                    self.close_connection = True

            do_GET = do_POST = do_DELETE = _handle

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-model-server", daemon=True)

    def __enter__(self) -> "FakeServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def script(self, *actions: Action) -> "FakeServer":
        with self._lock:
            self._queue.extend(actions)
        return self

    def posts(self, path: str) -> list[Request]:
        """Recorded POSTs to ``path``."""
        return [r for r in self.requests if r.method == "POST" and r.path == path]


# --- OpenAI-compatible shapes (vLLM, llama.cpp server, OpenAI) -----------------------------

def openai_chat(content: str, *, finish_reason: str = "stop", model: str = "m",
                prompt_tokens: int = 11, completion_tokens: int = 7) -> Reply:
    """A ``/v1/chat/completions`` answer as vLLM's OpenAI-compatible server sends it."""
    return Reply(200, {
        "id": f"chatcmpl-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "tool_calls": []},
            "logprobs": None,
            "finish_reason": finish_reason,
            "stop_reason": None,
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


def openai_stream(pieces: list[str], *, finish_reason: str = "stop", model: str = "m",
                  prompt_tokens: int = 11, error: str | None = None,
                  drop_after: int | None = None, gate: threading.Event | None = None,
                  gate_after: int = 1) -> Callable[[Request], StreamReply]:
    """A streamed ``/v1/chat/completions`` answer (``"stream": true``) as vLLM sends it.

    Events: a first chunk with ``delta: {"role": "assistant", "content": ""}``, one chunk per
    piece (``delta: {"content": piece}``), a last chunk with ``finish_reason``; when the
    request asked for ``stream_options: {"include_usage": true}``, a chunk with ``choices:
    []`` and ``usage`` (``completion_tokens``: the number of pieces); then ``data: [DONE]``.
    ``error``: after the pieces, vLLM's mid-stream error event ``data: {"error": {"message",
    "type", "param", "code"}}`` then ``[DONE]`` instead of the finish. ``drop_after``,
    ``gate``, ``gate_after``: as :class:`StreamReply` (counted in events, the role chunk is
    event 0).
    """
    def respond(req: Request) -> StreamReply:
        ident, created = f"chatcmpl-{time.monotonic_ns()}", int(time.time())

        def chunk(delta: dict, finish: str | None = None) -> dict:
            return {"id": ident, "object": "chat.completion.chunk", "created": created,
                    "model": model, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                 "finish_reason": finish}]}

        events: list[Any] = [chunk({"role": "assistant", "content": ""})]
        events += [chunk({"content": p}) for p in pieces]
        if error is not None:
            events.append({"error": {"message": error, "type": "InternalServerError",
                                     "param": None, "code": 500}})
        else:
            events.append(chunk({"content": ""}, finish_reason))
            if ((req.body or {}).get("stream_options") or {}).get("include_usage"):
                events.append({"id": ident, "object": "chat.completion.chunk",
                               "created": created, "model": model, "choices": [],
                               "usage": {"prompt_tokens": prompt_tokens,
                                         "completion_tokens": len(pieces),
                                         "total_tokens": prompt_tokens + len(pieces)}})
        events.append("[DONE]")
        return StreamReply(events, drop_after=drop_after, gate=gate, gate_after=gate_after)
    return respond


def openai_error(status: int, message: str = "error", *, retry_after: str | None = None) -> Reply:
    """vLLM's error body: ``{"error": {"message", "type", "code"}}`` (vLLM's ``ErrorResponse``)."""
    types = {400: "BadRequestError", 404: "NotFoundError", 429: "RateLimitError",
             500: "InternalServerError", 503: "ServiceUnavailableError"}
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return Reply(status, {"error": {"message": message, "type": types.get(status, "Error"),
                                    "param": None, "code": status}}, headers)


def openai_embeddings(vectors_for: Callable[[list[str]], np.ndarray], *, order: str = "index",
                      model: str = "embed") -> Callable[[Request], Reply]:
    """An OpenAI ``/v1/embeddings`` responder: ``vectors_for(inputs) -> (n, d)``.

    Honours ``encoding_format`` (``float`` lists, or ``base64`` of little-endian float32, which
    the ``openai`` SDK asks for by default). ``order="reversed"`` lists ``data`` backwards
    (``index`` still names the input), which the API does not promise never to do.
    """
    def respond(req: Request) -> Reply:
        inputs = req.body["input"]
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        vecs = np.asarray(vectors_for(inputs), dtype=np.float32)
        as_b64 = req.body.get("encoding_format") == "base64"
        data = [{"object": "embedding", "index": i,
                 "embedding": (base64.b64encode(v.astype("<f4").tobytes()).decode() if as_b64
                               else [float(x) for x in v])}
                for i, v in enumerate(vecs)]
        if order == "reversed":
            data.reverse()
        return Reply(200, {"object": "list", "data": data, "model": model,
                           "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})
    return respond


# --- Mistral API shapes ----------------------------------------------------------------------

def mistral_chat(content: str, *, finish_reason: str = "stop", model: str = "mistral-small-latest",
                 prompt_tokens: int = 13, completion_tokens: int = 5) -> Reply:
    """A Mistral ``POST /v1/chat/completions`` answer."""
    return Reply(200, {
        "id": "cmpl-e5cc70bb28c444948073e77776eb30ef",
        "object": "chat.completion",
        "model": model,
        "created": int(time.time()),
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content, "tool_calls": None, "prefix": False},
            "finish_reason": finish_reason,
        }],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


def mistral_stream(pieces: list[str], *, finish_reason: str = "stop",
                   model: str = "mistral-small-latest", prompt_tokens: int = 13,
                   drop_after: int | None = None) -> StreamReply:
    """A Mistral ``POST /v1/chat/completions`` answer to ``"stream": true``: SSE ``data:``
    events of ``CompletionChunk`` JSON (the ``mistralai`` SDK wraps each as a
    ``CompletionEvent``), the first with ``delta: {"role": "assistant", "content": ""}``, one
    per piece, the last with ``finish_reason`` and ``usage``; then ``data: [DONE]``."""
    ident, created = "cmpl-e5cc70bb28c444948073e77776eb30ef", int(time.time())

    def chunk(delta: dict, finish: str | None = None, usage: dict | None = None) -> dict:
        out = {"id": ident, "object": "chat.completion.chunk", "created": created,
               "model": model, "choices": [{"index": 0, "delta": delta,
                                            "finish_reason": finish}]}
        if usage is not None:
            out["usage"] = usage
        return out

    events: list[Any] = [chunk({"role": "assistant", "content": ""})]
    events += [chunk({"content": p}) for p in pieces]
    events.append(chunk({"content": ""}, finish_reason, {
        "prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
        "total_tokens": prompt_tokens + len(pieces)}))
    events.append("[DONE]")
    return StreamReply(events, drop_after=drop_after)


def mistral_error(status: int, message: str = "error", *, retry_after: str | None = None) -> Reply:
    """A Mistral API error body (``{"object": "error", "message", "type", "param", "code"}``)."""
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return Reply(status, {"object": "error", "message": message,
                          "type": "rate_limited" if status == 429 else "api_error",
                          "param": None, "code": str(status)}, headers)


def mistral_validation_error(msg: str = "Input should be a valid string") -> Reply:
    """Mistral's 422 (``HTTPValidationError``: ``{"detail": [{"loc", "msg", "type"}]}``)."""
    return Reply(422, {"detail": [{"loc": ["body", "messages", 0, "content"], "msg": msg,
                                   "type": "string_type"}]})


def mistral_embeddings(vectors_for: Callable[[list[str]], np.ndarray], *, order: str = "index",
                       model: str = "mistral-embed") -> Callable[[Request], Reply]:
    """A Mistral ``POST /v1/embeddings`` responder over ``{"model", "input"}`` requests."""
    def respond(req: Request) -> Reply:
        inputs = req.body["input"]  # the SDK's `inputs=` is sent as "input"
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        vecs = np.asarray(vectors_for(inputs), dtype=np.float32)
        data = [{"object": "embedding", "embedding": [float(x) for x in v], "index": i}
                for i, v in enumerate(vecs)]
        if order == "reversed":
            data.reverse()
        return Reply(200, {"id": "embd-aad6fc62b17349b192ef09225058bc45", "object": "list",
                           "data": data, "model": model,
                           "usage": {"prompt_tokens": 3 * len(inputs), "total_tokens": 3 * len(inputs),
                                     "completion_tokens": 0}})
    return respond


# --- vLLM with runtime LoRA updating --------------------------------------------------------

class FakeVllm:
    """vLLM's OpenAI-compatible server with ``--enable-lora`` and
    ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``, over a :class:`FakeServer` (vLLM's
    ``serving_models.py``):

    - ``GET /v1/models``: the base model, then each loaded adapter (``root`` its path,
      ``parent`` the base);
    - ``POST /v1/load_lora_adapter {"lora_name", "lora_path"}``: 200 text ``Success: LoRA
      adapter '<name>' added successfully.``; 400 ``The lora adapter '<name>' has already
      been loaded.``; 400 when a field is missing; 404 ``Loading lora <name> failed: No
      adapter found for <path>`` when ``<path>/adapter_config.json`` does not exist;
    - ``POST /v1/unload_lora_adapter {"lora_name"}``: 200 text; 404 ``The lora adapter
      '<name>' cannot be found.``;
    - ``POST /v1/chat/completions``: ``model`` must be the base model or a loaded adapter,
      else 404 ``The model `<model>` does not exist.``; the reply is ``chat_content(body)``
      (default: a line naming the model).

    Errors are vLLM's body ``{"error": {"message", "type", "param", "code"}}``.
    ``load_delay_s`` makes a load take that long (between its check and its registration, as
    vLLM awaits the engine there); ``fail_loads`` queues HTTP statuses (5xx) that the next
    loads answer instead. ``load_requests`` counts load POSTs, ``loads`` successful loads.
    """

    def __init__(self, base_model: str = "base-model", load_delay_s: float = 0.0):
        self.http = FakeServer()
        self.http.default = self._respond
        self.base_model = base_model
        self.load_delay_s = load_delay_s
        self.loaded: dict[str, str] = {}
        self.fail_loads: deque[int] = deque()
        self.load_requests = self.loads = self.unloads = 0
        self.chat_models: list[str] = []
        self.chat_content: Callable[[dict], str] = lambda body: (
            f"[{body.get('model')}] Well met, traveller.")
        self._state = threading.Lock()

    @property
    def url(self) -> str:
        """The OpenAI base URL (``.../v1``)."""
        return f"{self.http.url}/v1"

    def __enter__(self) -> "FakeVllm":
        self.http.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.http.__exit__(*exc)

    def _respond(self, req: Request) -> Reply:
        path = req.path.split("?")[0]
        body = req.body if isinstance(req.body, dict) else {}
        if req.method == "GET" and path == "/v1/models":
            now = int(time.time())
            data = [{"id": self.base_model, "object": "model", "created": now,
                     "owned_by": "vllm", "root": self.base_model, "parent": None,
                     "max_model_len": 2048}]
            with self._state:
                data += [{"id": n, "object": "model", "created": now, "owned_by": "vllm",
                          "root": p, "parent": self.base_model, "max_model_len": 2048}
                         for n, p in self.loaded.items()]
            return Reply(200, {"object": "list", "data": data})
        if req.method == "GET" and path == "/health":
            return Reply(200, "")
        if path == "/v1/load_lora_adapter":
            return self._load(body)
        if path == "/v1/unload_lora_adapter":
            name = body.get("lora_name")
            with self._state:
                if name not in self.loaded:
                    return openai_error(404, f"The lora adapter '{name}' cannot be found.")
                del self.loaded[name]
                self.unloads += 1
            return Reply(200, f"Success: LoRA adapter '{name}' removed successfully.")
        if path == "/v1/chat/completions":
            model = body.get("model")
            with self._state:
                known = model == self.base_model or model in self.loaded
                self.chat_models.append(model)
            if not known:
                return openai_error(404, f"The model `{model}` does not exist.")
            if body.get("stream"):  # the reply in word pieces
                words = self.chat_content(body).split(" ")
                return openai_stream([w if i == 0 else f" {w}" for i, w in enumerate(words)],
                                     model=model)(req)
            return openai_chat(self.chat_content(body), model=model)
        return Reply(404, {"detail": "Not Found"})

    def _load(self, body: dict) -> Reply:
        name, path = body.get("lora_name"), body.get("lora_path")
        with self._state:
            self.load_requests += 1
            if self.fail_loads:
                return openai_error(self.fail_loads.popleft(), "engine unavailable",
                                    retry_after="0")
            if not name or not path:
                return openai_error(400, "Both 'lora_name' and 'lora_path' must be provided.")
            if name in self.loaded:
                return openai_error(400, f"The lora adapter '{name}' has already been loaded.")
        time.sleep(self.load_delay_s)
        from pathlib import Path

        if not (Path(path) / "adapter_config.json").is_file():
            return openai_error(404, f"Loading lora {name} failed: No adapter found for {path}")
        with self._state:
            self.loaded[name] = path
            self.loads += 1
        return Reply(200, f"Success: LoRA adapter '{name}' added successfully.")
def text_vectors(dim: int) -> Callable[[list[str]], np.ndarray]:
    """``vectors_for`` for the embeddings responders: a deterministic pseudo-random vector of
    ``dim`` per text (seeded by the text's SHA-256), so the same text always gets the same
    vector and different texts are nearly orthogonal."""
    import hashlib

    def vectors_for(texts: list[str]) -> np.ndarray:
        return np.stack([np.random.default_rng(int(hashlib.sha256(t.encode()).hexdigest()[:16], 16))
                         .standard_normal(dim).astype(np.float32) for t in texts]) \
            if texts else np.zeros((0, dim), np.float32)
    return vectors_for


@contextmanager
def role_on(url: str, *roles: str):
    """Point model ``roles`` (``generation``, ``analysis``, ...) at ``url`` as a vLLM backend
    serving a model with an 8,192-token context (and re-read settings and clients) in this
    process; restored after."""
    import pytest

    import settings
    from inference.llm import chat_model

    mp = pytest.MonkeyPatch()
    for role in roles:
        mp.setenv(f"{role.upper()}_BASE_URL", url)
        mp.setenv(f"{role.upper()}_BACKEND", "vllm")
        # the model a vLLM server runs has a context of its own, not the embedded 2,048
        mp.setenv(f"{role.upper()}_CONTEXT_TOKENS", "8192")
    settings.get_settings.cache_clear()
    chat_model.cache_clear()
    try:
        yield
    finally:
        mp.undo()
        settings.get_settings.cache_clear()
        chat_model.cache_clear()
