"""The processors: what each accepts, the capability it needs, its version, and its input hash.

A *source* is what a document offers to processors: a :class:`FileSource` (a file's current
content, by its keyed hash) or a :class:`TextSource` (a note's title and body, or the text
extracted from a file). A processor turns a source into a job key — or declines it — and,
on a replica that has the capability, turns the source's data into output fields that
travel in the ``job.result`` event (so other replicas never recompute them).

``run`` is called in a worker thread, never on the event loop; the tools (docling,
tesseract, embedding models, Ollama) are imported there, so commands that only list jobs do
not pay for them.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Protocol

import msgpack

from processors.jobs import INPUT_BYTES, JobKey

if TYPE_CHECKING:
    from processors.embed import Embedder

MAX_TEXT_BYTES: Final = 4 * 1024 * 1024
"""Extracted text beyond this is cut (and flagged): a result must fit in one event."""
MAX_VECTOR_EVENT_BYTES: Final = 6 * 1024 * 1024
"""Budget for chunks + vectors in one embed result (the event limit is 8 MiB)."""
MAX_SUMMARY_CHARS: Final = 64 * 1024
DEFAULT_EMBEDDER: Final = "local:all-minilm-l6-v2"
DEFAULT_LLM: Final = "llama3.2"
DEFAULT_PROMPT: Final = (
    "Summarize the following document in a few sentences. Keep names, dates and numbers."
)


@dataclass(frozen=True, slots=True)
class FileSource:
    doc: bytes
    path: str
    mime: str
    hash: bytes


@dataclass(frozen=True, slots=True)
class TextSource:
    doc: bytes
    title: str
    origin: str
    """``body`` (a note or text file) or ``extract`` (text extracted from a file)."""
    text_hash: bytes
    basis: JobKey | None = None
    """For extracted text: the extract job whose result holds it."""


Source = FileSource | TextSource


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=INPUT_BYTES).digest()


def input_hash(*parts: str | bytes) -> bytes:
    """The job input hash: everything the output depends on, in one digest."""
    return hashlib.blake2b(msgpack.packb(list(parts)), digest_size=INPUT_BYTES).digest()


class Processor(Protocol):
    name: str
    version: str

    def need(self, source: Source) -> str | None:
        """The capability a replica needs to process ``source``; None: not for this one."""
        ...

    def key(self, source: Source) -> JobKey: ...

    def run(self, data: bytes | str, source: Source) -> dict[str, Any]:
        """The output fields of the result (called in a worker thread)."""
        ...


def _utf8_prefix(text: str, limit: int) -> tuple[str, bool]:
    raw = text.encode("utf-8")
    if len(raw) <= limit:
        return text, False
    return raw[:limit].decode("utf-8", errors="ignore"), True


@dataclass
class ExtractProcessor:
    """Files → markdown text (docling), or OCR (tesseract) for images and scanned PDFs."""

    name: str = "extract"
    version: str = field(default="")

    def __post_init__(self) -> None:
        if not self.version:
            from processors.extract import EXTRACT_VERSION

            self.version = EXTRACT_VERSION

    def need(self, source: Source) -> str | None:
        if not isinstance(source, FileSource):
            return None
        from processors.extract import can_extract

        return can_extract(source.mime)

    def key(self, source: Source) -> JobKey:
        assert isinstance(source, FileSource)
        return JobKey(self.name, self.version, source.doc, input_hash(self.name, source.hash))

    def run(self, data: bytes | str, source: Source) -> dict[str, Any]:
        from processors.extract import extract

        assert isinstance(source, FileSource) and isinstance(data, bytes)
        found = extract(data, mime=source.mime, name=source.path)
        text, truncated = _utf8_prefix(found.text, MAX_TEXT_BYTES)
        return {"text": text, "method": found.method, "truncated": truncated}


@dataclass
class TextStatsProcessor:
    """Word, line and character counts of a text: the cheapest real processor.

    Used by tests of the job protocol (no model, no tool to install) and handy as a check
    that a replica processes at all. Needs the capability ``textstats``.
    """

    name: str = "textstats"
    version: str = "1"

    def need(self, source: Source) -> str | None:
        return "textstats" if isinstance(source, TextSource) else None

    def key(self, source: Source) -> JobKey:
        assert isinstance(source, TextSource)
        return JobKey(self.name, self.version, source.doc, input_hash(self.name, source.text_hash))

    def run(self, data: bytes | str, source: Source) -> dict[str, Any]:
        assert isinstance(data, str)
        return {"words": len(data.split()), "lines": data.count("\n") + 1, "chars": len(data)}


def make_embedder(name: str, ollama_host: str | None) -> Embedder:
    """``local:<model>`` (the packaged offline model) or ``ollama:<model>``."""
    from processors.embed import OllamaEmbedder, local_embedder
    from processors.errors import ModelUnavailableError

    backend, _, model = name.partition(":")
    if backend == "local":
        embedder = local_embedder()
        if embedder.name != name:
            raise ModelUnavailableError(f"local embedder is {embedder.name}, not {name}")
        return embedder
    if backend == "ollama" and model:
        return OllamaEmbedder(model, host=ollama_host)
    raise ModelUnavailableError(f"unknown embedder {name!r} (use local:<model> or ollama:<model>)")


@dataclass
class EmbedProcessor:
    """Text → chunks and their vectors (float16 in the event, so many replicas share them)."""

    embedder: str = DEFAULT_EMBEDDER
    ollama_host: str | None = None
    name: str = "embed"
    version: str = "1"
    _loaded: Embedder | None = field(default=None, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def need(self, source: Source) -> str | None:
        return f"embed:{self.embedder}" if isinstance(source, TextSource) else None

    def key(self, source: Source) -> JobKey:
        assert isinstance(source, TextSource)
        digest = input_hash(self.name, self.embedder, source.text_hash)
        return JobKey(self.name, self.version, source.doc, digest)

    def load(self) -> Embedder:
        with self._lock:
            if self._loaded is None:
                self._loaded = make_embedder(self.embedder, self.ollama_host)
            return self._loaded

    def run(self, data: bytes | str, source: Source) -> dict[str, Any]:
        import numpy as np

        from processors.chunking import chunk_text

        assert isinstance(data, str)
        embedder = self.load()
        chunks = chunk_text(data)
        kept, used = [], 0
        for chunk in chunks:
            cost = len(chunk.encode("utf-8")) + 2 * embedder.dim + 16
            if used + cost > MAX_VECTOR_EVENT_BYTES:
                break
            kept.append(chunk)
            used += cost
        vectors = embedder.embed(kept) if kept else np.zeros((0, embedder.dim), np.float32)
        return {
            "embedder": embedder.name,
            "dim": int(embedder.dim),
            "chunks": kept,
            "vectors": np.asarray(vectors, dtype="<f2").tobytes(),
            "truncated": len(kept) < len(chunks),
        }


@dataclass
class SummaryProcessor:
    """Text → a short summary from an Ollama chat model (map-reduce over long texts)."""

    model: str = DEFAULT_LLM
    prompt: str = DEFAULT_PROMPT
    ollama_host: str | None = None
    name: str = "summary"
    version: str = field(default="")

    def __post_init__(self) -> None:
        if not self.version:
            from processors.summarize import SUMMARY_VERSION

            self.version = SUMMARY_VERSION

    def need(self, source: Source) -> str | None:
        return f"llm:{self.model}" if isinstance(source, TextSource) else None

    def key(self, source: Source) -> JobKey:
        assert isinstance(source, TextSource)
        digest = input_hash(self.name, self.model, self.prompt, source.text_hash)
        return JobKey(self.name, self.version, source.doc, digest)

    def run(self, data: bytes | str, source: Source) -> dict[str, Any]:
        from processors.summarize import summarize

        assert isinstance(data, str)
        summary = summarize(data, model=self.model, host=self.ollama_host, prompt=self.prompt)
        return {"summary": summary[:MAX_SUMMARY_CHARS], "model": self.model}
