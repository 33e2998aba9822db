"""Reading a file version's bytes back out of the events that carry its chunks.

A chunk's bytes are never stored apart from the sealed event that brought them (design
note 11): a ``blob.chunk`` event of its own, or inline in a ``file.put`` record, which may
sit in a ``file.batch`` with many others (note 32). So reading a version means opening
those events again, a chunk at a time (bounded memory), and reusing an opened batch for
the next file of it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import TYPE_CHECKING

from engine.files import (
    SLOT_BITS,
    T_FILE_BATCH,
    FileVersion,
    Location,
    chunk_locations,
    event_rowid,
    file_entry,
    version,
)
from eventlog.errors import NotFoundError
from eventlog.payload import Payload, field_bytes

if TYPE_CHECKING:
    from engine.engine import Engine


class OpenedRecords:
    """The last few file events opened for their chunks, by local rowid.

    A ``file.batch`` carries many small files' chunks: a mirror writing them one by one
    would otherwise decrypt the same event once a file. Bounded, as the events are big."""

    def __init__(self, engine: Engine, size: int = 4) -> None:
        self.engine, self.size = engine, size
        self._opened: OrderedDict[int, Payload] = OrderedDict()

    def record(self, number: int) -> Payload | None:
        """The payload of the record numbered ``number``; None if its event is gone."""
        rowid = event_rowid(number)
        payload = self._opened.get(rowid)
        if payload is None:
            raw = self.engine.store.event_by_rowid(rowid)
            if raw is None:
                return None
            payload = self.engine.keyring.open_payload(raw.decoded())
            self._opened[rowid] = payload
            if len(self._opened) > self.size:
                self._opened.popitem(last=False)
        else:
            self._opened.move_to_end(rowid)
        if payload["t"] == T_FILE_BATCH:
            record: Payload = payload["files"][number & ((1 << SLOT_BITS) - 1)]
            return record
        return payload


def iter_content(
    engine: Engine,
    found: FileVersion,
    where: dict[bytes, Location] | None = None,
    opened: OpenedRecords | None = None,
) -> Iterator[bytes]:
    """The exact bytes of one version, a chunk at a time (bounded memory).

    ``where``: the chunks' locations, if the caller looked them up already; ``opened``:
    events opened for earlier files, to reuse.
    """
    store = engine.store
    where = chunk_locations(store, found.chunks) if where is None else where
    opened = OpenedRecords(engine, 1) if opened is None else opened
    for chunk_id in found.chunks:
        location = where.get(chunk_id)
        if location is None:
            raise NotFoundError(
                f"{found.path}: chunk {chunk_id[:6].hex()} has not arrived yet (sync first)"
            )
        number, slot = location
        payload = opened.record(number)
        if payload is None:
            raise NotFoundError(f"{found.path}: the event holding a chunk is gone")
        if slot < 0:
            yield field_bytes(payload, "data")
        else:
            yield payload["inline"][slot][1]


def current_bytes(engine: Engine, doc_id: bytes) -> bytes:
    """A file's current content: the merged body for text files, the winner's chunks else."""
    entry = file_entry(engine.store, doc_id)
    if entry is None:
        raise NotFoundError(f"document {doc_id.hex()} is not a file")
    if entry.deleted:
        raise NotFoundError(f"{entry.path} is deleted (get an older version with --at)")
    if entry.text:
        return str(engine.open(doc_id).body).encode("utf-8")
    return b"".join(iter_content(engine, version(engine.store, entry.rowid)))
