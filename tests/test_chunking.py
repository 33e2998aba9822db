"""Chunking: bounded, structure-aware, overlapping, deterministic."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from processors.chunking import chunk_text
from tests.corpus import DOCUMENTS

TEXT = "\n\n".join(DOCUMENTS.values())


def words(text: str) -> list[str]:
    return text.split()


def test_blank_text_has_no_chunks() -> None:
    assert chunk_text("") == []
    assert chunk_text(" \n\n\t ") == []


def test_short_text_is_one_chunk() -> None:
    assert chunk_text("One short paragraph.\n\nAnd another.") == [
        "One short paragraph.\n\nAnd another."
    ]


def test_paragraphs_are_kept_whole_when_they_fit() -> None:
    chunks = chunk_text(TEXT, max_chars=700, overlap=0)
    paragraphs = [p for p in TEXT.split("\n\n") if len(p) <= 700]
    for paragraph in paragraphs:
        assert any(paragraph in chunk for chunk in chunks), paragraph[:40]


def test_long_paragraphs_are_cut_between_sentences() -> None:
    text = DOCUMENTS["bicycle"]
    chunks = chunk_text(text, max_chars=150, overlap=0)
    assert len(chunks) > 1
    assert all(chunk.rstrip().endswith((".", ";", ",")) or chunk is chunks[-1] for chunk in chunks)
    assert " ".join(chunks).split() == text.split()


def test_overlap_repeats_the_end_of_the_previous_chunk() -> None:
    chunks = chunk_text(TEXT, max_chars=300, overlap=60)
    for before, after in itertools.pairwise(chunks):
        head = after.split()[0]
        assert head in before[-60:], (before[-60:], after[:60])


def test_a_word_longer_than_a_chunk_is_cut() -> None:
    chunks = chunk_text("x" * 250, max_chars=100, overlap=0)
    assert "".join(chunks) == "x" * 250
    assert all(len(c) <= 100 for c in chunks)


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError):
        chunk_text("text", max_chars=100, overlap=100)
    with pytest.raises(ValueError):
        chunk_text("text", max_chars=100, overlap=-1)


@given(
    st.text(alphabet=st.sampled_from("ab .\n!?"), max_size=2000),
    st.integers(min_value=21, max_value=400),
    st.integers(min_value=0, max_value=19),
)
def test_chunks_are_bounded_cover_the_text_and_are_deterministic(
    text: str, max_chars: int, overlap: int
) -> None:
    chunks = chunk_text(text, max_chars=max_chars, overlap=overlap)
    assert chunks == chunk_text(text, max_chars=max_chars, overlap=overlap)
    assert all(0 < len(chunk) <= max_chars for chunk in chunks)
    if overlap == 0:  # without overlap the chunks are the text's words, in order
        assert "".join("".join(chunks).split()) == "".join(text.split())
    else:  # with it, every word that fits a chunk still appears whole in some chunk
        budget = max_chars - overlap - 1
        fitting = {w for w in words(text) if len(w) <= budget}
        assert fitting <= {w for chunk in chunks for w in words(chunk)}
