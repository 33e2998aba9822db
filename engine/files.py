"""Files as documents: versions, tombstones, chunk references, and the current state.

A file is a document (random ``doc_id``) whose versions are ``file.put`` / ``file.delete``
records, each an event of its own or one of a ``file.batch`` event's (a folder batch's
records share one). Each version names the versions it replaces (``base``: the heads its
writer knew), so versions form a DAG per file, like git commits. A version no other
version names is a *head*; several heads with different contents are a conflict. Every
replica picks the same winner: a live version beats a deletion (as in Syncthing, a
modification survives a concurrent delete), then the highest ``(lamport, author)``. Losers
stay in history.

Text files also keep their content in the document body (a CRDT), so concurrent edits of a
text file merge instead of conflicting: for them the body is the truth, and a version's
chunks are the exact bytes it was made from (what ``get --at`` returns).

Content travels in chunks (``engine.blobs``): a small file's new chunk rides inline in its
``file.put`` record; a large file's new chunks go first, each in its own ``blob.chunk`` event of the
same author, so they always arrive before the version that needs them.
"""

from __future__ import annotations

import functools
import hashlib
import posixpath
import sqlite3
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from engine.blobs import ID_BYTES
from engine.documents import DOC_ID_BYTES
from eventlog.errors import NotFoundError, WrongTypeError
from eventlog.payload import Payload, field_bytes, field_int, field_str

if TYPE_CHECKING:
    from eventlog.envelope import Event
    from eventlog.store import Store

T_FILE_PUT: Final = "file.put"
T_FILE_DELETE: Final = "file.delete"
T_BLOB_CHUNK: Final = "blob.chunk"
T_FILE_BATCH: Final = "file.batch"
FILE_TYPES: Final = frozenset({T_FILE_PUT, T_FILE_DELETE, T_BLOB_CHUNK, T_FILE_BATCH})

SLOT_BITS: Final = 12
"""A version's number is its event's rowid shifted by this, plus its record's slot in a
``file.batch`` (0 otherwise): one integer, ordered like the log, the same after a rebuild."""
BATCH_MAX_RECORDS: Final = 256
"""A writer's ``file.batch`` holds at most this many records ..."""
BATCH_MAX_BYTES: Final = 1024 * 1024
"""... and about this many bytes of inline chunks (a mirror opens the event once for all)."""
_VERSION_PERSON: Final = b"shoal-v1-fver"

INLINE_MAX: Final = 256 * 1024
"""A new chunk up to this size rides inside its ``file.put`` record (none of its own)."""
MAX_PATH_BYTES: Final = 4096
MAX_BASE: Final = 64


class UnsafePathError(WrongTypeError):
    """A vault path that could escape a folder or is not a plain relative path."""


