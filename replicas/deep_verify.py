"""``shoal verify --deep``: rebuild every derived table from the log and compare.

Derived state (documents, snapshots, file tables, processor tables) is a cache of the log
(DESIGN.md: "every derived state can be rebuilt from it"). A bug, a crash at the wrong moment
or a hand-edited database could make a cache say something the log does not; the ordinary
``verify`` checks only the log. This takes a consistent copy of the database (SQLite's backup
API, inside the home: the copy holds plaintext and must stay where the home's trust does),
re-decrypts every event and rebuilds all derived state in the copy, then compares it table by
table, and each document as the live replica opens it (its snapshot plus the updates after)
with the same document rebuilt from nothing. Each difference is one line.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

from engine import documents
from engine.engine import Engine
from eventlog.accept import Log
from eventlog.envelope import Kind, decode_event
from eventlog.errors import DecodeError, IntegrityError, StorageError
from eventlog.sealing import Keyring
from eventlog.store import Store
from replicas.vault import Replica

ENGINE_TABLES: Final = {
    # table: (key columns, compared columns)
    "docs": (("doc",), ("title", "tags", "created_ms", "updated_ms", "size", "events")),
    "event_index": (("rowid",), ("type", "doc", "size", "note")),
    "replica_names": (("author",), ("name",)),
    "file_versions": (
        ("rowid",),
        (
            "doc",
            "version_id",
            "author",
            "lamport",
            "path",
            "size",
            "mime",
            "hash",
            "deleted",
            "text",
            "chunks",
            "superseded",
        ),
    ),
    "file_bases": (("base", "version"), ()),
    "chunks": (("id",), ("place", "slot", "size")),
    "files": (("doc",), ("version", "path", "deleted", "heads", "versions")),
}
PROCESSOR_TABLES: Final = {
    "proc_caps": (("author",), ("lamport", "caps")),
    "proc_records": (
        ("rowid",),
        ("type", "processor", "version", "doc", "input", "author", "lamport", "reason"),
    ),
    "proc_results": (("processor", "version", "doc", "input"), ("author", "lamport", "output")),
    "proc_indexed": (("doc",), ("version", "input", "lamport", "author")),
    "proc_sources": (("doc",), ("title", "origin", "text_hash", "chars")),
}
MAX_SHOWN: Final = 60


def deep_verify(replica: Replica) -> list[str]:
    """One line per way the live derived state differs from the state rebuilt from the log."""
    lines = list(_undecryptable(replica))
    processors = _has_table(replica.store.conn, "proc_state")
    if processors:
        from replicas.processing import open_derived

        open_derived(replica)  # the live state caught up first, as any command would
    with _scratch_copy(replica) as (scratch, scratch_dir):
        scratch.engine.rebuild()
        if processors:
            from processors.derived import Derived

            Derived(scratch.engine, scratch_dir / "index").rebuild()
        tables = dict(ENGINE_TABLES)
        if processors:
            tables.update(PROCESSOR_TABLES)
        for table, (keys, columns) in tables.items():
            lines += _compare_table(replica.store.conn, scratch.store.conn, table, keys, columns)
        lines += _compare_documents(replica.engine, scratch.engine)
    return lines


def _undecryptable(replica: Replica) -> Iterator[str]:
    """Every sealed event must open (and unpad) under a key we hold, unless it is revoked."""
    keyring, log = replica.engine.keyring, replica.log
    for row in replica.store.iter_author_events():
        if row.kind != Kind.DATA or log.revoked(row.author, row.seq):
            continue
        try:
            keyring.open_payload(decode_event(row.raw))
        except (IntegrityError, DecodeError) as exc:
            yield f"event {row.id.hex()}: does not open: {exc}"


@contextlib.contextmanager
def _scratch_copy(replica: Replica) -> Iterator[tuple[Replica, Path]]:
    with tempfile.TemporaryDirectory(dir=replica.home.root, prefix=".verify-") as tmp:
        path = Path(tmp) / "vault.db"
        target = sqlite3.connect(path)
        try:
            replica.store.conn.backup(target)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot copy the database for --deep: {exc}") from exc
        finally:
            target.close()
        store = Store.open(path, pack_of=replica.store.path)
        keyring = Keyring(replica.engine.keyring.epochs())
        engine = Engine(Log(store), replica.engine.signer, keyring)
        scratch = Replica(replica.home, engine, replica.kx)
        engine.keys_changed = None  # the scratch copy must never write the home's key file
        try:
            yield scratch, Path(tmp)
        finally:
            store.close()


def _has_table(conn: sqlite3.Connection, name: str) -> bool:
    row = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,))
    return row.fetchone() is not None


def _rows(
    conn: sqlite3.Connection, table: str, keys: tuple[str, ...], columns: tuple[str, ...]
) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    selected = ", ".join(keys + columns)
    rows = conn.execute(f"SELECT {selected} FROM {table}").fetchall()
    return {tuple(r[: len(keys)]): tuple(r[len(keys) :]) for r in rows}


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        text = value.hex()
        return text if len(text) <= 24 else text[:24] + "…"
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN] + "…"


def _compare_table(
    live: sqlite3.Connection,
    rebuilt: sqlite3.Connection,
    table: str,
    keys: tuple[str, ...],
    columns: tuple[str, ...],
) -> list[str]:
    have, want = _rows(live, table, keys, columns), _rows(rebuilt, table, keys, columns)
    lines = []
    for key in sorted(have.keys() | want.keys(), key=repr):
        where = f"{table} {' '.join(_show(k) for k in key)}"
        if key not in want:
            lines.append(f"{where}: in the live state, not in the log")
        elif key not in have:
            lines.append(f"{where}: missing from the live state")
        else:
            for name, old, new in zip(columns, have[key], want[key], strict=True):
                if old != new:
                    lines.append(f"{where}: {name} is {_show(old)}, the log says {_show(new)}")
    return lines


def _compare_documents(live: Engine, rebuilt: Engine) -> list[str]:
    """Each document as opened (snapshot + later updates) against the one rebuilt from zero."""
    lines = []
    doc_ids = {bytes(r[0]) for r in rebuilt.store.query_all("SELECT doc FROM docs")}
    for doc_id in sorted(doc_ids):
        try:
            have = live.open(doc_id)
        except (StorageError, DecodeError, IntegrityError) as exc:
            lines.append(f"document {doc_id.hex()}: does not open: {exc}")
            continue
        except Exception as exc:  # a corrupt snapshot can fail inside pycrdt
            lines.append(f"document {doc_id.hex()}: does not open ({type(exc).__name__})")
            continue
        want = rebuilt.open(doc_id)
        if str(have.body) != str(want.body):
            lines.append(f"document {doc_id.hex()}: body differs from the log's")
        a, b = documents.summarize(have), documents.summarize(want)
        if (a.title, a.tags) != (b.title, b.tags):
            lines.append(f"document {doc_id.hex()}: title or tags differ from the log's")
    return lines
