"""The search index of a full replica: SQLite FTS5 for words, usearch for meaning.

A derived cache, rebuildable from the log: ``clear()`` then ``upsert`` every document's
chunks and vectors again. It lives in the replica's trusted home (plaintext is allowed there,
never on the wire).

Storage. SQLite holds the truth: one small row per chunk (``search_chunk``: key, document,
position), its text (``search_text``) and vector as float16 bytes (``search_vector``) apart,
so that resolving a few hundred candidate keys reads a few small pages; an external-content
FTS5 table over the text (porter stemming); a generation counter bumped by every change.
The usearch HNSW graph is a cache of the vectors in ``index_dir`` (``vectors-<dim>.usearch``),
written by ``save()`` together with the generation it reflects; opened after a crash or
after another process changed the index, the generations differ and the graph is rebuilt
from the stored vectors. Chunk keys
come from ``AUTOINCREMENT`` so a key is never reused for another chunk.

Ranking. The query runs through both indexes; each returns its best chunks; the two rankings
are fused by reciprocal rank (``1 / (RRF_K + rank)`` summed over the lists a chunk appears
in: robust without calibrating bm25 against cosine), and each document is represented by its
best chunk.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

# Load order matters: usearch's extension carries its own libstdc++, whose process-global
# (STB_GNU_UNIQUE) locale symbols break libtesseract's initialisation ("unicharset.cpp:843
# failed") when usearch is loaded first. Loaded after tesserocr, both work.
with contextlib.suppress(ImportError):
    import tesserocr  # noqa: F401

from usearch.index import Index

RRF_K: Final = 60
COMMON_WORD_CHUNKS: Final = 1000
"""A word in this many chunks is too common to rank by alone (see ``_word_ranking``)."""
CANDIDATES_PER_HIT: Final = 4
"""Each index is asked for ``k * CANDIDATES_PER_HIT`` chunks: several may be one document's."""
SNIPPET_CHARS: Final = 200
VECTOR_DTYPE: Final = np.float16
"""Stored vectors and the graph use half precision: ample for ranking, half the memory."""

_WORD = re.compile(r"\w+", re.UNICODE)
_FUNCTION_WORDS = """
    a about an and are as at be but by can do does did for from had has have how i if in into
    is it its me my no not of on or our so than that the their them then there these they
    this to was we were what when where which who why will with you your
"""
STOP_WORDS: Final = frozenset(_FUNCTION_WORDS.split())
"""Function words match most chunks and rank none; dropping them keeps FTS5 queries fast."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS search_chunk (
    key INTEGER PRIMARY KEY AUTOINCREMENT,
    doc_id BLOB NOT NULL,
    chunk INTEGER NOT NULL,
    UNIQUE (doc_id, chunk)
);
CREATE TABLE IF NOT EXISTS search_text (key INTEGER PRIMARY KEY, text TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS search_vector (key INTEGER PRIMARY KEY, vector BLOB NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS search_fts USING fts5(
    text, content='search_text', content_rowid='key',
    tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TABLE IF NOT EXISTS search_meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO search_meta (name, value) VALUES ('generation', 0);
"""


@dataclass(frozen=True)
class Hit:
    """One document found: its best chunk, the fused score and a snippet of that chunk."""

    doc_id: bytes
    chunk: int
    score: float
    snippet: str