@functools.lru_cache(maxsize=1 << 16)
def check_path(path: str) -> str:
    """A vault path: relative, '/'-separated, normalized, nothing that climbs or hides.

    Remembered (a refused path raises, and is not): a file's path is checked where it is
    found, written and applied, ~14 us each, a tenth of ingesting a small file."""
    if not path or len(path.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise UnsafePathError(f"path {path[:60]!r}: empty or too long")
    if "\x00" in path or "\\" in path or path.startswith("/"):
        raise UnsafePathError(f"path {path[:60]!r}: not a relative '/'-separated path")
    parts = path.split("/")
    if any(part in ("", ".", "..") for part in parts) or posixpath.normpath(path) != path:
        raise UnsafePathError(f"path {path[:60]!r}: not normalized or climbs out of its folder")
    if unicodedata.normalize("NFC", path) != path:
        raise UnsafePathError(f"path {path[:60]!r}: not in Unicode NFC form")
    return path


@dataclass(frozen=True, slots=True)
class FileVersion:
    rowid: int
    """Its number: ``place(event rowid, slot)``."""
    doc_id: bytes
    version_id: bytes
    """What ``base`` lists name it by: its event's id, or ``version_id`` in a batch."""
    author: bytes
    lamport: int
    time_ms: int
    path: str
    size: int
    mtime_ms: int
    mime: str
    hash: bytes | None
    deleted: bool
    text: bool
    chunks: tuple[bytes, ...]
    superseded: bool

    @property
    def order(self) -> tuple[bool, int, bytes]:
        """The deterministic winner rule: live beats deleted, then (lamport, author)."""
        return (not self.deleted, self.lamport, self.author)


@dataclass(frozen=True, slots=True)
class FileEntry:
    """A file's current state (what ``shoal files`` lists)."""

    doc_id: bytes
    path: str
    size: int
    mime: str
    hash: bytes | None
    deleted: bool
    text: bool
    rowid: int
    """The winning version's number (``FileVersion.rowid``)."""
    versions: int
    conflict: bool


_VERSION_COLUMNS = (
    "rowid, doc, version_id, author, lamport, time_ms, path, size, mtime_ms, mime, hash,"
    " deleted, text, chunks, superseded"
)


def _version(row: tuple[Any, ...]) -> FileVersion:
    chunks = bytes(row[13])
    return FileVersion(
        int(row[0]),
        bytes(row[1]),
        bytes(row[2]),
        bytes(row[3]),
        int(row[4]),
        int(row[5]),
        str(row[6]),
        int(row[7]),
        int(row[8]),
        str(row[9]),
        None if row[10] is None else bytes(row[10]),
        bool(row[11]),
        bool(row[12]),
        tuple(chunks[i : i + ID_BYTES] for i in range(0, len(chunks), ID_BYTES)),
        bool(row[14]),
    )


# --- payloads -----------------------------------------------------------------------------


def put_payload(
    doc_id: bytes,
    path: str,
    *,
    size: int,
    mtime_ms: int,
    mime: str,
    content_hash: bytes,
    chunks: list[tuple[bytes, int]],
    inline: list[tuple[int, bytes]],
    base: list[bytes],
    text: bool,
) -> Payload:
    return {
        "t": T_FILE_PUT,
        "doc": doc_id,
        "path": check_path(path),
        "size": size,
        "mtime": mtime_ms,
        "mime": mime,
        "hash": content_hash,
        "chunks": [[cid, length] for cid, length in chunks],
        "inline": [[index, data] for index, data in inline],
        "base": base,
        "text": text,
    }


def delete_payload(doc_id: bytes, path: str, base: list[bytes]) -> Payload:
    return {"t": T_FILE_DELETE, "doc": doc_id, "path": check_path(path), "base": base}


def chunk_payload(chunk_id: bytes, data: bytes) -> Payload:
    return {"t": T_BLOB_CHUNK, "id": chunk_id, "data": data}


def batch_payload(records: list[Payload]) -> Payload:
    """Several files' ``file.put`` / ``file.delete`` records in one event: one signature,
    one seal and one stored row for a whole folder batch, instead of one a file."""
    return {"t": T_FILE_BATCH, "files": records}


def place(rowid: int, slot: int) -> int:
    """The number of the record at ``slot`` of the event at local ``rowid``."""
    return rowid << SLOT_BITS | slot


def event_rowid(number: int) -> int:
    """The local rowid of the event holding the record numbered ``number``."""
    return number >> SLOT_BITS


def version_id(event_id: bytes, slot: int) -> bytes:
    """The id that ``base`` lists name a batched record's version by (a lone record's is
    its event's id): derived, so every replica computes the same one."""
    return hashlib.blake2b(
        event_id + slot.to_bytes(2, "big"), digest_size=32, person=_VERSION_PERSON
    ).digest()


# --- events -> tables (called by the engine inside the event's transaction) ---------------


def apply_record(
    conn: sqlite3.Connection, rowid: int, event: Event, payload: Payload, *, ours: bool = False
) -> bytes | None:
    """Fold one file event into the tables; returns the document it touched, if it names one.

    ``ours``: the event was just written here, so no stored version can name it as its
    base yet (its id is a hash over a fresh random salt) and that lookup is skipped.

    A ``file.batch`` is checked whole before any of it is folded: a malformed record makes
    the whole event inert, never half of it. It names no one document (None).

    Raises a ``DecodeError`` for a malformed record; the engine notes it and moves on (the
    event stays stored and synced: it may be valid to a newer replica).
    """
    kind = payload["t"]
    if kind == T_BLOB_CHUNK:
        chunk_id = field_bytes(payload, "id", ID_BYTES)
        data = field_bytes(payload, "data")
        conn.execute(
            "INSERT OR IGNORE INTO chunks VALUES (?, ?, -1, ?)",
            (chunk_id, place(rowid, 0), len(data)),
        )
        return None
    if kind == T_FILE_BATCH:
        records = batch_records(payload)
        for slot, record in enumerate(records):
            _fold(conn, place(rowid, slot), version_id(event.id, slot), event, record, ours)
        return None
    record = _record(payload)
    _fold(conn, place(rowid, 0), event.id, event, record, ours)
    return record.doc_id


@dataclass(frozen=True, slots=True)
class _Record:
    """One ``file.put`` / ``file.delete`` record, checked."""

    doc_id: bytes
    path: str
    base: list[bytes]
    size: int
    mtime_ms: int
    mime: str
    hash: bytes | None
    chunk_ids: list[bytes]
    inline: list[tuple[bytes, int]]
    text: bool

    @property
    def deleted(self) -> bool:
        return self.hash is None


def batch_records(payload: Payload) -> list[_Record]:
    """A ``file.batch``'s records, checked: a list of ``file.put`` / ``file.delete`` maps,
    at most ``1 << SLOT_BITS``, no document twice (one event makes one version a file)."""
    items = payload.get("files")
    if not isinstance(items, list) or not 0 < len(items) <= 1 << SLOT_BITS:
        raise WrongTypeError(f"payload {T_FILE_BATCH}: 'files' must be a non-empty list")
    records = []
    for item in items:
        if type(item) is not dict or item.get("t") not in (T_FILE_PUT, T_FILE_DELETE):
            raise WrongTypeError(f"payload {T_FILE_BATCH}: a record is a file.put or file.delete")
        records.append(_record(item))
    if len({record.doc_id for record in records}) != len(records):
        raise WrongTypeError(f"payload {T_FILE_BATCH}: a document is named twice")
    return records


def _record(payload: Payload) -> _Record:
    kind = payload["t"]
    doc_id = field_bytes(payload, "doc", DOC_ID_BYTES)
    path = check_path(field_str(payload, "path"))
    base = payload.get("base")
    if not isinstance(base, list) or len(base) > MAX_BASE:
        raise WrongTypeError(f"payload {kind}: 'base' must be a list of version ids")
    for item in base:
        if type(item) is not bytes or len(item) != 32:
            raise WrongTypeError(f"payload {kind}: 'base' must be a list of version ids")
    if kind != T_FILE_PUT:
        return _Record(doc_id, path, base, 0, 0, "", None, [], [], False)
    size, mtime = field_int(payload, "size"), field_int(payload, "mtime")
    mime, content_hash = field_str(payload, "mime"), field_bytes(payload, "hash", ID_BYTES)
    refs, inline = payload.get("chunks"), payload.get("inline")
    if not isinstance(refs, list) or not isinstance(inline, list):
        raise WrongTypeError("payload file.put: 'chunks' and 'inline' must be lists")
    chunk_ids = []
    for ref in refs:
        if (
            not isinstance(ref, list)
            or len(ref) != 2
            or type(ref[0]) is not bytes
            or len(ref[0]) != ID_BYTES
            or type(ref[1]) is not int
        ):
            raise WrongTypeError("payload file.put: a chunk is [32-byte id, length]")
        chunk_ids.append(ref[0])
    if sum(ref[1] for ref in refs) != size:
        raise WrongTypeError("payload file.put: chunk lengths do not add up to the size")
    inline_ids = []
    for item in inline:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or type(item[0]) is not int
            or not 0 <= item[0] < len(chunk_ids)
            or type(item[1]) is not bytes
        ):
            raise WrongTypeError("payload file.put: an inline chunk is [chunk index, bytes]")
        inline_ids.append((chunk_ids[item[0]], len(item[1])))
    text = payload.get("text") is True
    return _Record(doc_id, path, base, size, mtime, mime, content_hash, chunk_ids, inline_ids, text)


