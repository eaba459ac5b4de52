"""Chat models per role (generation, analysis, maintenance) over the configured backend.

Backends (``*_BACKEND``):

- ``llamacpp``: llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``), the
  embedded default. Structured output is ``{"type": "json_object", "schema": ...}``; the
  OpenAI ``json_schema`` shape answers HTTP 500 there (llama-cpp-python's server).
- ``vllm`` / ``openai``: OpenAI-compatible servers taking
  ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``; on vLLM a LoRA
  adapter is selected by ``model``.
- ``mistral``: the Mistral API through the ``mistralai`` SDK (``chat.complete``,
  ``chat.stream``).

:meth:`ChatModel.stream` yields the reply as text deltas while the server generates it
(OpenAI-style SSE ``data: {chunk}`` lines ending with ``data: [DONE]``; the Mistral SDK's
``chat.stream`` reads the same framing). It retries like ``complete`` until the first text
arrives, never after: the caller may already have shown those words.

Transient failures (timeouts, connection errors, 429, 5xx) are retried with exponential
backoff and jitter by tenacity, honouring ``Retry-After``; the SDKs' own retries are off so
that exactly one policy applies.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import json_repair
import openai
from pydantic import BaseModel, ValidationError

from inference import priority, tokens
from inference.retry import transient_retry
from settings import get_settings

log = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)


class ModelError(Exception):
    """A model call failed for good (non-transient HTTP error or retries exhausted)."""


class InvalidModelOutput(ModelError):
    """The model's output failed JSON parsing or schema validation after every attempt.

    ``raw`` holds the last output, ``error`` the last validation message.
    """

    def __init__(self, message: str, raw: str = "", error: str = ""):
        super().__init__(message)
        self.raw = raw
        self.error = error


@dataclass(frozen=True)
class Completion:
    """One chat completion: ``text``, ``finish_reason`` (``stop``/``length``/...), and token
    counts (prompt + completion) reported by the server (0 when it reports none)."""

    text: str
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens


preemptions = 0
"""Pipeline calls of this process cut short by a dialogue request and sent again
(``ChatModel.complete`` on a shared llama.cpp server; ``inference.priority``)."""

CallObserver = Callable[[str, str, float, "Completion | None"], None]
"""``(role, backend, seconds, completion or None if the call failed)``, after each call."""

_observers: list[CallObserver] = []


def add_call_observer(observer: CallObserver) -> None:
    """Call ``observer`` after every :meth:`ChatModel.complete` and every finished or closed
    :meth:`ChatModel.stream` in this process (retries included in the time; a failed call
    passes ``None``). The dialogue server's metrics
    (``workers.metrics``) use it; an observer that raises is logged and ignored."""
    if observer not in _observers:
        _observers.append(observer)


def _notify(role: str, backend: str, seconds: float, done: "Completion | None") -> None:
    for observer in list(_observers):
        try:
            observer(role, backend, seconds, done)
        except Exception:  # noqa: BLE001 - observing must never break a model call
            log.exception("model call observer failed")


@dataclass
class _Piece:
    """One decoded stream chunk: its text delta, finish reason and usage, each if present."""

    text: str = ""
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


def _usage(piece: _Piece, usage: Any) -> _Piece:
    if usage is not None:
        piece.prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
        piece.completion_tokens = getattr(usage, "completion_tokens", 0) or 0
    return piece


def _openai_pieces(chunks: Any) -> Iterator[_Piece]:
    """``ChatCompletionChunk`` objects -> pieces (the usage chunk of ``include_usage`` has no
    choices)."""
    for chunk in chunks:
        piece = _usage(_Piece(), getattr(chunk, "usage", None))
        if chunk.choices:
            choice = chunk.choices[0]
            piece.text = (choice.delta.content if choice.delta is not None else None) or ""
            piece.finish_reason = choice.finish_reason or None
        yield piece


def _mistral_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content chunks: keep the text ones
        return "".join(getattr(c, "text", "") or "" for c in content)
    return ""


def _mistral_pieces(events: Any) -> Iterator[_Piece]:
    """``CompletionEvent`` objects (``.data``: a ``CompletionChunk``) -> pieces."""
    for event in events:
        chunk = event.data
        piece = _usage(_Piece(), getattr(chunk, "usage", None))
        if chunk.choices:
            choice = chunk.choices[0]
            piece.text = _mistral_text(getattr(choice.delta, "content", None))
            piece.finish_reason = str(choice.finish_reason) if choice.finish_reason else None
        yield piece


class TokenStream:
    """The text deltas of one streamed chat completion, as the server sends them.

    Iterate it for ``str`` deltas (empty deltas are skipped). Errors while iterating are
    :class:`ModelError` (never retried: text was already delivered). After the last delta,
    or after :meth:`close`, :attr:`completion` holds the whole ``text``, the
    ``finish_reason`` (``stop``/``length``/..., ``cancelled`` when closed early) and the
    token counts: the server's usage when it reports one (vLLM with ``include_usage``,
    Mistral), else ``completion_tokens`` is the number of text chunks (one per token on
    llama.cpp) and ``prompt_tokens`` 0. The call observers are notified once, with the total
    time since the request was first sent (retries included) and the completion, or ``None``
    when the stream failed. Use it as a context manager, or call :meth:`close`, to release
    the HTTP connection when not reading to the end.
    """

    def __init__(self, owner: ChatModel, raw: Any, pieces: Iterator[_Piece],
                 head: list[_Piece], t0: float, on_release: Callable[[], Any] | None = None):
        self._owner = owner
        self._on_release = on_release
        self._raw = raw
        self._pieces = pieces
        self._head = head
        self._t0 = t0
        self._parts: list[str] = []
        self._chunks = 0
        self._finish = ""
        self._prompt: int | None = None
        self._completion: int | None = None
        self.completion: Completion | None = None
        self.failed = False

    @property
    def model(self) -> str:
        """The model name the call sent."""
        return self._owner.model

    @property
    def text(self) -> str:
        """The text received so far."""
        return "".join(self._parts)

    def __enter__(self) -> TokenStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> TokenStream:
        return self

    def _take(self, piece: _Piece) -> str:
        if piece.finish_reason:
            self._finish = piece.finish_reason
        if piece.prompt_tokens is not None:
            self._prompt, self._completion = piece.prompt_tokens, piece.completion_tokens
        if piece.text:
            self._parts.append(piece.text)
            self._chunks += 1
        return piece.text

    def __next__(self) -> str:
        if self.completion is not None or self.failed:
            raise StopIteration
        while True:
            if self._head:
                piece = self._head.pop(0)
            else:
                try:
                    piece = next(self._pieces)
                except StopIteration:
                    self._end(self._finish or "stop")
                    raise
                except Exception as exc:  # mid-stream: no retry, one error type
                    self.failed = True
                    self._release()
                    if _observers:
                        _notify(self._owner.role, self._owner.backend,
                                time.perf_counter() - self._t0, None)
                    raise ModelError(f"{self._owner.role} model stream failed: "
                                     f"{type(exc).__name__}: {exc}") from exc
            text = self._take(piece)
            if text:
                return text

    def _release(self) -> None:
        try:
            self._raw.close()
        except Exception:  # closing a broken connection may fail again
            log.debug("closing the model stream failed", exc_info=True)
        if self._on_release is not None:  # e.g. give the dialogue-priority slot back
            done, self._on_release = self._on_release, None
            done()

    def _end(self, finish_reason: str) -> None:
        self._release()
        self.completion = Completion(
            text=self.text, finish_reason=finish_reason,
            prompt_tokens=self._prompt or 0,
            completion_tokens=self._completion if self._completion is not None else self._chunks)
        if _observers:
            _notify(self._owner.role, self._owner.backend, time.perf_counter() - self._t0,
                    self.completion)

    def close(self) -> None:
        """Stop reading: release the connection (the server stops generating when it notices)
        and set :attr:`completion` from what arrived (``finish_reason="cancelled"``). No-op
        once the stream ended or failed."""
        if self.completion is None and not self.failed:
            self._end("cancelled")


class ChatModel:
    """The chat model of one role.

    Args:
        role: ``generation``, ``analysis`` or ``maintenance``; backend, base URL and model
            come from the settings (``{ROLE}_BACKEND`` etc., falling back to ``LLM_*``).
        model: override the model name (e.g. a LoRA adapter name on vLLM, a fine-tuned model
            id on Mistral).
        base_url: override the server (an archetype's own vLLM server, ``inference.lora``).

    Raises:
        ValueError: unknown role.
    """

    def __init__(self, role: str, model: str | None = None, base_url: str | None = None):
        s = get_settings()
        self.role = role
        self.backend, default_url, default_model = s.role(role)
        self.base_url = base_url or default_url
        self.model = model or default_model
        self.max_attempts = max(1, s.llm_max_retries + 1)
        self.context_tokens = s.context_tokens(role)
        self.margin_tokens = s.llm_prompt_margin_tokens
        self._tokenizer_spec = s.tokenizer(role)
        if self.backend == "mistral":
            from mistralai.client import Mistral

            self._mistral = Mistral(
                api_key=s.mistral_api_key,
                server_url=base_url or s.mistral_server_url,
                timeout_ms=int(s.llm_timeout_s * 1000),
            )
        else:
            self._openai = openai.OpenAI(
                base_url=self.base_url,
                api_key=s.llm_api_key,
                timeout=s.llm_timeout_s,
                max_retries=0,
            )

    @property
    def counter(self) -> tokens.TokenCounter:
        """The token counter of this model (``inference.tokens.counter``; loaded on first use).

        Raises:
            FileNotFoundError / ValueError / RuntimeError: the configured tokenizer cannot be
                loaded.
        """
        return tokens.counter(self._tokenizer_spec, self.backend, self.model)

    def count_tokens(self, messages: list[dict[str, str]]) -> int:
        """Prompt tokens of ``messages`` (exact or an upper bound, :attr:`counter`)."""
        return self.counter.count_messages(messages)

    def prompt_limit(self, max_tokens: int) -> int:
        """The most prompt tokens a call with completion budget ``max_tokens`` may send:
        the context window less ``max_tokens`` and the margin (may be 0 or less)."""
        return self.context_tokens - max_tokens - self.margin_tokens

    def _response_format(self, schema: dict, name: str) -> dict:
        if self.backend == "llamacpp":
            return {"type": "json_object", "schema": schema}
        return {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
        json_schema: dict | None = None,
        schema_name: str = "output",
        seed: int | None = None,
    ) -> Completion:
        """Send one chat completion, retrying transient failures.

        Args:
            messages: OpenAI-style ``[{"role", "content"}]``.
            max_tokens: completion budget in tokens.
            json_schema: constrain the output to this JSON schema (backend-specific shape).

        Raises:
            ModelError: non-transient failure, or transient failures beyond the retry budget.
        """
        call = transient_retry(self.max_attempts)(self._complete_once)
        t0 = time.perf_counter()
        done = None
        args = (messages, max_tokens, temperature, json_schema, schema_name, seed)
        try:
            if priority.preemptible(self.role, self.base_url):
                done = self._complete_preemptible(call, args)
                return done
            with priority.admitted(self.role, self.base_url):
                done = call(*args)
            return done
        except ModelError:
            raise
        except Exception as exc:  # SDK errors -> one domain error type
            raise ModelError(f"{self.role} model call failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if _observers:
                _notify(self.role, self.backend, time.perf_counter() - t0, done)

    def _complete_preemptible(self, call, args) -> Completion:
        """A pipeline call on a shared llama.cpp server (``inference.priority``, pre-emption):
        streamed, and closed when a dialogue call starts; a cut call waits for the dialogue
        and is sent again, and after ``DIALOGUE_PREEMPT_MAX`` cuts it runs non-streamed
        (``call``)."""
        limit = get_settings().dialogue_preempt_max
        streamed = transient_retry(self.max_attempts)(self._stream_to_end)
        for cuts in range(limit + 1):
            with priority.admitted(self.role, self.base_url):
                if cuts == limit:
                    return call(*args)
                done = streamed(*args)
            if done is not None:
                return done
            global preemptions
            preemptions += 1
            log.info("%s model call cut short by a dialogue request (%d); sent again after it",
                     self.role, cuts + 1)
        raise AssertionError("unreachable")  # the last round returns

    def _stream_to_end(self, messages, max_tokens, temperature, json_schema, schema_name,
                       seed) -> Completion | None:
        """One streamed completion read to its end; None when a dialogue slot appeared on this
        server meanwhile (``inference.priority.dialogue_in_flight``, looked at every
        ``PREEMPT_POLL_S`` s): the stream is then closed, which stops the server's generation."""
        kwargs: dict[str, Any] = {"extra_body": {"repeat_penalty": 1.3}}
        if json_schema is not None:
            kwargs["response_format"] = self._response_format(json_schema, schema_name)
        if seed is not None:
            kwargs["seed"] = seed
        raw = self._openai.chat.completions.create(
            model=self.model, messages=messages, max_tokens=max_tokens,
            temperature=temperature, stream=True, **kwargs)
        parts, finish, chunks = [], None, 0
        look = time.monotonic() + priority.PREEMPT_POLL_S
        try:
            for piece in _openai_pieces(raw):
                if piece.text:
                    parts.append(piece.text)
                    chunks += 1
                finish = piece.finish_reason or finish
                if finish is None and time.monotonic() >= look:
                    look = time.monotonic() + priority.PREEMPT_POLL_S
                    if priority.dialogue_waiting(self.base_url):
                        return None
        finally:
            raw.close()
        if finish is None:  # the server ended the stream early: send the call again
            return None
        return Completion(text="".join(parts), finish_reason=finish,
                          prompt_tokens=self.count_tokens(messages), completion_tokens=chunks)

    def _complete_once(self, messages, max_tokens, temperature, json_schema, schema_name, seed):
        if self.backend == "mistral":
            kwargs: dict[str, Any] = {}
            if json_schema is not None:
                kwargs["response_format"] = self._response_format(json_schema, schema_name)
            if seed is not None:
                kwargs["random_seed"] = seed
            res = self._mistral.chat.complete(
                model=self.model, messages=messages, max_tokens=max_tokens,
                temperature=temperature, **kwargs,
            )
            choice = res.choices[0]
            usage = res.usage
            return Completion(
                text=choice.message.content or "",
                finish_reason=str(choice.finish_reason or ""),
                prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
                completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            )
        kwargs = {}
        if json_schema is not None:
            kwargs["response_format"] = self._response_format(json_schema, schema_name)
        if seed is not None:
            kwargs["seed"] = seed
        if self.backend == "llamacpp":
            # SmolLM2 loops under a grammar without a repeat penalty (seen with the embedded model).
            kwargs["extra_body"] = {"repeat_penalty": 1.3}
        res = self._openai.chat.completions.create(
            model=self.model, messages=messages, max_tokens=max_tokens,
            temperature=temperature, **kwargs,
        )
        choice = res.choices[0]
        usage = res.usage
        return Completion(
            text=choice.message.content or "",
            finish_reason=choice.finish_reason or "",
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
        )

    def stream(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.7,
    ) -> TokenStream:
        """Send one chat completion with ``stream`` on and return its text deltas.

        The request is sent and read up to the first text delta here (or to the end of a
        reply without text), so that transient failures (timeouts, connection errors, 429,
        5xx) are retried as in :meth:`complete`, and every failure before the first token
        raises here. The OpenAI-compatible backends ask for usage in the last chunk
        (``stream_options={"include_usage": true}``) except llama.cpp, whose server does not
        report it (its tokens are then counted from the chunks); llama.cpp gets the same
        ``repeat_penalty`` as :meth:`complete`.

        Args:
            messages: OpenAI-style ``[{"role", "content"}]``.
            max_tokens: completion budget in tokens.
            temperature: sampling temperature.

        Returns:
            A :class:`TokenStream` of ``str`` deltas; its ``completion`` is set at the end.

        Raises:
            ModelError: non-transient failure, or transient failures beyond the retry budget,
                before the first token (later failures raise while iterating).
        """
        call = transient_retry(self.max_attempts)(self._open_stream)
        t0 = time.perf_counter()
        admission = contextlib.ExitStack()  # held until the stream ends (inference.priority)
        admission.enter_context(priority.admitted(self.role, self.base_url))
        try:
            raw, pieces, head = call(messages, max_tokens, temperature)
        except Exception as exc:
            admission.close()
            if _observers:
                _notify(self.role, self.backend, time.perf_counter() - t0, None)
            if isinstance(exc, ModelError):
                raise
            raise ModelError(f"{self.role} model call failed: {type(exc).__name__}: {exc}") from exc
        return TokenStream(self, raw, pieces, head, t0, on_release=admission.close)

    def _open_stream(self, messages, max_tokens, temperature):
        """Send the request and read pieces until the first text: ``(raw stream, piece
        iterator, pieces read)``. A failure closes the connection and is raised (retried by
        the caller while transient)."""
        if self.backend == "mistral":
            raw = self._mistral.chat.stream(model=self.model, messages=messages,
                                            max_tokens=max_tokens, temperature=temperature)
            pieces = _mistral_pieces(raw)
        else:
            kwargs: dict[str, Any] = {}
            if self.backend == "llamacpp":
                kwargs["extra_body"] = {"repeat_penalty": 1.3}
            else:
                kwargs["stream_options"] = {"include_usage": True}
            raw = self._openai.chat.completions.create(
                model=self.model, messages=messages, max_tokens=max_tokens,
                temperature=temperature, stream=True, **kwargs,
            )
            pieces = _openai_pieces(raw)
        head: list[_Piece] = []
        try:
            for piece in pieces:
                head.append(piece)
                if piece.text:
                    break
        except BaseException:
            try:
                raw.close()
            except Exception:  # the original failure is the one to report
                log.debug("closing a failed model stream failed", exc_info=True)
            raise
        return raw, pieces, head

    def complete_json(
        self,
        messages: list[dict[str, str]],
        output_model: type[T],
        json_schema: dict,
        *,
        max_tokens: int = 400,
        temperature: float = 0.3,
        attempts: int = 3,
        schema_name: str = "output",
    ) -> tuple[T, int]:
        """Ask for JSON under ``json_schema`` and validate it as ``output_model``.

        Output cut short (``finish_reason == "length"``) is invalid. Broken JSON is repaired by
        json-repair; output that still fails validation is retried with the error appended
        to the conversation, up to ``attempts`` calls (a retry whose feedback would not fit
        the context, :meth:`prompt_limit`, resends ``messages`` alone).

        Returns:
            ``(validated model, total tokens used)``.

        Raises:
            InvalidModelOutput: no valid output after ``attempts`` calls.
            ModelError: the model server failed.
        """
        tokens = 0
        convo = list(messages)
        raw, error = "", ""
        for attempt in range(attempts):
            done = self.complete(
                convo, max_tokens=max_tokens, temperature=temperature, json_schema=json_schema,
                schema_name=schema_name, seed=attempt,
            )
            tokens += done.tokens
            raw = done.text
            try:
                if done.finish_reason == "length":
                    raise ValueError(f"output truncated at max_tokens={max_tokens}")
                data = parse_json(raw)
                return output_model.model_validate(data), tokens
            except (ValueError, ValidationError) as exc:
                error = str(exc)[:500]
                log.info("%s: invalid JSON output (attempt %d): %s", self.role, attempt + 1, error)
                convo = list(messages) + [
                    {"role": "assistant", "content": raw[:1000]},
                    {"role": "user", "content": f"That output was invalid: {error}\n"
                                                "Answer again with valid JSON only."},
                ]
                if self.count_tokens(convo) > self.prompt_limit(max_tokens):
                    convo = list(messages)  # no room for the feedback: a plain retry
        raise InvalidModelOutput(
            f"{self.role} model gave no valid {output_model.__name__} in {attempts} attempts: "
            f"{error}", raw=raw, error=error,
        )


def parse_json(text: str) -> Any:
    """Parse model output as JSON, repairing it with json-repair when strict parsing fails.

    Raises:
        ValueError: nothing JSON-like could be recovered (empty output).
    """
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    repaired = json_repair.loads(text)
    if repaired in ("", None, {}, []):  # nothing recovered (a literal {} parsed above)
        raise ValueError(f"not JSON: {text[:200]!r}")
    return repaired


@lru_cache(maxsize=8)
def chat_model(role: str) -> ChatModel:
    """The process-wide ChatModel of ``role`` (clients are reused across calls)."""
    return ChatModel(role)


@lru_cache(maxsize=256)
def routed_chat_model(role: str, model: str, base_url: str | None = None) -> ChatModel:
    """The process-wide ChatModel of ``role`` calling ``model`` on ``base_url`` (a routed
    LoRA adapter or fine-tuned model, ``inference.lora.routing``); one client per server and
    model, reused across calls."""
    return ChatModel(role, model=model, base_url=base_url)
