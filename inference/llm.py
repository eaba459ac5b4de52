"""Chat models per role (generation, analysis, maintenance) over the configured backend.

Backends (``*_BACKEND``):

- ``llamacpp``: llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``), the
  embedded default. Structured output is ``{"type": "json_object", "schema": ...}``; the
  OpenAI ``json_schema`` shape answers HTTP 500 there (NOTES.md).
- ``vllm`` / ``openai``: OpenAI-compatible servers taking
  ``{"type": "json_schema", "json_schema": {"name", "schema", "strict"}}``; on vLLM a LoRA
  adapter is selected by ``model``.
- ``mistral``: the Mistral API through the ``mistralai`` SDK (``chat.complete``).

Transient failures (timeouts, connection errors, 429, 5xx) are retried with exponential
backoff and jitter by tenacity, honouring ``Retry-After``; the SDKs' own retries are off so
that exactly one policy applies.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, TypeVar

import json_repair
import openai
from pydantic import BaseModel, ValidationError

from inference import priority
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


CallObserver = Callable[[str, str, float, "Completion | None"], None]
"""``(role, backend, seconds, completion or None if the call failed)``, after each call."""

_observers: list[CallObserver] = []


def add_call_observer(observer: CallObserver) -> None:
    """Call ``observer`` after every :meth:`ChatModel.complete` in this process (retries
    included in the time; a failed call passes ``None``). The dialogue server's metrics
    (``workers.metrics``) use it; an observer that raises is logged and ignored."""
    if observer not in _observers:
        _observers.append(observer)


def _notify(role: str, backend: str, seconds: float, done: "Completion | None") -> None:
    for observer in list(_observers):
        try:
            observer(role, backend, seconds, done)
        except Exception:  # noqa: BLE001 - observing must never break a model call
            log.exception("model call observer failed")


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
        try:
            with priority.admitted(self.role, self.base_url):
                done = call(messages, max_tokens, temperature, json_schema, schema_name, seed)
            return done
        except ModelError:
            raise
        except Exception as exc:  # SDK errors -> one domain error type
            raise ModelError(f"{self.role} model call failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if _observers:
                _notify(self.role, self.backend, time.perf_counter() - t0, done)

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
            # SmolLM2 loops under a grammar without a repeat penalty (NOTES.md).
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
        to the conversation, up to ``attempts`` calls.

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