def _fold(
    conn: sqlite3.Connection,
    number: int,
    vid: bytes,
    event: Event,
    record: _Record,
    ours: bool,
) -> None:
    superseded = (
        None
        if ours
        else conn.execute("SELECT 1 FROM file_bases WHERE base = ? LIMIT 1", (vid,)).fetchone()
    )
    conn.execute(
        f"INSERT OR IGNORE INTO file_versions ({_VERSION_COLUMNS})"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            number,
            record.doc_id,
            vid,
            event.author,
            event.lamport,
            event.time_ms,
            record.path,
            record.size,
            record.mtime_ms,
            record.mime,
            record.hash,
            record.deleted,
            record.text,
            b"".join(record.chunk_ids),
            superseded is not None,
        ),
    )
    for slot, (chunk_id, length) in enumerate(record.inline):
        conn.execute(
            "INSERT OR IGNORE INTO chunks VALUES (?, ?, ?, ?)", (chunk_id, number, slot, length)
        )
    for base_id in record.base:
        conn.execute("INSERT OR IGNORE INTO file_bases VALUES (?, ?)", (base_id, number))
        conn.execute("UPDATE file_versions SET superseded = 1 WHERE version_id = ?", (base_id,))
    if not record.base and _first_of_its_file(conn, number, record):
        return
    _refresh_file(conn, record.doc_id)


