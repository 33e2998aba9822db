"""Local file writes: bytes from a stream become chunk records and a ``file.put`` record.

The stream is read once, a chunk at a time: each chunk is hashed with the vault's chunk key,
chunks the vault already has are only referenced (deduplication across files and versions),
new large chunks are written at once as ``blob.chunk`` events, and a small new chunk (a
small file, or a large file's tail) rides inline in the ``file.put``. So memory stays bounded
by one chunk whatever the file's size, and a small file costs one record (inside a
``FileWriter.batch``, many files' records share one ``file.batch`` event).

A text file (valid UTF-8, no NUL, up to ``TEXT_MAX``) also becomes the document's body, as
edits against the state the caller last saw (``Engine.merge_text``), so concurrent edits of
it on two replicas merge.
"""

from __future__ import annotations

import contextlib
import functools
import mimetypes
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO, Final

from engine import files
from engine.blobs import BlobKeys, cut
from engine.documents import new_doc_id
from eventlog.payload import Payload

if TYPE_CHECKING:
    from engine.engine import Engine

TEXT_MAX: Final = 4 * 1024 * 1024
"""Larger files are stored as bytes only: a CRDT body that size would merge slowly."""
RUN_BYTES: Final = 4 * 1024 * 1024
"""A big file's new chunks commit in runs of about this many bytes: each commit is two
``fdatasync`` calls (the pack, the WAL), ~1 s of W4c's 256 chunks one by one, while a run
still lets the daemon send the start of the file as the rest is read."""


@dataclass(frozen=True, slots=True)
class Put:
    """What one ingest did."""

    doc_id: bytes
    path: str
    content_hash: bytes
    size: int
    changed: bool
    """False: the vault already had exactly this content at this path (nothing written)."""
    new_bytes: int
    """Bytes of chunks the vault did not have (what deduplication could not save)."""
    base_state: bytes | None
    """For a text file, the document state the file now matches (the next merge base)."""
    text: bool


def guess_mime(path: str, head: bytes, text: bool) -> str:
    mime = _mime_of_suffixes(_last_suffixes(path))
    if mime:
        return mime
    return "text/plain" if text else "application/octet-stream"


def _last_suffixes(path: str) -> str:
    """``"".join(PurePosixPath(path).suffixes[-2:])`` without building a path (~10 us)."""
    name = path.rpartition("/")[2]
    if name.endswith("."):
        return ""
    return "".join("." + part for part in name.lstrip(".").split(".")[1:][-2:])


@functools.lru_cache(maxsize=4096)
def _mime_of_suffixes(suffixes: str) -> str | None:
    """By a name's last two suffixes (``.tar.gz`` counts as a whole), as ``mimetypes`` says:
    its lookup was ~20 us a file, and a folder has few distinct suffixes."""
    return mimetypes.guess_type(f"name{suffixes}", strict=False)[0]


def is_text(data: bytes) -> bool:
    if b"\x00" in data:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def unchanged_text(
    engine: Engine, entry: files.FileEntry | None, path: str, text: bool, kept: bytearray
) -> bool:
    """The file already says what the merged document says (say, the mirror wrote it and
    crashed before noting so): diffing it against an older base would apply merged-in edits
    a second time, so there is nothing to ingest."""
    if not (text and entry is not None and entry.text and not entry.deleted):
        return False
    return entry.path == path and str(engine.open(entry.doc_id).body) == kept.decode("utf-8")


