"""Cutting extracted text into chunks small enough to embed and to show as a search snippet.

Chunks follow the text's own structure: whole paragraphs are packed together while they fit,
a long paragraph is cut between sentences, a long sentence between words, and only a word
longer than a chunk is cut inside. Each chunk after the first starts with the last
``overlap`` characters (from a word start) of the one before, so a fact that straddles a cut
still appears whole in one chunk. The same text always gives the same chunks: every replica
indexes a document the same way.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+")
_WHITESPACE = re.compile(r"\s+")


def chunk_text(text: str, *, max_chars: int = 1200, overlap: int = 150) -> list[str]:
    """The chunks of ``text``, each at most ``max_chars`` characters; [] for blank text."""
    if overlap < 0 or max_chars <= overlap + 1:
        raise ValueError(f"need 0 <= overlap < max_chars - 1, got {overlap=} {max_chars=}")
    budget = max_chars - overlap - 1  # room left for the overlap and the space joining it
    packed: list[str] = []
    current = ""
    for separator, piece in _pieces(text, budget):
        candidate = f"{current}{separator}{piece}" if current else piece
        if len(candidate) <= budget:
            current = candidate
        else:
            packed.append(current)
            current = piece
    if current:
        packed.append(current)
    if overlap == 0:
        return packed
    return packed[:1] + [
        f"{_tail(before, overlap)} {chunk}".lstrip() for before, chunk in itertools.pairwise(packed)
    ]


def _pieces(text: str, budget: int) -> Iterator[tuple[str, str]]:
    """(separator, piece) pairs, each piece at most ``budget`` characters."""
    for raw in _PARAGRAPH_BREAK.split(text):
        paragraph = raw.strip()
        if not paragraph:
            continue
        separator = "\n\n"
        for piece in _split(paragraph, budget):
            yield separator, piece
            separator = " "


def _split(paragraph: str, budget: int) -> Iterator[str]:
    """A paragraph in pieces that fit: itself, else its sentences, else their words."""
    if len(paragraph) <= budget:
        yield paragraph
        return
    for sentence in _SENTENCE_END.split(paragraph):
        if len(sentence) <= budget:
            yield sentence
            continue
        for word in _WHITESPACE.split(sentence):
            for start in range(0, len(word), budget):
                yield word[start : start + budget]


def _tail(chunk: str, overlap: int) -> str:
    """The last ``overlap`` characters of ``chunk``, starting at a word where there is one."""
    if len(chunk) <= overlap:
        return chunk
    tail = chunk[-overlap:]
    space = _WHITESPACE.search(tail)
    if space is not None and space.end() < len(tail):
        return tail[space.end() :]
    return tail
