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

from settings import get_settings

MISTRAL_BATCH = 128


class Embedder(Protocol):
    """What every embedder offers: ``name``, ``dim`` and ``embed(texts) -> (n, dim) float32``."""

    name: str
    dim: int

    def embed(self, texts: list[str]) -> np.ndarray: ...


def _normalise(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class MistralEmbedder:
    """``mistral-embed`` over the Mistral API (1024-d). Retries are tenacity's in the SDK's
    ``retry_config`` style are left to the task layer; errors raise ``mistralai`` errors."""

    dim = 1024

    def __init__(self, model: str, api_key: str, server_url: str | None = None):
        from mistralai.client import Mistral

        self.name = model
        self._client = Mistral(api_key=api_key, server_url=server_url)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` -> (n, 1024) float32, normalised."""
        out: list[list[float]] = []
        for start in range(0, len(texts), MISTRAL_BATCH):
            res = self._client.embeddings.create(model=self.name, inputs=texts[start:start + MISTRAL_BATCH])
            out.extend(d.embedding for d in sorted(res.data, key=lambda d: d.index))
        return _normalise(np.asarray(out, dtype=np.float32).reshape(-1, self.dim)) if out else np.zeros((0, self.dim), np.float32)


class OpenAIEmbedder:
    """Any OpenAI-compatible embeddings endpoint; ``dim`` is learnt from the first answer."""

    def __init__(self, model: str, base_url: str, api_key: str, dim: int | None = None):
        import openai

        self.name = model
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=2)
        self.dim = dim or len(self._client.embeddings.create(model=model, input=["probe"]).data[0].embedding)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` -> (n, dim) float32, normalised."""
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        res = self._client.embeddings.create(model=self.name, input=texts)
        return _normalise(np.asarray([d.embedding for d in sorted(res.data, key=lambda d: d.index)]))


@lru_cache(maxsize=1)
def get_embedder() -> Embedder:
    """The process-wide embedder chosen by ``EMBEDDER`` (loaded once)."""
    s = get_settings()
    if s.embedder == "mistral":
        return MistralEmbedder(s.embedding_model, s.mistral_api_key, s.mistral_server_url)
    if s.embedder == "openai":
        return OpenAIEmbedder(s.embedding_model, s.embedding_base_url or s.llm_base_url, s.llm_api_key)
    from inference.embedders.minilm import MiniLMEmbedder

    return MiniLMEmbedder()
