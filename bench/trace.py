"""The automerge-paper editing trace (../shared/data), and plain pycrdt replaying it."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from pycrdt import Doc, Text

from bench._common import now

TRACE = Path(__file__).resolve().parents[2] / "shared" / "data" / "automerge-paper.json.gz"
QUICK_PATCHES = 30_000

Patch = tuple[int, int, str]


def load_trace(path: Path = TRACE) -> tuple[str, str, list[Patch]]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        data: dict[str, Any] = json.load(fh)
    patches = [(int(p), int(d), str(s)) for txn in data["txns"] for p, d, s in txn["patches"]]
    return data["startContent"], data["endContent"], patches


def run_pycrdt(start: str, patches: list[Patch]) -> tuple[float, str]:
    """Seconds for plain pycrdt, one transaction per patch; and the resulting text."""
    t0 = now()
    doc: Doc = Doc()  # type: ignore[type-arg]
    text = doc.get("body", type=Text)
    if start:
        with doc.transaction():
            text.insert(0, start)
    for pos, delete, insert in patches:
        with doc.transaction():
            if delete:
                del text[pos : pos + delete]
            if insert:
                text.insert(pos, insert)
    return now() - t0, str(text)