class SearchIndex:
    """Hybrid full-text + vector search over document chunks (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, index_dir: Path, dim: int) -> None:
        if dim <= 0:
            raise ValueError(f"dimension must be positive, got {dim}")
        self.conn, self.dim = conn, dim
        self.index_dir = Path(index_dir)
        self._path = self.index_dir / f"vectors-{dim}.usearch"
        self._generation_path = self._path.with_suffix(".generation")
        conn.executescript(_SCHEMA)
        self._vectors = self._open_vectors()

    # --- writing ------------------------------------------------------------------------

    def upsert(self, doc_id: bytes, chunks: Sequence[str], vectors: npt.ArrayLike | None) -> None:
        """Replace the document's chunks (and their vectors, if given: one row per chunk)."""
        rows = None if vectors is None else self._checked(vectors, len(chunks))
        with self._savepoint():
            old = self._remove_rows(doc_id)
            keys = []
            for position, text in enumerate(chunks):
                cursor = self.conn.execute(
                    "INSERT INTO search_chunk (doc_id, chunk) VALUES (?, ?)", (doc_id, position)
                )
                key = int(cursor.lastrowid or 0)
                self.conn.execute("INSERT INTO search_text (key, text) VALUES (?, ?)", (key, text))
                self.conn.execute("INSERT INTO search_fts (rowid, text) VALUES (?, ?)", (key, text))
                if rows is not None:
                    self.conn.execute(
                        "INSERT INTO search_vector (key, vector) VALUES (?, ?)",
                        (key, rows[position].tobytes()),
                    )
                keys.append(key)
            self._bump_generation()
        self._drop_vectors(old + keys)  # keys too: a rolled-back caller may have left them
        if rows is not None and keys:
            self._vectors.add(np.array(keys, dtype=np.uint64), rows, threads=1)

    def remove(self, doc_id: bytes) -> None:
        """Forget the document (no error if it was not indexed)."""
        with self._savepoint():
            old = self._remove_rows(doc_id)
            self._bump_generation()
        self._drop_vectors(old)

    def clear(self) -> None:
        """Forget everything: the first step of a rebuild from the log."""
        with self._savepoint():
            self.conn.execute("INSERT INTO search_fts (search_fts) VALUES ('delete-all')")
            for table in ("search_chunk", "search_text", "search_vector"):
                self.conn.execute(f"DELETE FROM {table}")
            self._bump_generation()
        self._vectors = self._new_vectors()

    def save(self) -> None:
        """Write the vector graph to ``index_dir`` (SQLite's part is already committed)."""
        self.index_dir.mkdir(parents=True, exist_ok=True)
        temporary = self._path.with_suffix(".tmp")
        self._vectors.save(str(temporary))
        temporary.replace(self._path)
        self._generation_path.write_text(f"{self._generation()}\n", encoding="ascii")

    def __len__(self) -> int:
        (count,) = self.conn.execute("SELECT count(*) FROM search_chunk").fetchone()
        return int(count)

    # --- reading ------------------------------------------------------------------------

    def search(self, query: str, query_vector: npt.ArrayLike | None, k: int = 10) -> list[Hit]:
        """The best ``k`` documents for the query's words and (if given) its vector."""
        if k <= 0:
            return []
        wanted = k * CANDIDATES_PER_HIT
        words = _query_words(query)
        nearest = None
        if query_vector is not None and len(self._vectors) > 0:
            # usearch releases the GIL: the vector search runs beside the FTS5 query, so a
            # hybrid query costs about the longer of the two, not their sum.
            nearest = _search_pool().submit(self._vector_ranking, query_vector, wanted)
        rankings = [self._word_ranking(words, wanted)]
        if nearest is not None:
            rankings.append(nearest.result())
        fused: dict[int, float] = {}
        for ranking in rankings:
            for rank, key in enumerate(ranking):
                fused[key] = fused.get(key, 0.0) + 1.0 / (RRF_K + rank + 1)
        return self._best_per_doc(fused, k, words)

    def _word_ranking(self, words: list[str], limit: int) -> list[int]:
        """Chunks with every word first, then bm25 over the words that are not too common.

        Ranking costs FTS5 one bm25 evaluation per matching chunk, and a word found in
        thousands of chunks makes thousands of them while adding little to the ranking (its
        IDF is low). So: chunks holding *all* the words (an AND, cheap: posting lists are
        intersected, and these are the best matches anyway), then, if that is not enough, an
        OR of the words found in fewer than ``COMMON_WORD_CHUNKS`` chunks (or of the rarest
        word, if all are common). In a small index no word is common and the OR is complete.
        """
        if not words:
            return []
        ranked = self._ranked(" AND ".join(_quoted(w) for w in words), limit)
        if len(ranked) < limit:
            counts = {word: self._count_capped(word) for word in words}
            rare = [w for w, n in counts.items() if n < COMMON_WORD_CHUNKS]
            chosen = rare or [min(counts, key=lambda w: counts[w])]
            seen = set(ranked)
            more = self._ranked(" OR ".join(_quoted(w) for w in chosen), limit)
            ranked += [key for key in more if key not in seen][: limit - len(ranked)]
        return ranked

    def _ranked(self, expression: str, limit: int) -> list[int]:
        rows = self.conn.execute(
            "SELECT rowid FROM search_fts WHERE search_fts MATCH ? ORDER BY rank LIMIT ?",
            (expression, limit),
        ).fetchall()
        return [int(key) for (key,) in rows]

    def _count_capped(self, word: str) -> int:
        """In how many chunks ``word`` occurs, counting no further than the common threshold."""
        (count,) = self.conn.execute(
            "SELECT count(*) FROM (SELECT 1 FROM search_fts WHERE search_fts MATCH ? LIMIT ?)",
            (_quoted(word), COMMON_WORD_CHUNKS),
        ).fetchone()
        return int(count)

    def _vector_ranking(self, query_vector: npt.ArrayLike, limit: int) -> list[int]:
        vector = np.asarray(query_vector, dtype=np.float32).reshape(-1)
        if vector.shape[0] != self.dim:
            raise ValueError(f"query vector has {vector.shape[0]} dimensions, index {self.dim}")
        matches: Any = self._vectors.search(vector, limit, threads=1)
        return [int(key) for key in matches.keys]

    def _best_per_doc(self, fused: dict[int, float], k: int, words: list[str]) -> list[Hit]:
        if not fused:
            return []
        marks = ",".join("?" * len(fused))
        rows = self.conn.execute(
            f"SELECT key, doc_id, chunk FROM search_chunk WHERE key IN ({marks})", list(fused)
        ).fetchall()
        best: dict[bytes, tuple[float, int, int]] = {}
        for key, doc_id, chunk in rows:
            score = fused[int(key)]
            current = best.get(bytes(doc_id))
            if current is None or (score, -chunk) > (current[0], -current[1]):
                best[bytes(doc_id)] = (score, int(chunk), int(key))
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0], item[1][1]))[:k]
        texts = self._texts([key for _, (_, _, key) in ranked])
        return [
            Hit(doc_id, chunk, score, snippet_of(texts.get(key, ""), words))
            for doc_id, (score, chunk, key) in ranked
        ]

    def _texts(self, keys: list[int]) -> dict[int, str]:
        """The text of a few chunks: read only for the hits, not for every candidate."""
        marks = ",".join("?" * len(keys))
        rows = self.conn.execute(
            f"SELECT key, text FROM search_text WHERE key IN ({marks})", keys
        ).fetchall()
        return {int(key): str(text) for key, text in rows}

    # --- helpers ------------------------------------------------------------------------

    def _checked(self, vectors: npt.ArrayLike, count: int) -> npt.NDArray[np.float16]:
        array = np.asarray(vectors, dtype=np.float32)
        if array.ndim != 2 or array.shape != (count, self.dim):
            raise ValueError(f"expected vectors of shape ({count}, {self.dim}), got {array.shape}")
        return array.astype(VECTOR_DTYPE)

    def _remove_rows(self, doc_id: bytes) -> list[int]:
        rows = self.conn.execute(
            "SELECT c.key, t.text FROM search_chunk AS c JOIN search_text AS t USING (key) "
            "WHERE c.doc_id = ?",
            (doc_id,),
        ).fetchall()
        for key, text in rows:
            self.conn.execute(
                "INSERT INTO search_fts (search_fts, rowid, text) VALUES ('delete', ?, ?)",
                (key, text),
            )
            self.conn.execute("DELETE FROM search_text WHERE key = ?", (key,))
            self.conn.execute("DELETE FROM search_vector WHERE key = ?", (key,))
        self.conn.execute("DELETE FROM search_chunk WHERE doc_id = ?", (doc_id,))
        return [int(key) for key, _ in rows]

    def _drop_vectors(self, keys: list[int]) -> None:
        present = [key for key in keys if self._vectors.contains(key)]
        if present:
            self._vectors.remove(np.array(present, dtype=np.uint64))

    def _generation(self) -> int:
        (value,) = self.conn.execute(
            "SELECT value FROM search_meta WHERE name = 'generation'"
        ).fetchone()
        return int(value)

    def _bump_generation(self) -> None:
        self.conn.execute("UPDATE search_meta SET value = value + 1 WHERE name = 'generation'")

    def _savepoint(self) -> _Savepoint:
        return _Savepoint(self.conn)

    def _new_vectors(self) -> Index:
        return Index(ndim=self.dim, metric="cos", dtype="f16")

    def _open_vectors(self) -> Index:
        """The saved graph if it reflects the current generation, else rebuilt from SQLite."""
        try:
            saved = int(self._generation_path.read_text(encoding="ascii"))
        except (OSError, ValueError):
            saved = -1
        if saved == self._generation() and self._path.is_file():
            index = self._new_vectors()
            index.load(str(self._path))
            return index
        index = self._new_vectors()
        rows = self.conn.execute("SELECT key, vector FROM search_vector").fetchall()
        size = self.dim * np.dtype(VECTOR_DTYPE).itemsize
        rows = [(key, blob) for key, blob in rows if len(blob) == size]  # another model's: skip
        if rows:
            keys = np.array([key for key, _ in rows], dtype=np.uint64)
            vectors = np.stack([np.frombuffer(blob, dtype=VECTOR_DTYPE) for _, blob in rows])
            index.add(keys, vectors, threads=1)
        return index