class FileWriter:
    """Writes files into one engine's vault (the folder layer's ``Folder`` uses it).

    Inside ``batch()`` the records of many files go out as one ``file.batch`` event: the
    per-event costs (a signature, a seal, a stored and synced row; a verification and an
    open on every replica that receives it) are paid once per batch, not once a file.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.keys = BlobKeys(engine.keyring, engine.log.vault_format())
        self._pending: list[Payload] | None = None
        """The records of the batch in progress (None: no batch, each record is an event)."""
        self._pending_docs: set[bytes] = set()
        self._pending_paths: set[str] = set()
        self._pending_chunks: set[bytes] = set()
        self._pending_bytes = 0

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction whose file records are written as few ``file.batch`` events.

        Until a batch is written its records are not in the tables: a record for a file
        (document or path) already waiting writes the batch first, so every lookup sees
        what came before it, as without a batch. On an exception the transaction rolls
        back, and the waiting records go with it. Nested uses join the outer batch.
        """
        if self._pending is not None:
            yield
            return
        with self.engine.store.atomic():
            self._pending = []
            try:
                yield
                self._flush()
            finally:
                self._pending = None
                self._clear_pending()

    def _clear_pending(self) -> None:
        self._pending_docs.clear()
        self._pending_paths.clear()
        self._pending_chunks.clear()
        self._pending_bytes = 0

    def _settle(self, doc_id: bytes | None, path: str | None) -> None:
        """Write the waiting batch if it holds a record of this document or path."""
        if doc_id in self._pending_docs or path in self._pending_paths:
            self._flush()

    def _emit(self, record: Payload, inline: list[tuple[int, bytes]] | None = None) -> None:
        """Write a file record now, or add it to the batch in progress."""
        if self._pending is None:
            self.engine.append_record(record)
            return
        self._pending.append(record)
        self._pending_docs.add(record["doc"])
        self._pending_paths.add(record["path"])
        for index, data in inline or ():
            self._pending_chunks.add(record["chunks"][index][0])
            self._pending_bytes += len(data)
        if (
            len(self._pending) >= files.BATCH_MAX_RECORDS
            or self._pending_bytes >= files.BATCH_MAX_BYTES
        ):
            self._flush()

    def _flush(self) -> None:
        pending = self._pending
        if not pending:
            return
        self.engine.append_record(pending[0] if len(pending) == 1 else files.batch_payload(pending))
        pending.clear()
        self._clear_pending()

    def _read(
        self, stream: BinaryIO
    ) -> tuple[bytes, int, list[tuple[bytes, int]], list[tuple[int, bytes]], bytearray, int]:
        """Cut and hash the stream, storing its new big chunks as it goes (in runs); the
        content hash, size, chunk references, new small chunks (to ride inline), the
        content while it may be text, and how many bytes were new."""
        hasher = self.keys.content_hasher()
        refs: list[tuple[bytes, int]] = []
        inline: list[tuple[int, bytes]] = []
        seen: set[bytes] = set()
        kept = bytearray()  # the content while it may still be a text file
        run: list[Payload] = []  # new big chunks not stored yet (at most ~RUN_BYTES)
        size = new_bytes = run_bytes = 0
        for data in cut(stream):
            hasher.update(data)
            size += len(data)
            if size <= TEXT_MAX:
                kept += data
            chunk_id = self.keys.chunk_id(data)
            refs.append((chunk_id, len(data)))
            if chunk_id in seen or self._has_chunk(chunk_id):
                continue
            seen.add(chunk_id)
            new_bytes += len(data)
            if len(data) <= files.INLINE_MAX:
                inline.append((len(refs) - 1, data))
                continue
            run.append(files.chunk_payload(chunk_id, data))
            run_bytes += len(data)
            if run_bytes >= RUN_BYTES:
                self._store_run(run)
                run_bytes = 0
        self._store_run(run)
        return hasher.digest(), size, refs, inline, kept, new_bytes

    def _store_run(self, run: list[Payload]) -> None:
        """A run of chunk events in one transaction (the caller's, if it is in one)."""
        if run:
            with self.engine.store.atomic():
                for payload in run:
                    self.engine.append_record(payload)
            run.clear()

    def _has_chunk(self, chunk_id: bytes) -> bool:
        return chunk_id in self._pending_chunks or files.has_chunk(self.engine.store, chunk_id)

    def put(
        self,
        path: str,
        stream: BinaryIO,
        *,
        mtime_ms: int,
        doc_id: bytes | None = None,
        base_state: bytes | None = None,
        mime: str | None = None,
        still: Callable[[], None] | None = None,
        edited: bytes | None = None,
    ) -> Put:
        """Store the stream's bytes as the new version of ``path`` (or of ``doc_id``).

        ``still`` is called once the last byte is read, before anything of the new version
        is written; if it raises (the source changed or vanished while it was read), nothing
        is written but the chunks already stored, which are sound content any version may
        use. A check after the write would come too late: a torn version would be synced,
        and a text file's torn content merged into its document, so that the next pass
        would merge the same edits a second time.

        ``edited``: the content hash of the version this change was made to (a folder's
        record of the file), or None when the caller had no version of it. Bytes then name
        what they were made to (``files.edit_bases``), and a file made without any of the
        versions the vault holds at its path (a new mirror over a folder that already had
        files, or a new file that sync overtook) stands beside them as a conflict instead
        of burying them. Text supersedes every version: it was merged with all of them.
        """
        files.check_path(path)
        engine, store = self.engine, self.engine.store
        content_hash, size, refs, inline, kept, new_bytes = self._read(stream)
        if still is not None:
            still()
        text = size <= TEXT_MAX and is_text(bytes(kept))
        with store.atomic():
            self._settle(doc_id, path)
            entry = files.file_entry(store, doc_id) if doc_id else files.entry_at_path(store, path)
            if entry is not None and entry.doc_id in self._pending_docs:  # moved here, unwritten
                self._flush()
                entry = files.entry_at_path(store, path)
            if entry is not None and doc_id is None:
                doc_id = entry.doc_id
            unchanged = (
                entry is not None
                and not entry.deleted
                and entry.path == path
                and entry.hash == content_hash
                and not entry.conflict
            )
            if unchanged and entry is not None:
                return Put(entry.doc_id, path, content_hash, size, False, 0, base_state, entry.text)
            if unchanged_text(engine, entry, path, text, kept):
                assert entry is not None
                merged = bytes(engine.open(entry.doc_id).doc.get_update())
                return Put(entry.doc_id, path, content_hash, size, False, 0, merged, True)
            new_doc = doc_id is None
            doc_id = doc_id or new_doc_id()
            state = None
            if text:
                state = self._write_body(doc_id, path, kept.decode("utf-8"), base_state)
            if new_doc or (edited is None and not text):
                base = []  # no version to supersede, or none this change was made to
            else:
                base = files.edit_bases(store, doc_id, None if text else edited)
            self._emit(
                files.put_payload(
                    doc_id,
                    path,
                    size=size,
                    mtime_ms=mtime_ms,
                    mime=mime or guess_mime(path, bytes(kept[:512]), text),
                    content_hash=content_hash,
                    chunks=refs,
                    inline=inline,
                    base=base,
                    text=text,
                ),
                inline,
            )
        return Put(doc_id, path, content_hash, size, True, new_bytes, state, text)

    def _write_body(self, doc_id: bytes, path: str, text: str, base_state: bytes | None) -> bytes:
        engine = self.engine
        if engine.store.query_one("SELECT 1 FROM docs WHERE doc = ?", (doc_id,)) is None:
            engine.create_doc(posixpath.basename(path), doc_id=doc_id)
        return engine.merge_text(doc_id, text, base_state)

    def delete(self, doc_id: bytes, edited: bytes | None = None) -> bool:
        """A tombstone for the file (its versions stay restorable); False if already gone.

        ``edited``: the content hash of what was deleted, if known (see ``put``)."""
        store = self.engine.store
        with store.atomic():
            self._settle(doc_id, None)
            entry = files.file_entry(store, doc_id)
            if entry is None or entry.deleted:
                return False
            base = files.edit_bases(store, doc_id, edited)
            self._emit(files.delete_payload(doc_id, entry.path, base))
        return True

    def rename(self, doc_id: bytes, new_path: str, *, mtime_ms: int) -> None:
        """The same content under a new path: a new version, no new chunks."""
        store = self.engine.store
        with store.atomic():
            self._settle(doc_id, new_path)
            entry = files.file_entry(store, doc_id)
            if entry is None:
                raise files.UnsafePathError("no such file to rename")
            current = files.version(store, entry.rowid)
            marks = ",".join("?" * len(current.chunks))
            rows = store.query_all(
                f"SELECT id, size FROM chunks WHERE id IN ({marks})", current.chunks
            )
            sizes = {bytes(row[0]): int(row[1]) for row in rows}
            refs = [(cid, int(sizes.get(cid, 0))) for cid in current.chunks]
            base = [head.version_id for head in files.heads(store, doc_id)]
            self._emit(
                files.put_payload(
                    doc_id,
                    new_path,
                    size=current.size,
                    mtime_ms=mtime_ms,
                    mime=current.mime,
                    content_hash=current.hash or b"",
                    chunks=refs,
                    inline=[],
                    base=base,
                    text=current.text,
                )
            )
