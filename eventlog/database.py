"""A SQLite connection as a vault keeps it: WAL, ``synchronous=FULL``, one way to make
transactions, and hooks for what callers cache.

Writes of acknowledged events run with WAL and ``synchronous=FULL``: when ``atomic()``
returns, they are on disk. ``atomic()`` nests (inner uses join the outer transaction), takes
the write lock with a fast poll instead of SQLite's sleepy busy handler, and tells the hooks
about commits, rollbacks and other processes' commits. What the tables hold is the business
of the layers above: the event store (``eventlog.store``) and the engine's derived state.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Final

from eventlog.errors import StorageError

BUSY_TIMEOUT_MS: Final = 10_000
"""How long any statement waits for a lock held by another process before it fails."""
LOCK_POLL_S: Final = (0.0002, 0.002)
"""First and longest pause between tries for the write lock (see ``Database._begin``)."""

# Python 3.11's sqlite3 binds int, float, str and bytearray directly but sends every bytes
# parameter through its adapter protocol, which looks for ``PrepareProtocol.__adapt__`` and
# builds (then drops) an AttributeError message each time: ~0.5 us per bytes parameter, and
# most of ours are bytes (ids, keys, events). A registered adapter is found first; ``bytes``
# of a bytes object is that object itself.
sqlite3.register_adapter(bytes, bytes)


def connect(path: Path, *, create: bool) -> sqlite3.Connection:
    """A read-write connection in WAL mode with ``synchronous=FULL``; ``create`` makes the
    file, owner-only from birth (a full replica's database holds derived plaintext)."""
    if create and not path.exists():
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if mode != "wal":
            raise StorageError(f"could not enable WAL on {path} (got {mode})")
        conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that can only read: what still works when the disk is full.

    SQLite deletes the WAL at the last close and needs to create it (and its shared-memory
    index) to open normally, which a full disk refuses. With no WAL on disk the database
    file alone is the whole state (an empty WAL left by a failed open counts as none), so it
    is opened ``immutable``; with a WAL holding frames (another process has it open)
    ``mode=ro`` reads through it.
    """
    wal = path.with_name(path.name + "-wal")
    live_wal = wal.exists() and wal.stat().st_size > 0
    flag = "mode=ro" if live_wal else "immutable=1"
    conn = sqlite3.connect(
        f"{path.resolve().as_uri()}?{flag}", uri=True, isolation_level=None, check_same_thread=False
    )
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    return conn


class Database:
    """One open connection and its transactions (see the module docstring)."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, readonly: bool = False) -> None:
        self.path = path
        self.conn = conn
        self.readonly = readonly
        """Opened for reading only (the disk is full): every transaction fails, typed."""
        self._depth = 0
        self._reading = False
        """A read snapshot (``reading``) is open, and no write transaction."""
        self._transaction = _Transaction(self)
        self._data_version: int | None = None
        self.pre_commit_hooks: list[Callable[[], None]] = []
        """Called inside the transaction just before COMMIT: write-once-per-transaction rows."""
        self.commit_hooks: list[Callable[[], None]] = []
        """Called after a COMMIT succeeded: telling other processes what they can now see."""
        self.rollback_hooks: list[Callable[[], None]] = []
        """Called after a rollback, so callers can drop caches of what did not commit."""
        self.external_change_hooks: list[Callable[[], None]] = []
        """Called when another process committed since our last transaction (for example a
        ``shoal append`` while ``shoal serve`` runs): caches of the database are stale."""

    def close(self) -> None:
        self.conn.close()

    def atomic(self) -> AbstractContextManager[None]:
        """One transaction; nested uses join the outer one. Rolls back on any exception."""
        return self._transaction

    def reading(self) -> AbstractContextManager[None]:
        """One read snapshot for a run of queries made outside any write transaction.

        Each query outside a transaction is a read transaction of its own: it takes and drops
        SQLite's WAL locks and checks the WAL for other processes' commits (~13 ``fcntl``
        calls for a mirror's file, against ~1 now). Inside a snapshot they share one read
        transaction. A write transaction opened inside ends the snapshot first (reads after
        it see the latest state, one by one again)."""
        return _Reading(self)

    def _end_reading(self) -> None:
        if self._reading:
            self._reading = False
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")  # a read transaction: nothing to write

    def _open_transaction(self) -> None:
        self._end_reading()
        if self.readonly:
            raise StorageError(
                f"{self.path} is open read-only (the disk was full): nothing can be written"
            )
        try:
            self._begin()
        except sqlite3.Error as exc:
            raise StorageError(f"cannot begin a transaction: {exc}") from exc
        try:
            self.poll_external_change()  # its hooks reload caches, and may fail
        except BaseException as exc:
            self._roll_back(exc)  # or the next atomic() would meet a stray open BEGIN
            raise
        self._depth = 1

    def _commit(self) -> None:
        for hook in self.pre_commit_hooks:
            hook()
        self.conn.execute("COMMIT")
        for hook in self.commit_hooks:
            hook()

    def _roll_back(self, exc: BaseException) -> None:
        """Undo the transaction and forget what it cached; a SQLite error becomes ours."""
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        for hook in self.rollback_hooks:
            hook()
        if isinstance(exc, sqlite3.Error):
            raise StorageError(f"database write failed: {exc}") from exc

    def _begin(self) -> None:
        """``BEGIN IMMEDIATE``, trying for the write lock every fraction of a millisecond.

        SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ... ms between tries, so a
        writer that keeps meeting another process's transactions (a bulk sync and its apply
        helper, a daemon beside a CLI command) loses most of its waiting time asleep after the
        lock is already free. Here the pause starts at 0.2 ms and doubles up to 2 ms; the
        deadline is the usual busy timeout, which every other statement keeps.
        """
        conn = self.conn
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
            pause, longest = LOCK_POLL_S
            while True:
                try:
                    conn.execute("BEGIN IMMEDIATE")
                    return
                except sqlite3.OperationalError as exc:
                    if conn.in_transaction or "locked" not in str(exc):
                        raise
                    if time.monotonic() > deadline:
                        raise
                time.sleep(pause)
                pause = min(pause * 2, longest)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")

    def poll_external_change(self) -> bool:
        """Did another connection commit since we last looked? If so, run the hooks."""
        try:
            version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise StorageError(f"database read failed: {exc}") from exc
        changed = self._data_version is not None and version != self._data_version
        self._data_version = version
        if changed:
            for hook in self.external_change_hooks:
                hook()
        return changed

    def query_one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        try:
            row: tuple[Any, ...] | None = self.conn.execute(sql, params).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"database read failed: {exc}") from exc
        return row

    def query_all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"database read failed: {exc}") from exc


