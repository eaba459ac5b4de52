"""The embedding role: turns documents into L2-normalised float32 vectors.

``EMBEDDER`` selects the implementation:

- ``minilm`` (default): all-MiniLM-L6-v2, 384-d, local numpy forward pass, no network.
- ``mistral``: ``mistral-embed`` (1024-d) through the ``mistralai`` SDK, batches of <= 128.
- ``openai``: any OpenAI-compatible ``/v1/embeddings`` endpoint (``EMBEDDING_BASE_URL``).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Protocol

import numpy as np

from inference.retry import transient_retry
from settings import get_settings

MISTRAL_BATCH = 128


class Embedder(Protocol):
    """What every embedder offers: ``name``, ``dim`` and ``embed(texts) -> (n, dim) float32``."""

    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


def _checked(rows: list[list[float]], n: int, dim: int) -> np.ndarray:
    """Rows as an (n, dim) float32 normalised array; ValueError on any other shape."""
    if not rows and n == 0:
        return np.zeros((0, dim), np.float32)
    try:
        arr = np.asarray(rows, dtype=np.float32)
    except ValueError as exc:  # ragged rows
        raise ValueError(f"embedding rows of unequal length: {exc}") from exc
    if arr.shape != (n, dim):
        raise ValueError(f"expected {n} embeddings of dimension {dim}, got shape {arr.shape}")
    return _normalise(arr)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class MistralEmbedder:
    """``mistral-embed`` over the Mistral API (1024-d), batches of at most 128 inputs.

    Transient failures are retried by ``inference.retry``; others raise ``mistralai`` errors.

    Raises:
        ValueError: the API answered vectors of another dimension or count.
    """

    dim = 1024

    def __init__(self, model: str, api_key: str, server_url: str | None = None,
                 timeout_s: float = 60.0, max_attempts: int = 5):
        from mistralai.client import Mistral

        self.name = model
        self._client = Mistral(api_key=api_key, server_url=server_url,
                               timeout_ms=int(timeout_s * 1000))
        self._create = transient_retry(max_attempts)(self._client.embeddings.create)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` -> (n, 1024) float32, normalised."""
        out: list[list[float]] = []
        for start in range(0, len(texts), MISTRAL_BATCH):
            res = self._create(model=self.name, inputs=texts[start:start + MISTRAL_BATCH])
            out.extend(d.embedding for d in sorted(res.data, key=lambda d: d.index))
        return _checked(out, len(texts), self.dim)


class OpenAIEmbedder:
    """Any OpenAI-compatible embeddings endpoint; ``dim`` is learnt from the first answer."""

    def __init__(self, model: str, base_url: str, api_key: str, dim: int | None = None,
                 timeout_s: float = 60.0, max_attempts: int = 5, batch: int = 128):
        import openai

        self.name = model
        self.batch = batch
        client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout_s)
        self._create = transient_retry(max_attempts)(client.embeddings.create)
        self.dim = dim or len(self._create(model=model, input=["probe"]).data[0].embedding)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` -> (n, dim) float32, normalised, in batches of ``batch``.

        Raises:
            ValueError: the server answered vectors of another dimension or count.
        """
        out: list[list[float]] = []
        for start in range(0, len(texts), self.batch):
            res = self._create(model=self.name, input=texts[start:start + self.batch])
            out.extend(d.embedding for d in sorted(res.data, key=lambda d: d.index))
        return _checked(out, len(texts), self.dim)


EMBEDDER_KINDS = ("minilm", "mistral", "openai")


@lru_cache(maxsize=1)
def get_embedder() -> Embedder:
    """The process-wide embedder chosen by ``EMBEDDER`` (loaded once)."""
    return make_embedder(get_settings().embedder)


def embedder_name(kind: str | None = None) -> str:
    """The ``name`` an embedder of ``kind`` (default: the configured ``EMBEDDER``) gives its
    vectors (``stored_vectors.embedder``), without loading or contacting it:
    ``all-MiniLM-L6-v2`` for ``minilm``, ``EMBEDDING_MODEL`` for ``mistral`` and ``openai``.

    Raises:
        ValueError: an unknown kind.
    """
    kind = kind or get_settings().embedder
    if kind not in EMBEDDER_KINDS:
        raise ValueError(f"unknown embedder {kind!r}; one of {', '.join(EMBEDDER_KINDS)}")
    if kind == "minilm":
        from inference.embedders.minilm import MiniLMEmbedder

        return MiniLMEmbedder.name
    return get_settings().embedding_model


def make_embedder(kind: str) -> Embedder:
    """A new embedder of ``kind`` (one of :data:`EMBEDDER_KINDS`) configured from the
    settings (``EMBEDDING_MODEL``, ``MISTRAL_API_KEY``, ``MISTRAL_SERVER_URL``,
    ``EMBEDDING_BASE_URL``, ...), whatever ``EMBEDDER`` says: ``npc-memory reindex
    --embedder`` builds the target embedder of a switch with it.

    Raises:
        ValueError: an unknown kind.
    """
    if kind not in EMBEDDER_KINDS:
        raise ValueError(f"unknown embedder {kind!r}; one of {', '.join(EMBEDDER_KINDS)}")
    s = get_settings()
    if kind == "mistral":
        return MistralEmbedder(s.embedding_model, s.mistral_api_key, s.mistral_server_url,
                               s.llm_timeout_s, s.llm_max_retries + 1)
    if kind == "openai":
        return OpenAIEmbedder(s.embedding_model, s.embedding_base_url or s.llm_base_url,
                              s.llm_api_key, timeout_s=s.llm_timeout_s,
                              max_attempts=s.llm_max_retries + 1)
    from inference.embedders.minilm import MiniLMEmbedder

    return MiniLMEmbedder()
