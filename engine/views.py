"""Read-only views of a vault: the document listing, history, the log, and time travel.

These read the store and the engine's derived tables; none of them writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from engine import files
from engine.documents import LiveDoc, summarize
from eventlog.envelope import decode_stored
from eventlog.payload import field_bytes
from eventlog.sealing import Keyring
from eventlog.store import E_RAW_COLUMNS, E_SIZE_SQL, Store, StoredEvent


@dataclass(frozen=True, slots=True)
class DocRow:
    doc: bytes
    title: str
    tags: list[str]
    created_ms: int
    updated_ms: int
    size: int
    events: int


@dataclass(frozen=True, slots=True)
class LogRow:
    """One event as ``log`` and ``history`` show it (type and doc come from the engine)."""

    rowid: int
    id: bytes
    author: bytes
    seq: int
    lamport: int
    time_ms: int
    kind: int
    epoch: int
    type: str | None
    doc: bytes | None
    size: int


_LOG_SELECT = (
    "SELECT e.rowid, e.id, e.author, e.seq, e.lamport, e.time_ms, e.kind, e.epoch,"
    f" i.type, i.doc, {E_SIZE_SQL} FROM events e LEFT JOIN event_index i ON i.rowid = e.rowid"
)


def _log_row(row: tuple[Any, ...]) -> LogRow:
    rowid, eid, author, seq, lamport, time_ms, kind, epoch, typ, doc, size = row
    return LogRow(
        rowid,
        bytes(eid),
        bytes(author),
        seq,
        lamport,
        time_ms,
        kind,
        epoch,
        typ,
        None if doc is None else bytes(doc),
        size,
    )


def list_docs(store: Store, doc: bytes | None = None) -> list[DocRow]:
    """Every document (or just ``doc``), most recently updated first."""
    where = "" if doc is None else " WHERE doc = ?"
    rows = store.query_all(
        "SELECT doc, title, tags, created_ms, updated_ms, size, events FROM docs"
        f"{where} ORDER BY updated_ms DESC, doc",
        () if doc is None else (doc,),
    )
    return [DocRow(bytes(d), t, json.loads(g), c, u, s, n) for d, t, g, c, u, s, n in rows]


def log(
    store: Store,
    *,
    doc: bytes | None = None,
    author: bytes | None = None,
    type_: str | None = None,
    since_ms: int | None = None,
    limit: int | None = None,
) -> list[LogRow]:
    """The vault's history, newest first (by lamport, then author): ``git log`` for events."""
    where: list[str] = []
    params: list[Any] = []
    if doc is not None:  # a file's versions in ``file.batch`` events, too
        where.append(
            "(i.doc = ? OR e.rowid IN"
            f" (SELECT rowid >> {files.SLOT_BITS} FROM file_versions WHERE doc = ?))"
        )
        params += [doc, doc]
    if author is not None:
        where.append("e.author = ?")
        params.append(author)
    if type_ is not None:
        where.append("i.type = ?")
        params.append(type_)
    if since_ms is not None:
        where.append("e.time_ms >= ?")
        params.append(since_ms)
    sql = _LOG_SELECT + (" WHERE " + " AND ".join(where) if where else "")
    sql += " ORDER BY e.lamport DESC, e.author DESC"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [_log_row(r) for r in store.query_all(sql, tuple(params))]


def changes_after(store: Store, rowid: int, limit: int = 500) -> list[LogRow]:
    """Applied events in local arrival order after ``rowid`` (what subscribers read)."""
    rows = store.query_all(
        _LOG_SELECT + " WHERE e.rowid > ? AND i.rowid IS NOT NULL ORDER BY e.rowid LIMIT ?",
        (rowid, limit),
    )
    return [_log_row(r) for r in rows]


def replica_names(store: Store) -> dict[bytes, str]:
    return {bytes(a): n for a, n in store.query_all("SELECT author, name FROM replica_names")}


@dataclass(frozen=True, slots=True)
class DocState:
    title: str
    tags: list[str]
    body: str
    events: int


def state_at(store: Store, keyring: Keyring, doc: bytes, at: StoredEvent) -> DocState:
    """The document as of event ``at``: every update of it ordered at or before ``at``.

    "Before" is the deterministic (lamport, author) order, so every replica gives the same
    answer for the same event. The cut is causally closed: anything an event depends on was
    seen by its author first and so has a smaller lamport.
    """
    rows = store.query_all(
        f"SELECT e.id, {E_RAW_COLUMNS} FROM event_index i JOIN events e ON e.rowid = i.rowid"
        " WHERE i.doc = ? AND i.type = 'doc.update' AND i.note IS NULL"
        " AND (e.lamport < ? OR (e.lamport = ? AND"
        " e.author <= ?)) ORDER BY e.lamport, e.author",
        (doc, at.lamport, at.lamport, at.author),
    )
    live = LiveDoc(doc)
    for event_id, *where in rows:
        event = decode_stored(store.raw(*where), bytes(event_id))
        live.apply_from_log(field_bytes(keyring.open_payload(event), "u"))
    summary = summarize(live)
    return DocState(summary.title, summary.tags, str(live.body), len(rows))
