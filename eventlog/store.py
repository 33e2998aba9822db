"""The event store: events, heads (the version vector), pending, equivocations, roster.

A :class:`Store` is a :class:`eventlog.database.Database` (WAL, ``synchronous=FULL``, nested
``atomic()`` transactions) that knows these tables. It knows nothing about documents; the
engine keeps its derived tables in the same file through its own migrations.
"""

from __future__ import annotations

import sqlite3
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final, NamedTuple

from eventlog.database import Database, connect, connect_readonly, out_of_space
from eventlog.envelope import Event, decode_stored
from eventlog.errors import AmbiguousError, NotFoundError, StorageError
from eventlog.membership import Member
from eventlog.migrate import check_current, migrate
from eventlog.pack import PACK_MIN, Pack, pack_path

MAX_PENDING: Final = 100_000
"""Bound on the pending area; beyond it a sender is told to retry (``PendingFullError``)."""
RECENT_BYTES: Final = 8 * 1024 * 1024
"""Events inserted lately are also kept in memory, up to this many bytes, for serving: a relay
sends each batch it accepts on to every other connection of the vault, and reading it back
from SQLite once per connection was 40 % of a busy relay's time (W6)."""


class Head(NamedTuple):
    """How far we hold one author's log: the version vector's entry."""

    seq: int
    id: bytes
    lamport: int


class StoredEvent(NamedTuple):
    """A row of ``events``: the raw event plus the columns we index it by."""

    rowid: int
    author: bytes
    seq: int
    id: bytes
    lamport: int
    time_ms: int
    kind: int
    epoch: int
    raw: bytes
    anchor: bool
    """Its own signature was checked (see migration 0002)."""

    def decoded(self) -> Event:
        """The event, without the strict decode's re-hash and canonical re-encoding: it
        passed both before it was stored (a 1 MiB chunk's hash is ~1.6 ms here)."""
        return decode_stored(self.raw, self.id)