def out_of_space(exc: sqlite3.DatabaseError) -> bool:
    """Whether opening failed for want of disk space (SQLite says "disk I/O error" when it
    cannot create its WAL files, "database or disk is full" when a write ran out)."""
    text = str(exc).lower()
    return "disk i/o error" in text or "disk is full" in text


class _Reading:
    """``Database.reading``'s context manager (no-op inside a transaction or snapshot)."""

    __slots__ = ("began", "store")

    def __init__(self, store: Database) -> None:
        self.store = store
        self.began = False

    def __enter__(self) -> None:
        store = self.store
        self.began = not store._depth and not store._reading and not store.conn.in_transaction
        if self.began:
            store.conn.execute("BEGIN")  # deferred: a read transaction from the first read
            store._reading = True

    def __exit__(self, *exc: object) -> None:
        if self.began:
            self.store._end_reading()


class _Transaction:
    """``Database.atomic``'s context manager. A class rather than ``@contextmanager``: every
    event stored or applied opens several (the nested ones join); a nested use costs
    ~0.4 us here against ~1.5 us through the generator protocol."""

    __slots__ = ("store",)

    def __init__(self, store: Database) -> None:
        self.store = store

    def __enter__(self) -> None:
        store = self.store
        if store._depth:
            store._depth += 1
        else:
            store._open_transaction()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: object
    ) -> None:
        store = self.store
        if store._depth > 1:
            store._depth -= 1
            return
        try:
            if exc is None:
                try:
                    store._commit()
                except BaseException as failure:
                    store._roll_back(failure)
                    raise
            else:
                store._roll_back(exc)
        finally:
            store._depth = 0