def _first_of_its_file(conn: sqlite3.Connection, number: int, record: _Record) -> bool:
    """File the document's row from this version alone if it is its first (a new file:
    the common case, where reading the versions back was a third of folding it). Every
    folded version makes the row, so a missing row means no other version is here. Tried
    for versions without bases only: an edit names what it replaced, which is here almost
    always, and the attempt would be one statement more."""
    inserted = conn.execute(
        "INSERT OR IGNORE INTO files VALUES (?, ?, ?, ?, 1, 1)",
        (record.doc_id, number, record.path, record.deleted),
    ).rowcount
    return inserted == 1


def _refresh_file(conn: sqlite3.Connection, doc_id: bytes) -> None:
    """Recompute one file's current row from its heads.

    Reads only the columns the winner rule needs, as plain rows: building every version
    whole was a third of folding a new small file."""
    rows = conn.execute(
        "SELECT superseded, deleted = 0, lamport, author, rowid, path, deleted, hash"
        " FROM file_versions WHERE doc = ?",
        (doc_id,),
    ).fetchall()
    heads = [row for row in rows if not row[0]]
    if not heads:  # a cycle of bases can only come from a forged history: keep the newest
        heads = rows
    winner = max(heads, key=lambda row: row[1:4])  # FileVersion.order: live, lamport, author
    contents = {(row[6], row[7]) for row in heads}
    conn.execute(
        "INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?, ?)",
        (doc_id, winner[4], winner[5], winner[6], len(contents), len(rows)),
    )


# --- queries ------------------------------------------------------------------------------

_ENTRY_SELECT = (
    "SELECT f.doc, f.path, v.size, v.mime, v.hash, f.deleted, v.text, f.version, f.versions,"
    " f.heads FROM files f JOIN file_versions v ON v.rowid = f.version"
)


def _entry(row: tuple[Any, ...]) -> FileEntry:
    return FileEntry(
        bytes(row[0]),
        str(row[1]),
        int(row[2]),
        str(row[3]),
        None if row[4] is None else bytes(row[4]),
        bool(row[5]),
        bool(row[6]),
        int(row[7]),
        int(row[8]),
        int(row[9]) > 1,
    )


def file_entry(store: Store, doc_id: bytes) -> FileEntry | None:
    row = store.query_one(f"{_ENTRY_SELECT} WHERE f.doc = ?", (doc_id,))
    return None if row is None else _entry(row)


def rows_in(
    store: Store,
    select: str,
    column: str,
    keys: Iterable[Any],
    *,
    where: str = "",
    args: tuple[Any, ...] = (),
) -> list[Any]:
    """``select WHERE [where AND] column IN (keys)``, in one query per ``_IN_BATCH``
    distinct keys (``args``: the parameters of ``where``)."""
    wanted, rows = list(dict.fromkeys(keys)), []
    also = f"{where} AND " if where else ""
    for start in range(0, len(wanted), _IN_BATCH):
        batch = tuple(wanted[start : start + _IN_BATCH])
        marks = ",".join("?" * len(batch))
        rows += store.query_all(f"{select} WHERE {also}{column} IN ({marks})", args + batch)
    return rows


def file_entries_of(store: Store, doc_ids: Iterable[bytes]) -> list[FileEntry]:
    """The entries of these documents (those that are files)."""
    return [_entry(row) for row in rows_in(store, _ENTRY_SELECT, "f.doc", doc_ids)]


def versions_at(store: Store, rowids: Iterable[int]) -> dict[int, FileVersion]:
    """The versions with these rowids."""
    select = f"SELECT {_VERSION_COLUMNS} FROM file_versions"
    return {int(row[0]): _version(row) for row in rows_in(store, select, "rowid", rowids)}