RAW_COLUMNS: Final = "raw, pack_at, pack_len"
"""Where an event's bytes are (``Store.raw``): in ``raw``, or in the pack file."""
SIZE_SQL: Final = "coalesce(pack_len, length(raw))"
"""An event's size in bytes, without reading them."""
E_RAW_COLUMNS: Final = "e.raw, e.pack_at, e.pack_len"
E_SIZE_SQL: Final = "coalesce(e.pack_len, length(e.raw))"
"""The same, in a query that names the events table ``e``."""
_EVENT_COLUMNS: Final = (
    f"rowid, author, seq, id, lamport, time_ms, kind, epoch, anchor, {RAW_COLUMNS}"
)
_INSERT_EVENT: Final = (
    "INSERT INTO events"
    " (author, seq, id, lamport, time_ms, kind, epoch, anchor, raw, pack_at, pack_len)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)

_EventRow = tuple[bytes, int, bytes, int, int, int, int, int, bytes, int | None, int | None]


def _event_row(event: Event, anchor: bool, pack_at: int | None) -> _EventRow:
    """The ``events`` columns of an event, in ``_INSERT_EVENT``'s order; ``pack_at``: where
    its bytes went in the pack file, or None if they are stored in the row."""
    h = event.header
    return (
        h.author,
        h.seq,
        event.id,
        h.lamport,
        h.time_ms,
        h.kind,
        h.epoch,
        int(anchor),
        event.raw if pack_at is None else b"",
        pack_at,
        None if pack_at is None else len(event.raw),
    )


_EVENT_COLUMNS_JOINED: Final = ", ".join(f"events.{c}" for c in _EVENT_COLUMNS.split(", "))


def _stored(rowid: int, event: Event, anchor: bool) -> StoredEvent:
    h = event.header
    return StoredEvent(
        rowid, h.author, h.seq, event.id, h.lamport, h.time_ms, h.kind, h.epoch, event.raw, anchor
    )


def hex_prefix_bounds(prefix: str, width: int) -> tuple[bytes, bytes]:
    """The byte range of ids (``width`` bytes) whose hex form starts with ``prefix``."""
    prefix = prefix.lower()
    if not prefix or len(prefix) > width * 2 or any(c not in "0123456789abcdef" for c in prefix):
        raise NotFoundError(f"not a hex id or prefix: {prefix!r}")
    low = bytes.fromhex(prefix.ljust(width * 2, "0"))
    high = bytes.fromhex(prefix.ljust(width * 2, "f"))
    return low, high


class Store(Database):
    """An open vault database. Use :meth:`open`; close with :meth:`close`."""

    def __init__(
        self,
        conn: sqlite3.Connection,
        path: Path,
        *,
        readonly: bool = False,
        pack: Pack | None = None,
    ) -> None:
        super().__init__(conn, path, readonly=readonly)
        self._pending_count: int | None = None
        self._dirty_heads: dict[bytes, Head] = {}
        """Heads moved in this transaction, written once at commit rather than per event."""
        self._event_bytes: int | None = None
        self._recent: OrderedDict[tuple[bytes, int], StoredEvent] = OrderedDict()
        self._recent_bytes = 0
        self.pack = pack or Pack(pack_path(path), readonly=readonly)
        self._pack_end: int | None = None
        """Where this transaction appends packed bytes next (None: not read yet)."""
        # First in each list: the store's own bookkeeping runs before any caller's hook.
        self.pre_commit_hooks.append(self._write_heads)
        self.pre_commit_hooks.append(self._sync_pack)
        self.rollback_hooks.append(self._forget_uncommitted)
        self.external_change_hooks.append(self._forget_counts)

    # --- lifecycle --------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path, *, create: bool = False, pack_of: Path | None = None) -> Store:
        """Open (or with ``create``, make) the database at ``path`` and migrate it.

        ``pack_of``: read packed events from that database's pack, read-only (``path`` is a
        scratch copy of it, made with SQLite's backup, which copies no other file)."""
        if not create and not path.exists():
            raise NotFoundError(f"no vault database at {path}")
        conn = None
        try:
            conn = connect(path, create=create)
            pack = None if pack_of is None else Pack(pack_path(pack_of), readonly=True)
            store = cls(conn, path, pack=pack)
            migrate(conn, "eventlog", "eventlog.migrations")
            # Baseline before anyone builds caches: a commit by another process after this
            # point is seen by the first transaction (poll_external_change).
            store.poll_external_change()
        except sqlite3.DatabaseError as exc:
            if conn is not None:
                conn.close()
            if not create and out_of_space(exc):
                return cls.open_readonly(path)
            raise StorageError(f"cannot open {path}: {exc}") from exc
        return store

    @classmethod
    def open_readonly(cls, path: Path) -> Store:
        """Open for reading only (``database.connect_readonly``): any write then fails with a
        typed error; nothing is migrated."""
        try:
            conn = connect_readonly(path)
            store = cls(conn, path, readonly=True)
            check_current(conn, "eventlog", "eventlog.migrations")
            store.poll_external_change()
        except sqlite3.DatabaseError as exc:
            raise StorageError(f"cannot open {path} even for reading: {exc}") from exc
        return store

    def close(self) -> None:
        self.pack.close()
        super().close()

    def _forget_uncommitted(self) -> None:
        self._pack_end = None  # what was appended past the recorded end is garbage now
        self._forget_counts()
        self._recent.clear()  # it may hold events that were never committed
        self._recent_bytes = 0
        self._dirty_heads.clear()

    def _forget_counts(self) -> None:
        self._pending_count = self._event_bytes = None

    # --- vault facts ------------------------------------------------------------------------

    def get_fact(self, key: str) -> bytes | None:
        row = self.query_one("SELECT value FROM vault WHERE key = ?", (key,))
        return None if row is None else bytes(row[0])

    def set_fact(self, key: str, value: bytes) -> None:
        with self.atomic():
            self.conn.execute("INSERT OR REPLACE INTO vault VALUES (?, ?)", (key, value))

    @property
    def vault_id(self) -> bytes:
        value = self.get_fact("vault_id")
        if value is None:
            raise StorageError("database has no vault id")
        return value

    # --- events -----------------------------------------------------------------------------

    def insert_event(self, event: Event, anchor: bool = True) -> int:
        """Insert one checked event and advance its author's head; returns its rowid.

        Call inside :meth:`atomic`: the insert and the head move together.
        """
        row = _event_row(event, anchor, self._packed([event])[0])
        cur = self.conn.execute(_INSERT_EVENT, row)
        rowid = cur.lastrowid
        assert rowid is not None
        self._inserted(event, [_stored(rowid, event, anchor)])
        return rowid

    def insert_run(self, events: list[Event]) -> list[int]:
        """Insert one author's consecutive checked events in one statement; their rowids.

        The last is the run's anchor: its signature vouched for the others (see
        ``Log.accept_batch``). A bulk sync stores most events this way; one ``execute`` per
        event was a fifth of the receiving process's time. Call inside :meth:`atomic`.
        """
        last = events[-1]
        places = self._packed(events)
        rows = [
            _event_row(event, event is last, at) for event, at in zip(events, places, strict=True)
        ]
        self.conn.executemany(_INSERT_EVENT, rows)
        rowids = [
            r[0]
            for r in self.conn.execute(
                "SELECT rowid FROM events WHERE author = ? AND seq BETWEEN ? AND ? ORDER BY seq",
                (last.author, events[0].seq, last.seq),
            )
        ]
        if len(rowids) != len(events):
            raise StorageError("a run of events was not stored whole")
        self._inserted(
            last,
            [
                _stored(rowid, event, event is last)
                for rowid, event in zip(rowids, events, strict=True)
            ],
        )
        return rowids

    def _packed(self, events: list[Event]) -> list[int | None]:
        """Write the big ones of ``events`` to the pack (one call); where each went, or None
        for one small enough to stay in its row. Call inside :meth:`atomic`."""
        big = [event.raw for event in events if len(event.raw) >= PACK_MIN]
        if not big:
            return [None] * len(events)
        if self._pack_end is None:
            row = self.query_one("SELECT at FROM pack_end")
            self._pack_end = int(row[0]) if row else 0
        at = start = self._pack_end
        places: list[int | None] = []
        for event in events:
            if len(event.raw) >= PACK_MIN:
                places.append(at)
                at += len(event.raw)
            else:
                places.append(None)
        self.pack.write(start, big)
        self._pack_end = at
        return places

    def _sync_pack(self) -> None:
        """Pre-commit: the packed bytes reach the disk before the rows that name them."""
        if self._pack_end is None:
            return
        self.pack.sync()
        self.conn.execute("UPDATE pack_end SET at = ?", (self._pack_end,))
        self._pack_end = None

    def _row(self, row: tuple[Any, ...]) -> StoredEvent:
        rowid, author, seq, eid, lamport, time_ms, kind, epoch, anchor, *where = row
        return StoredEvent(
            rowid,
            bytes(author),
            seq,
            bytes(eid),
            lamport,
            time_ms,
            kind,
            epoch,
            self.raw(*where),
            bool(anchor),
        )

    def raw(self, raw: bytes, pack_at: int | None, pack_len: int | None) -> bytes:
        """An event's bytes from its ``RAW_COLUMNS``."""
        if pack_at is None:
            return bytes(raw)
        if pack_len is None:
            raise StorageError("an event row names a place in the pack but no length")
        return self.pack.read(pack_at, pack_len)

    def _inserted(self, last: Event, stored: list[StoredEvent]) -> None:
        """Book what ``insert_event`` / ``insert_run`` stored: the head, sizes, the cache."""
        self._dirty_heads[last.author] = Head(last.seq, last.id, last.lamport)
        if self._event_bytes is not None:
            self._event_bytes += sum(len(row.raw) for row in stored)
        for row in stored:
            self._remember(row)

    def _remember(self, row: StoredEvent) -> None:
        self._recent[(row.author, row.seq)] = row
        self._recent_bytes += len(row.raw)
        while self._recent_bytes > RECENT_BYTES:
            _, old = self._recent.popitem(last=False)
            self._recent_bytes -= len(old.raw)

    def _write_heads(self) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO heads VALUES (?, ?, ?, ?)",
            [(a, h.seq, h.id, h.lamport) for a, h in self._dirty_heads.items()],
        )
        self._dirty_heads.clear()

    def head(self, author: bytes) -> Head | None:
        dirty = self._dirty_heads.get(author)
        if dirty is not None:
            return dirty
        row = self.query_one("SELECT seq, id, lamport FROM heads WHERE author = ?", (author,))
        return None if row is None else Head(row[0], bytes(row[1]), row[2])

    def version_vector(self) -> dict[bytes, Head]:
        rows = self.query_all("SELECT author, seq, id, lamport FROM heads")
        return {bytes(a): Head(s, bytes(i), lam) for a, s, i, lam in rows} | self._dirty_heads

    def max_lamport(self) -> int:
        return max((h.lamport for h in self.version_vector().values()), default=0)

    def event_count(self) -> int:
        """Logs are contiguous from seq 1, so the count is the sum of the heads."""
        return sum(h.seq for h in self.version_vector().values())

    def event_at(self, author: bytes, seq: int) -> StoredEvent | None:
        row = self.query_one(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE author = ? AND seq = ?", (author, seq)
        )
        return None if row is None else self._row(row)

    def event_by_id(self, event_id: bytes) -> StoredEvent | None:
        rows = self._events_with_ids(event_id, event_id, 1)
        return rows[0] if rows else None

    def event_by_rowid(self, rowid: int) -> StoredEvent | None:
        row = self.query_one(f"SELECT {_EVENT_COLUMNS} FROM events WHERE rowid = ?", (rowid,))
        return None if row is None else self._row(row)

    def resolve_event(self, prefix: str) -> StoredEvent:
        """The one event whose hex id starts with ``prefix`` (git-style)."""
        rows = self._events_with_ids(*hex_prefix_bounds(prefix, 32), 2)
        if not rows:
            raise NotFoundError(f"no event {prefix}")
        if len(rows) > 1:
            raise AmbiguousError(f"event prefix {prefix} is ambiguous")
        return rows[0]

    def _events_with_ids(self, low: bytes, high: bytes, limit: int) -> list[StoredEvent]:
        """Up to ``limit`` events whose id lies in ``[low, high]``, through the id index.

        A read-only store cannot file new ids, so it also scans the unfiled tail.
        """
        upto = self.index_ids()
        rows = self.query_all(
            f"SELECT {_EVENT_COLUMNS_JOINED} FROM event_ids JOIN events ON events.rowid = event"
            " WHERE event_ids.id BETWEEN ? AND ? LIMIT ?",
            (low, high, limit),
        )
        if len(rows) < limit:
            rows += self.query_all(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE rowid > ? AND id BETWEEN ? AND ?"
                " LIMIT ?",
                (upto, low, high, limit - len(rows)),
            )
        return [self._row(r) for r in rows]

    def index_ids(self) -> int:
        """File the ids of events stored since the last lookup; returns the rowid covered.

        Inserting in id order touches each index page once, where filing at arrival would
        touch a random page per event (see migration 0005).
        """
        row = self.query_one("SELECT upto FROM event_ids_filed")
        upto = int(row[0]) if row else 0
        if self.readonly or upto >= self.last_rowid():
            return upto
        with self.atomic():
            last = self.last_rowid()
            self.conn.execute(
                "INSERT INTO event_ids SELECT id, rowid FROM events WHERE rowid > ? ORDER BY id",
                (upto,),
            )
            self.conn.execute("UPDATE event_ids_filed SET upto = ?", (last,))
        return last

    def serving_batch(
        self,
        author: bytes,
        first: int,
        last: int,
        max_events: int,
        max_bytes: int,
        run_on: bool = True,
    ) -> list[bytes]:
        """Events ``first..`` of ``author`` for one batch to a peer, ending at an anchor: the
        raw events, which is all a peer is sent (no row objects are built for them).

        Takes up to ``max_events``/``max_bytes``, then trims back to the last anchor so the
        receiver can authenticate the batch from one signature. If no anchor lies within the
        limits, runs on to the first one (anchors are never further apart than the largest
        segment we accepted, which the receiving side bounds) — or, without ``run_on``,
        returns nothing.
        """
        if first > last:
            return []
        recent = self._recent_batch(author, first, last, max_events, max_bytes)
        if recent is not None and (recent or not run_on):
            return recent
        sizes = self.query_all(  # sizes first: length() does not read the blobs
            f"SELECT seq, {SIZE_SQL}, anchor FROM events WHERE author = ? AND seq BETWEEN ? AND ?"
            " ORDER BY seq",
            (author, first, min(last, first + max_events - 1)),
        )
        size = 0
        for i, (_, length, _) in enumerate(sizes):
            size += length
            if size > max_bytes and i > 0:
                sizes = sizes[:i]
                break
        anchors = [int(seq) for seq, _, anchor in sizes if anchor]
        if anchors:
            return self._raws(author, first, anchors[-1])
        if not run_on:
            return []
        extra = self.query_one(
            "SELECT min(seq) FROM events WHERE author = ? AND seq > ? AND seq <= ? AND anchor",
            (author, int(sizes[-1][0]) if sizes else first - 1, last),
        )
        if extra is None or extra[0] is None:
            return self._raws(author, first, int(sizes[-1][0])) if sizes else []
        return self._raws(author, first, int(extra[0]))

    def _recent_batch(
        self, author: bytes, first: int, last: int, max_events: int, max_bytes: int
    ) -> list[bytes] | None:
        """:meth:`serving_batch` from memory without running on: ``[]`` if no anchor lies
        within the limits, None when memory does not hold the events to decide."""
        batch: list[StoredEvent] = []
        size = 0
        for seq in range(first, min(last, first + max_events - 1) + 1):
            row = self._recent.get((author, seq))
            if row is None:
                return None
            size += len(row.raw)
            if size > max_bytes and batch:
                break
            batch.append(row)
        while batch and not batch[-1].anchor:
            batch.pop()
        return [row.raw for row in batch]

    def _raws(self, author: bytes, first: int, last: int) -> list[bytes]:
        rows = self.query_all(
            f"SELECT {RAW_COLUMNS} FROM events WHERE author = ? AND seq BETWEEN ? AND ?"
            " ORDER BY seq",
            (author, first, last),
        )
        return [self.raw(*where) for where in rows]

    def range(self, author: bytes, first: int, last: int) -> list[StoredEvent]:
        """Events ``first..last`` (inclusive) of one author, in seq order."""
        rows = self.query_all(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE author = ? AND seq BETWEEN ? AND ?"
            " ORDER BY seq",
            (author, first, last),
        )
        return [self._row(r) for r in rows]

    def events_after(self, rowid: int, limit: int = 1000) -> list[StoredEvent]:
        """Events in local arrival order after ``rowid`` (what subscribers and rebuilds read)."""
        rows = self.query_all(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (rowid, limit),
        )
        return [self._row(r) for r in rows]

    def raws_after(self, rowid: int, limit: int = 1000) -> list[tuple[int, bytes, bytes]]:
        """``(rowid, raw, id)`` of the events after ``rowid``, in arrival order: all that
        applying them needs (a catch-up after a bulk sync reads every event once more, and a
        full row object per event was a tenth of that)."""
        rows = self.query_all(
            f"SELECT rowid, id, {RAW_COLUMNS} FROM events WHERE rowid > ? ORDER BY rowid LIMIT ?",
            (rowid, limit),
        )
        return [(rowid, self.raw(*where), bytes(event_id)) for rowid, event_id, *where in rows]

    def bytes_held(self) -> int:
        """Bytes of stored and pending events: what a relay's quota counts."""
        if self._event_bytes is None:
            row = self.query_one(f"SELECT coalesce(sum({SIZE_SQL}), 0) FROM events")
            self._event_bytes = int(row[0]) if row else 0
        pending = 0
        if self.pending_count():
            row = self.query_one("SELECT coalesce(sum(length(raw)), 0) FROM pending")
            pending = int(row[0]) if row else 0
        return self._event_bytes + pending

    def last_rowid(self) -> int:
        row = self.query_one("SELECT max(rowid) FROM events")
        return int(row[0]) if row and row[0] is not None else 0

    def iter_author_events(self) -> Iterator[StoredEvent]:
        """Every event, author by author in seq order, read in pages (bounded memory)."""
        for (author,) in self.query_all("SELECT author FROM heads ORDER BY author"):
            seq = 0
            while True:
                page = self.range(bytes(author), seq + 1, seq + 2000)
                yield from page
                if len(page) < 2000:
                    break
                seq = page[-1].seq

    # --- pending ----------------------------------------------------------------------------

    def pending_count(self) -> int:
        if self._pending_count is None:
            row = self.query_one("SELECT count(*) FROM pending")
            self._pending_count = int(row[0]) if row else 0
        return self._pending_count

    def add_pending(self, event: Event, reason: str, now_ms: int, anchor: bool = True) -> None:
        self.conn.execute(
            "INSERT INTO pending VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event.author, event.seq, event.id, event.raw, reason, now_ms, int(anchor)),
        )
        self._pending_count = self.pending_count() + 1

    def pending_at(self, author: bytes, seq: int) -> tuple[bytes, bytes, bool] | None:
        """``(id, raw, anchor)`` of the pending event at ``(author, seq)``, if any."""
        row = self.query_one(
            "SELECT id, raw, anchor FROM pending WHERE author = ? AND seq = ?", (author, seq)
        )
        return None if row is None else (bytes(row[0]), bytes(row[1]), bool(row[2]))

    def drop_pending(self, author: bytes, seq: int) -> None:
        self.conn.execute("DELETE FROM pending WHERE author = ? AND seq = ?", (author, seq))
        self._pending_count = None

    def drop_pending_after(self, author: bytes, seq: int) -> None:
        """Forget parked events of ``author`` beyond ``seq`` (revoked by a removal)."""
        cur = self.conn.execute("DELETE FROM pending WHERE author = ? AND seq > ?", (author, seq))
        if cur.rowcount:
            self._pending_count = None

    def pending_summary(self) -> list[tuple[bytes, int, int, str]]:
        """Per author and reason: ``(author, count, lowest seq, reason)``."""
        rows = self.query_all(
            "SELECT author, count(*), min(seq), reason FROM pending GROUP BY author, reason"
        )
        return [(bytes(a), n, s, r) for a, n, s, r in rows]

    # --- equivocations ----------------------------------------------------------------------

    def record_equivocation(
        self, author: bytes, seq: int, ids_raws: list[tuple[bytes, bytes]], now_ms: int
    ) -> None:
        for event_id, raw in ids_raws:
            self.conn.execute(
                "INSERT OR IGNORE INTO equivocations VALUES (?, ?, ?, ?, ?)",
                (author, seq, event_id, raw, now_ms),
            )

    def frozen_authors(self) -> set[bytes]:
        return {bytes(r[0]) for r in self.query_all("SELECT DISTINCT author FROM equivocations")}

    def equivocations(self) -> list[tuple[bytes, int, bytes]]:
        rows = self.query_all("SELECT author, seq, id FROM equivocations ORDER BY author, seq")
        return [(bytes(a), s, bytes(i)) for a, s, i in rows]

    # --- roster -----------------------------------------------------------------------------

    def replace_members(self, members: dict[bytes, Member]) -> None:
        """Rewrite the roster table from a fold (call inside :meth:`atomic`)."""
        self.conn.execute("DELETE FROM members")
        self.conn.executemany(
            "INSERT INTO members (author, kx, role, added_by, added_event, added_ms,"
            " expires_ms, removed_by, removed_event, removed_ms, cutoff)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    m.author,
                    m.kx,
                    m.role,
                    m.added_by,
                    m.added_event,
                    m.added_ms,
                    m.expires_ms,
                    m.removed_by,
                    m.removed_event,
                    m.removed_ms,
                    m.cutoff,
                )
                for m in members.values()
            ],
        )

    def membership_events(self) -> list[StoredEvent]:
        """Every stored event that is not data (genesis, membership, key rotation)."""
        # Named: without statistics the planner prefers a scan of every event for ``!=``.
        rows = self.query_all(
            f"SELECT {_EVENT_COLUMNS} FROM events INDEXED BY events_roster WHERE kind != 2"
            " ORDER BY rowid"
        )
        return [self._row(r) for r in rows]
