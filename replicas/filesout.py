"""Getting a file out of the vault: by path or document, now or as of any event, byte-exact."""

from __future__ import annotations

import os
import posixpath
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

from engine import file_content, files
from eventlog.errors import AmbiguousError, NotFoundError, StorageError
from eventlog.store import hex_prefix_bounds
from replicas.vault import Replica


def resolve_file(replica: Replica, target: str) -> bytes:
    """A file document named by its vault path or by a unique hex prefix of its id."""
    store = replica.store
    entry = files.entry_at_path(store, target)
    if entry is not None:
        return entry.doc_id
    rows = store.query_all("SELECT doc FROM files WHERE path = ? ORDER BY version DESC", (target,))
    if rows:
        return bytes(rows[0][0])  # a deleted file: its versions are still there
    try:
        low, high = hex_prefix_bounds(target, 16)
    except Exception:
        raise NotFoundError(f"no file {target}") from None
    rows = store.query_all("SELECT doc FROM files WHERE doc BETWEEN ? AND ? LIMIT 2", (low, high))
    if not rows:
        raise NotFoundError(f"no file {target}")
    if len(rows) > 1:
        raise AmbiguousError(f"document prefix {target} is ambiguous")
    return bytes(rows[0][0])


def version_at(replica: Replica, doc_id: bytes, event_prefix: str) -> files.FileVersion:
    """The version of a file as of an event: the one it made (a ``file.batch`` makes one
    a file), or the one in force then.

    "In force" is the winner among the versions ordered at or before the event by
    (lamport, author) — the same cut ``cat --at`` uses, so every replica answers the same.
    """
    event = replica.store.resolve_event(event_prefix)
    history = files.versions(replica.store, doc_id)
    for found in history:
        if files.event_rowid(found.rowid) == event.rowid:
            return found
    cut = (event.lamport, event.author)
    before = [v for v in history if (v.lamport, v.author) <= cut]
    if not before:
        raise NotFoundError(f"the file did not exist yet at event {event_prefix}")
    named = {base for v in before for base in _bases(replica, v)}
    heads = [v for v in before if v.version_id not in named] or before
    return max(heads, key=lambda v: v.order)


def _bases(replica: Replica, found: files.FileVersion) -> list[bytes]:
    rows = replica.store.query_all("SELECT base FROM file_bases WHERE version = ?", (found.rowid,))
    return [bytes(row[0]) for row in rows]


def content(replica: Replica, doc_id: bytes, at: str | None) -> Iterator[bytes]:
    if at is None:
        entry = files.file_entry(replica.store, doc_id)
        if entry is not None and entry.text and not entry.deleted:
            yield file_content.current_bytes(replica.engine, doc_id)
            return
        if entry is None or entry.deleted:
            raise NotFoundError(
                f"{entry.path if entry else doc_id.hex()} is deleted (name a version with --at)"
            )
        yield from file_content.iter_content(
            replica.engine, files.version(replica.store, entry.rowid)
        )
        return
    found = version_at(replica, doc_id, at)
    if found.deleted:
        raise NotFoundError(f"{found.path} was deleted as of that event")
    yield from file_content.iter_content(replica.engine, found)


def write_version(replica: Replica, doc_id: bytes, at: str | None, out: Path | None) -> None:
    """Stream the content to ``out`` (atomically: a temp file renamed) or to stdout.

    ``out`` may be a directory, as for ``cp``: the file keeps its name in it. An OS error
    names the file written, not the temporary one.
    """
    blocks = content(replica, doc_id, at)
    if out is None:
        for block in blocks:
            sys.stdout.buffer.write(block)
        sys.stdout.buffer.flush()
        return
    if out.is_dir():
        entry = files.file_entry(replica.store, doc_id)
        out = out / posixpath.basename(entry.path if entry else doc_id.hex())
    temp = out.parent / f".shoal-tmp-{secrets.token_hex(6)}"
    try:
        with open(temp, "xb") as stream:
            for block in blocks:
                stream.write(block)
        os.replace(temp, out)
    except OSError as exc:
        raise StorageError(f"cannot write {out}: {exc.strerror or exc}") from exc
    finally:
        temp.unlink(missing_ok=True)