def file_entries(store: Store, *, deleted: bool = False) -> list[FileEntry]:
    where = "" if deleted else " WHERE f.deleted = 0"
    return [_entry(row) for row in store.query_all(f"{_ENTRY_SELECT}{where} ORDER BY f.path")]


def entry_at_path(store: Store, path: str) -> FileEntry | None:
    """The live file at ``path``; if two documents claim it, the same winner everywhere."""
    rows = store.query_all(f"{_ENTRY_SELECT} WHERE f.path = ? AND f.deleted = 0", (path,))
    if not rows:
        return None
    return max((_entry(row) for row in rows), key=_path_winner)


def entries_at_paths(store: Store, paths: Iterable[str]) -> dict[str, FileEntry]:
    """``entry_at_path`` of many paths, in a few queries (the paths no live file holds are
    absent)."""
    found: dict[str, FileEntry] = {}
    for row in rows_in(store, _ENTRY_SELECT, "f.path", paths, where="f.deleted = 0"):
        entry = _entry(row)
        held = found.get(entry.path)
        if held is None or _path_winner(entry) > _path_winner(held):
            found[entry.path] = entry
    return found


def _path_winner(entry: FileEntry) -> tuple[bool, bytes]:
    return (entry.rowid != 0, entry.doc_id)


def versions(store: Store, doc_id: bytes) -> list[FileVersion]:
    rows = store.query_all(
        f"SELECT {_VERSION_COLUMNS} FROM file_versions WHERE doc = ? ORDER BY lamport, author",
        (doc_id,),
    )
    return [_version(row) for row in rows]


def version(store: Store, rowid: int) -> FileVersion:
    row = store.query_one(f"SELECT {_VERSION_COLUMNS} FROM file_versions WHERE rowid = ?", (rowid,))
    if row is None:
        raise NotFoundError(f"event {rowid} is not a file version")
    return _version(row)


def heads(store: Store, doc_id: bytes) -> list[FileVersion]:
    return [v for v in versions(store, doc_id) if not v.superseded]


def edit_bases(store: Store, doc_id: bytes, edited: bytes | None) -> list[bytes]:
    """The versions a local change supersedes, given the content hash the change was made
    to (``edited``; None: unknown).

    Normally every head: the change was made to what the vault holds, or resolves its
    conflict. But when the vault moved on before the folder saw it (a version arrived while
    the file was being edited, or while shoal was stopped, and sync got in before the
    scan), superseding the heads would silently bury that version. Then the change names
    only the version it was made to, so it stands beside the newer one as a conflict: a
    deterministic winner, both kept, ``shoal status`` reports it, and a deletion loses to
    a live version (Syncthing's rule, too).
    """
    every = versions(store, doc_id)
    current = [v for v in every if not v.superseded]
    if edited is None or any(v.hash == edited for v in current):
        return [v.version_id for v in current]
    origin = [v for v in every if v.hash == edited and not v.deleted]
    return [origin[-1].version_id] if origin else [v.version_id for v in current]


def conflicts(store: Store) -> list[FileEntry]:
    return [e for e in file_entries(store, deleted=True) if e.conflict]


def clashes(store: Store) -> list[str]:
    """Paths that more than one live document claims: the same new file made on two
    replicas before either heard of the other's (documents get random ids). Every replica
    writes the same one (``entry_at_path``); the others stay whole in the vault, under
    their own document ids."""
    rows = store.query_all(
        "SELECT path FROM files WHERE deleted = 0 GROUP BY path HAVING count(*) > 1 ORDER BY path"
    )
    return [str(row[0]) for row in rows]


def has_chunk(store: Store, chunk_id: bytes) -> bool:
    return store.query_one("SELECT 1 FROM chunks WHERE id = ?", (chunk_id,)) is not None


Location = tuple[int, int]
"""Where a chunk's bytes are: the number (``place``) of the record holding them and their
inline slot in it (-1: the event is a ``blob.chunk``)."""
_IN_BATCH: Final = 500
"""Keys per ``IN`` lookup query (SQLite allows 999 parameters in its oldest builds)."""


def chunk_locations(store: Store, chunk_ids: Iterable[bytes]) -> dict[bytes, Location]:
    """Where each chunk we hold is; a chunk that has not arrived is absent from the result."""
    rows = rows_in(store, "SELECT id, place, slot FROM chunks", "id", chunk_ids)
    return {bytes(cid): (int(number), int(slot)) for cid, number, slot in rows}
