"""The document schema and the live (in-memory) form of a document.

A document is a pycrdt ``Doc`` with two roots: ``meta`` (a map: ``title``, ``created``, and
``tags`` as a nested map tag -> True, so concurrent tag adds merge as a set) and ``body`` (a
text). Anything else a newer replica adds is carried along untouched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Final

from pycrdt import Doc, Map, Text

DOC_ID_BYTES: Final = 16
META: Final = "meta"
BODY: Final = "body"


def new_doc_id() -> bytes:
    return os.urandom(DOC_ID_BYTES)


@dataclass(slots=True)
class LiveDoc:
    """A document held in memory, and what of it has not yet become an event."""

    doc_id: bytes
    doc: Doc  # type: ignore[type-arg]
    flushed_state: bytes
    """State vector at the last flush: the next local event is the diff from here."""
    edits: int = 0
    dirty_since: float | None = None
    last_rowid: int = 0
    """Highest event rowid folded into ``doc``."""
    extra: dict[str, int] = field(default_factory=dict)

    @property
    def meta(self) -> Map:  # type: ignore[type-arg]
        meta: Map = self.doc.get(META, type=Map)  # type: ignore[type-arg]
        return meta

    @property
    def body(self) -> Text:
        body: Text = self.doc.get(BODY, type=Text)
        return body

    @property
    def dirty(self) -> bool:
        return self.dirty_since is not None

    def mark_flushed(self) -> None:
        self.flushed_state = self.doc.get_state()
        self.edits = 0
        self.dirty_since = None


def empty_live(doc_id: bytes) -> LiveDoc:
    doc: Doc = Doc()  # type: ignore[type-arg]
    doc.get(META, type=Map)
    doc.get(BODY, type=Text)
    return LiveDoc(doc_id, doc, doc.get_state())


def initialize(live: LiveDoc, title: str, text: str, tags: list[str], created_ms: int) -> None:
    """Fill a brand-new document's meta and body in one transaction."""
    with live.doc.transaction():
        meta = live.meta
        meta["title"] = title
        meta["created"] = created_ms
        meta["tags"] = Map({tag: True for tag in tags})
        if text:
            live.body.insert(0, text)


@dataclass(frozen=True, slots=True)
class Summary:
    """What the ``docs`` listing shows of a document."""

    title: str
    tags: list[str]
    created_ms: int
    size: int


def summarize(live: LiveDoc) -> Summary:
    meta = live.meta
    title = meta.get("title")
    created = meta.get("created")
    tags = meta.get("tags")
    return Summary(
        title if isinstance(title, str) else "",
        sorted(tags.keys()) if isinstance(tags, Map) else [],
        int(created) if isinstance(created, int | float) else 0,  # Yjs numbers are floats
        len(str(live.body).encode("utf-8")),
    )


def set_title(live: LiveDoc, title: str) -> None:
    with live.doc.transaction():
        live.meta["title"] = title


def add_tag(live: LiveDoc, tag: str) -> None:
    with live.doc.transaction():
        tags = live.meta.get("tags")
        if not isinstance(tags, Map):
            live.meta["tags"] = Map({tag: True})
        else:
            tags[tag] = True


def edit_text(live: LiveDoc, pos: int, delete: int, insert: str) -> None:
    """One text edit as one transaction (the unit a user's keystroke is)."""
    body = live.body
    with live.doc.transaction():
        if delete:
            del body[pos : pos + delete]
        if insert:
            body.insert(pos, insert)