class _Savepoint:
    """A nestable transaction: works inside the caller's transaction and outside one."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("SAVEPOINT search_index")

    def __exit__(self, kind: type[BaseException] | None, *rest: object) -> None:
        if kind is not None:
            self.conn.execute("ROLLBACK TO search_index")
        self.conn.execute("RELEASE search_index")


def _query_words(query: str) -> list[str]:
    """The query's distinct words, without function words unless nothing else is left."""
    words = list(dict.fromkeys(_WORD.findall(query.lower())))
    content = [word for word in words if word not in STOP_WORDS]
    return content or words


def _quoted(word: str) -> str:
    """A word as an FTS5 string: user syntax (NEAR, *, quotes) can never break MATCH."""
    return '"' + word.replace('"', '""') + '"'


def snippet_of(text: str, words: Sequence[str]) -> str:
    """About ``SNIPPET_CHARS`` of ``text`` around the first query word in it (else its start)."""
    text = " ".join(text.split())
    if len(text) <= SNIPPET_CHARS:
        return text
    lowered = text.lower()
    found = [i for i in (lowered.find(word[:5]) for word in words) if i >= 0]
    start = max(0, min(found, default=0) - SNIPPET_CHARS // 4)
    if start > 0:
        start = text.find(" ", start) + 1 or start
    end = start + SNIPPET_CHARS
    piece = text[start:end]
    if end < len(text):
        piece = piece.rsplit(" ", 1)[0]
    return ("…" if start > 0 else "") + piece + ("…" if end < len(text) else "")


@cache
def _search_pool() -> ThreadPoolExecutor:
    """One thread for vector searches, shared by every index in the process."""
    return ThreadPoolExecutor(1, thread_name_prefix="shoal-vector-search")
