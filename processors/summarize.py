"""Summaries and answers from an Ollama chat model.

A document longer than one model context is summarized map-reduce: each chunk on its own
("map"), then the partial summaries together ("reduce"), again in groups if even those do not
fit. The user's prompt (``[processors] summary_prompt`` in config) shapes the final summary;
the map step always asks for a faithful summary of a part. Temperature 0: the summary is
stored as derived data, and the same input should give the same text where the model allows.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from typing import Final

from processors.chunking import chunk_text
from processors.errors import ModelUnavailableError, ProcessingError
from processors.ollama_api import client, ollama_errors

SUMMARY_VERSION: Final = "1"
CHAT_TIMEOUT_S: Final = 600.0
"""A CPU-only Ollama can take minutes for one long chunk; a hung server still ends."""
MAX_REDUCE_ROUNDS: Final = 8

DEFAULT_PROMPT: Final = (
    "Summarize the document the user sends in a few sentences. Keep names, numbers and "
    "decisions. Answer with the summary only."
)
MAP_PROMPT: Final = (
    "The user sends one part of a longer document. Summarize this part in a few sentences, "
    "keeping names, numbers and decisions. Answer with the summary only."
)
ANSWER_PROMPT: Final = (
    "Answer the user's question using only the excerpts given. Each excerpt starts with its "
    "document id in square brackets; after each fact you use, cite that id in square "
    "brackets. If the excerpts do not contain the answer, say so."
)


def summarize(
    text: str,
    *,
    model: str,
    host: str | None = None,
    prompt: str | None = None,
    chunk_chars: int = 6000,
    timeout: float = CHAT_TIMEOUT_S,
) -> str:
    """A summary of ``text`` by ``model``; one chat call per chunk plus the reduce calls."""
    parts = chunk_text(text, max_chars=chunk_chars, overlap=0)
    if not parts:
        raise ProcessingError("no text to summarize")
    for _ in range(MAX_REDUCE_ROUNDS):
        if len(parts) == 1:
            return _chat(prompt or DEFAULT_PROMPT, parts[0], model, host, timeout)
        partials = [_chat(MAP_PROMPT, part, model, host, timeout) for part in parts]
        parts = chunk_text("\n\n".join(partials), max_chars=chunk_chars, overlap=0)
    raise ProcessingError(f"summaries by {model} do not get shorter than {chunk_chars} characters")


def answer(
    question: str,
    contexts: Sequence[tuple[str, str]],
    *,
    model: str,
    host: str | None = None,
    timeout: float = CHAT_TIMEOUT_S,
) -> str:
    """An answer to ``question`` from ``(doc id hex, text)`` excerpts, citing the doc ids."""
    excerpts = "\n\n".join(f"[{doc}] {' '.join(text.split())}" for doc, text in contexts)
    message = f"{excerpts}\n\nQuestion: {question.strip()}" if excerpts else question.strip()
    return _chat(ANSWER_PROMPT, message, model, host, timeout)


def _chat(system: str, user: str, model: str, host: str | None, timeout: float) -> str:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    with ollama_errors(host, model), closing(client(host, timeout)) as ollama:
        response = ollama.chat(
            model=model, messages=messages, stream=False, options={"temperature": 0}
        )
    content = (response.message.content or "").strip()
    if not content:
        raise ModelUnavailableError(f"Ollama model {model!r} returned an empty answer")
    return content
