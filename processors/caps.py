"""What this replica can process, as advertised in its ``replica.caps`` events.

Detection is cheap on purpose (it runs at every ``shoal serve`` start): libraries are looked
up without importing the heavy ones, tesseract is started once, and Ollama is asked for its
models (``/api/tags``) with a short timeout, so an absent Ollama costs at most ``timeout``.
Config and ``--processors`` may override the result; that is the caller's business.
"""

from __future__ import annotations

import importlib.util
from contextlib import closing
from typing import Final

from processors.embed import LOCAL_NAME, local_model_available
from processors.errors import ModelUnavailableError
from processors.extract import DOCLING_FORMATS, PDF, PLAIN
from processors.ocr import tesseract_available
from processors.ollama_api import client, ollama_errors

EMBEDDING_FAMILIES: Final = frozenset({"bert", "nomic-bert", "xlm-roberta", "jina-bert-v2"})
"""Ollama model families that only embed (``/api/tags`` ``details.family``)."""


def detect_caps(*, ollama_host: str | None = None, timeout: float = 2.0) -> dict[str, object]:
    """``{"ocr": bool, "extract": [mime], "embed": [embedder name], "llm": [ollama model]}``."""
    embed: list[str] = [LOCAL_NAME] if local_model_available() else []
    ollama_embed, llm = _ollama_models(ollama_host, timeout)
    embed += [f"ollama:{name}" for name in ollama_embed]
    return {"ocr": tesseract_available(), "extract": _extractable(), "embed": embed, "llm": llm}


def _extractable() -> list[str]:
    """The mime types whose extractor's libraries are installed (not counting images: OCR)."""
    mimes = [PLAIN]
    if importlib.util.find_spec("docling") is not None:
        have_pdf = importlib.util.find_spec("pypdfium2") is not None
        mimes += [m for m in DOCLING_FORMATS if m != PDF or have_pdf]
    return sorted(mimes)


def _ollama_models(host: str | None, timeout: float) -> tuple[list[str], list[str]]:
    """(embedding models, chat models) the Ollama at ``host`` serves; both empty if none."""
    try:
        with ollama_errors(host), closing(client(host, timeout)) as ollama:
            listing = ollama.list()
    except ModelUnavailableError:
        return [], []
    embed, llm = [], []
    for entry in listing.models:
        name = entry.model or ""
        family = (entry.details.family if entry.details else None) or ""
        if not name:
            continue
        if family in EMBEDDING_FAMILIES or "embed" in name:
            embed.append(name)
        else:
            llm.append(name)
    return sorted(embed), sorted(llm)
