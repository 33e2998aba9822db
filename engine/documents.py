"""The document schema and the live (in-memory) form of a document.

A document is a pycrdt ``Doc`` with two roots: ``meta`` (a map: ``title``, ``created``, and
``tags`` as a nested map tag -> True, so concurrent tag adds merge as a set) and ``body`` (a
text). Anything else a newer replica adds is carried along untouched.

pycrdt is imported on first use, not with this module: commands that never open a document
(``status``, ``log``, ``verify``) should not pay its import on every start.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pycrdt import Doc, Map, Text

DOC_ID_BYTES: Final = 16
META: Final = "meta"
BODY: Final = "body"


def new_doc_id() -> bytes:
    return os.urandom(DOC_ID_BYTES)


class LiveDoc:
    """A document held in memory, and the local edits not yet written as an event.

    The next event is the diff between the document and its state vector at the last flush
    (``take_pending``): compact, because Yjs squashes a burst of keystrokes into runs. Two
    other designs were measured and dropped: capturing each transaction's update
    (``Doc.observe``) and merging them at flush gives 10x larger events for typing
    (578 kB vs 57 kB for 30k trace edits: ``merge_updates`` does not squash), and the diff's
    one weakness, carrying the document's whole delete set, only shows when every edit is its
    own event. Updates from the log are applied with :meth:`apply_from_log`, which moves the
    flush point past them, so an event never carries someone else's changes under our name;
    the engine flushes our pending edits first.
    """

    __slots__ = (
        "body",
        "dirty_since",
        "doc",
        "doc_id",
        "edits",
        "flushed_state",
        "last_rowid",
        "meta",
    )

    def __init__(self, doc_id: bytes) -> None:
        from pycrdt import Doc, Map, Text

        self.doc_id = doc_id
        self.doc: Doc = Doc()  # type: ignore[type-arg]
        self.meta: Map = self.doc.get(META, type=Map)  # type: ignore[type-arg]
        self.body: Text = self.doc.get(BODY, type=Text)
        self.flushed_state = self.doc.get_state()
        self.edits = 0
        self.dirty_since: float | None = None
        self.last_rowid = 0
        """Highest event rowid folded into ``doc``."""

    def apply_from_log(self, update: bytes) -> None:
        """Merge an update that is already an event (remote, or ours from the store).

        Call only with no pending local edits (flush first), or they would be lost from
        the next diff.
        """
        self.doc.apply_update(update)
        self.flushed_state = self.doc.get_state()

    @property
    def dirty(self) -> bool:
        return self.dirty_since is not None

    def take_pending(self) -> bytes:
        """The local edits since the last flush, as one update; resets the counters."""
        update = self.doc.get_update(self.flushed_state)
        self.flushed_state = self.doc.get_state()
        self.edits = 0
        self.dirty_since = None
        return update


def initialize(live: LiveDoc, title: str, text: str, tags: list[str], created_ms: int) -> None:
    """Fill a brand-new document's meta and body in one transaction."""
    from pycrdt import Map

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


def tag_names(value: object) -> list[str]:
    """The tags of a ``meta["tags"]`` value (a map tag -> True), sorted."""
    from pycrdt import Map

    return sorted(value.keys()) if isinstance(value, Map) else []


def summarize(live: LiveDoc) -> Summary:
    meta = live.meta
    title = meta.get("title")
    created = meta.get("created")
    return Summary(
        title if isinstance(title, str) else "",
        tag_names(meta.get("tags")),
        int(created) if isinstance(created, int | float) else 0,  # Yjs numbers are floats
        len(live.body),  # pycrdt counts text length in UTF-8 bytes
    )


def set_title(live: LiveDoc, title: str) -> None:
    with live.doc.transaction():
        live.meta["title"] = title


def add_tag(live: LiveDoc, tag: str) -> None:
    from pycrdt import Map

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


def text_edits(old: str, new: str) -> list[tuple[int, int, str]]:
    """Edits turning ``old`` into ``new`` as (utf-8 byte offset, bytes deleted, insert),
    last first so that applying them in order keeps the earlier offsets valid.

    pycrdt indexes text by UTF-8 bytes; the diff runs on lines (fast on big files), then on
    characters inside each changed block, so a one-word edit stays a one-word edit and two
    replicas' edits of different words merge.
    """
    if old == new:
        return []
    prefix = 0
    limit = min(len(old), len(new))
    while prefix < limit and old[prefix] == new[prefix]:
        prefix += 1
    suffix = 0
    while suffix < limit - prefix and old[-1 - suffix] == new[-1 - suffix]:
        suffix += 1
    old_mid, new_mid = old[prefix : len(old) - suffix], new[prefix : len(new) - suffix]
    edits: list[tuple[int, int, str]] = []
    base = len(old[:prefix].encode("utf-8"))
    if len(old_mid) * len(new_mid) > 4_000_000:  # a wholesale rewrite: one replace
        edits.append((base, len(old_mid.encode("utf-8")), new_mid))
        return edits
    matcher = difflib.SequenceMatcher(None, old_mid, new_mid, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag == "equal":
            continue
        offset = base + len(old_mid[:i1].encode("utf-8"))
        edits.append((offset, len(old_mid[i1:i2].encode("utf-8")), new_mid[j1:j2]))
    edits.reverse()
    return edits
