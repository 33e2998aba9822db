"""The engine: local edits become events, and events (local or remote) become documents.

Write path: an edit is one pycrdt transaction on a live document; edits are *coalesced* — the
next ``doc.update`` event is the diff since the last flush (see ``documents.LiveDoc``), cut
when ``max_edits`` edits or ``max_delay`` seconds have accumulated, or on ``flush()`` /
``close()`` — so typing costs one signature per burst, not per keystroke.

Read path: every stored event goes through :meth:`Engine._apply`, whichever replica wrote it.
Our own flushed events are echoes (the live document already holds them) and are not applied
twice; everything else is decrypted and merged through ``LiveDoc.apply_from_log`` after the
document's pending local edits are flushed, so an event never carries someone else's changes
under our name. Every derived row is written in the same transaction as the event it comes from.
"""

from __future__ import annotations

import json
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final, NamedTuple

from engine import documents, epoch_keys, files
from engine.documents import DOC_ID_BYTES, LiveDoc, text_edits
from eventlog.accept import Accepted, Log, Outcome, now_ms, public_payload
from eventlog.crypto import KxKey, SigningKey
from eventlog.envelope import Event, Kind, decode_stored
from eventlog.errors import (
    AmbiguousError,
    DecodeError,
    IntegrityError,
    NotFoundError,
    WrongTypeError,
)
from eventlog.membership import ROLE_FULL
from eventlog.migrate import check_current, migrate
from eventlog.payload import Payload, field_bytes
from eventlog.sealing import Keyring
from eventlog.store import E_RAW_COLUMNS, hex_prefix_bounds

if TYPE_CHECKING:
    import asyncio

    from engine.subscription import Subscription

T_DOC_UPDATE: Final = "doc.update"
T_REPLICA_PROFILE: Final = "replica.profile"

MAX_DELAY_S: Final = 0.25
"""Longest a local edit waits before it becomes an event (bounded coalescing delay)."""
MAX_EDITS: Final = 4096
"""Most edits one event carries; bounds event size for fast typists and bulk edits."""
SNAPSHOT_EVERY: Final = 64
"""Updates applied to a document between snapshots; bounds the replay on open."""
MAX_LIVE_DOCS: Final = 64
CATCH_UP_ROWS: Final = 1000
"""Events per catch-up transaction: short, so a process storing beside it is not held up."""
_INDEX_EVENT: Final = "INSERT OR REPLACE INTO event_index VALUES (?, ?, ?, ?, ?)"
_APPLIED_BEYOND_THE_INDEX: Final = frozenset({T_DOC_UPDATE, T_REPLICA_PROFILE, *files.FILE_TYPES})
"""Payload types ``Engine._apply`` does more for than write the event's index row."""


class Record(NamedTuple):
    """One stored event with its opened payload (``None``: sealed under a key we lack)."""

    rowid: int
    event: Event
    payload: Payload | None


class Engine:
    """A full replica's view of its vault: documents over a :class:`Log`."""

    def __init__(
        self,
        log: Log,
        signer: SigningKey,
        keyring: Keyring,
        *,
        max_delay: float = MAX_DELAY_S,
        max_edits: int = MAX_EDITS,
    ) -> None:
        self.log = log
        self.store = log.store
        self.signer = signer
        self.keyring = keyring
        self.max_delay = max_delay
        self.max_edits = max_edits
        self._live: OrderedDict[bytes, LiveDoc] = OrderedDict()
        self._wakeups: set[asyncio.Event] = set()
        if self.store.readonly:  # a full disk: read what is there, as it is
            check_current(self.store.conn, "engine", "engine.migrations")
        else:
            migrate(self.store.conn, "engine", "engine.migrations")
        self.store.rollback_hooks.append(self._rolled_back)
        self.store.external_change_hooks.append(self._refresh_live)
        self._applied = 0
        """Highest rowid applied in the open transaction; written once, at commit."""
        self._in_order = False
        """This transaction has applied whatever stored events came before its own."""
        self.store.pre_commit_hooks.append(self._write_applied)
        self.kx: KxKey | None = None
        """Our X25519 key, to unwrap the epoch keys a removal brings (set by ``replicas``)."""
        self.keys_changed: Callable[[dict[int, bytes]], None] | None = None
        """Called with every epoch key we hold when we learn a new one (to save them)."""
        self.rebuilt_hooks: list[Callable[[], None]] = []
        """Called after :meth:`rebuild`, so derived state above the engine follows."""
        if not self.store.readonly:
            self.catch_up()

    @property
    def me(self) -> bytes:
        return self.signer.public

    # --- local writes -------------------------------------------------------------------------

    def create_doc(
        self, title: str, text: str = "", tags: Iterable[str] = (), *, doc_id: bytes | None = None
    ) -> bytes:
        """A new document; its first event is written at the next flush."""
        doc_id = doc_id or documents.new_doc_id()
        live = LiveDoc(doc_id)
        documents.initialize(live, title, text, sorted(set(tags)), now_ms())
        self._remember(live)
        self._edited(live)
        return doc_id

    def edit_text(self, doc_id: bytes, pos: int, delete: int, insert: str) -> None:
        live = self.open(doc_id)
        documents.edit_text(live, pos, delete, insert)
        self._edited(live)

    def append_text(self, doc_id: bytes, text: str) -> None:
        live = self.open(doc_id)
        documents.edit_text(live, len(live.body), 0, text)
        self._edited(live)

    def merge_text(self, doc_id: bytes, new_text: str, base_state: bytes | None) -> bytes:
        """Make the body say ``new_text`` as edits made *against* ``base_state``.

        ``base_state`` is the document as it was when the text was last read out (a file
        written to a folder, say); edits computed against it merge with everything that
        happened since, instead of undoing it — the three-way merge that lets two replicas
        edit one text file at once. Without a base the edits go against the current body.
        The edits are flushed now; returns the document's new full state (the next base).
        """
        live = self.open(doc_id)
        if base_state is None:
            for offset, delete, insert in text_edits(str(live.body), new_text):
                documents.edit_text(live, offset, delete, insert)
        else:
            from pycrdt import Doc, Text

            fork: Doc = Doc()  # type: ignore[type-arg]
            fork.apply_update(base_state)
            body = fork.get(documents.BODY, type=Text)
            start = fork.get_state()
            edits = text_edits(str(body), new_text)
            with fork.transaction():
                for offset, delete, insert in edits:
                    if delete:
                        del body[offset : offset + delete]
                    if insert:
                        body.insert(offset, insert)
            live.doc.apply_update(fork.get_update(start))
        self._edited(live)
        self.flush(doc_id)
        return bytes(live.doc.get_update())

    def set_title(self, doc_id: bytes, title: str) -> None:
        live = self.open(doc_id)
        documents.set_title(live, title)
        self._edited(live)

    def add_tag(self, doc_id: bytes, tag: str) -> None:
        live = self.open(doc_id)
        documents.add_tag(live, tag)
        self._edited(live)

    def set_profile(self, name: str) -> Accepted:
        """Name this replica for the other members (sealed: the relay never sees names)."""
        return self._append({"t": T_REPLICA_PROFILE, "name": name})

    def add_member(
        self,
        member: bytes,
        kx: bytes,
        role: str = ROLE_FULL,
        *,
        expires_ms: int = 0,
        signer: SigningKey | None = None,
    ) -> Accepted:
        """Admit a replica: a public ``member.add`` carrying every epoch key wrapped for it.

        ``signer`` lets a delegate (an invite or the recovery key) write it instead of us.
        """
        payload = epoch_keys.add_payload(self.log, self.keyring, member, kx, role, expires_ms)
        accepted = self._append(payload, kind=Kind.MEMBERSHIP, signer=signer)
        self._notify()
        return accepted

    def remove_member(self, member: bytes) -> Accepted:
        """Remove a member and start a new key epoch that only the remaining members get.

        Every replica and the relay then refuse the removed author's events past the cutoff
        (how far we hold its log), and we seal under the new epoch from now on. See
        ``engine.epoch_keys`` for who gets the key, ``eventlog.membership`` for how
        concurrent removals resolve.
        """
        payload, epoch, key = epoch_keys.removal(self.log, self.me, member)
        accepted = self._append(payload, kind=Kind.MEMBERSHIP)
        self.keyring.add(epoch, key)
        self._keys_learnt()
        self._notify()
        return accepted

    def adopt_keys(self, kx: KxKey, member: bytes | None = None) -> dict[int, bytes]:
        """Unwrap the epoch keys wrapped for ``member`` (ours by default) and use them.

        Its ``member.add`` carries the epochs that existed then; each later valid removal
        carries the epoch it started, wrapped for every member that remained.
        """
        member = self.me if member is None else member
        keys = epoch_keys.unwrap_added(self.log, kx, member)
        for epoch, key in keys.items():
            self.keyring.add(epoch, key)
        keys.update(self._unwrap_rotations(kx, member))
        self._reapply_unopened()
        return keys

    def _unwrap_rotations(self, kx: KxKey, member: bytes) -> dict[int, bytes]:
        keys = epoch_keys.unwrap_rotations(self.log, self.keyring, kx, member)
        for epoch, key in keys.items():
            self.keyring.add(epoch, key)
        return keys

    def _roster_changed(self, roster_changed: bool, revoked_changed: bool) -> None:
        """After a membership event: take the new epoch keys meant for us; drop what the
        roster now revokes (derived state is rebuilt from the events that stand)."""
        if revoked_changed:
            self.flush()
            self.rebuild()
        kx = self.kx
        if roster_changed and kx is not None and self._unwrap_rotations(kx, self.me):
            self._keys_learnt()
            self._reapply_unopened()

    def _keys_learnt(self) -> None:
        if self.keys_changed is not None:
            self.keys_changed(self.keyring.epochs())

    def _reapply_unopened(self) -> None:
        rows = self.store.query_all("SELECT rowid FROM event_index WHERE type IS NULL")
        with self.store.atomic():
            for (rowid,) in rows:
                self._apply(Accepted(rowid, self._stored_event(rowid)), None, None)
        self._notify()

    def _edited(self, live: LiveDoc) -> None:
        now = time.monotonic()
        live.edits += 1
        if live.dirty_since is None:
            live.dirty_since = now
        if live.edits >= self.max_edits or now - live.dirty_since >= self.max_delay:
            self.flush(live.doc_id)

    def flush(self, doc_id: bytes | None = None) -> list[Accepted]:
        """Turn unflushed local edits into events (all documents, or one), one transaction."""
        written = []
        with self.store.atomic():
            if doc_id is None:
                targets = [live for live in self._live.values() if live.dirty]
            else:
                targets = [self._live[doc_id]] if doc_id in self._live else []
            for live in targets:
                if not live.dirty:
                    continue
                update = live.take_pending()
                payload = {"t": T_DOC_UPDATE, "doc": live.doc_id, "u": update}
                written.append(self._append(payload, echo=live))
        self._notify()
        return written

    def _append(
        self,
        payload: Payload,
        echo: LiveDoc | None = None,
        kind: int = Kind.DATA,
        signer: SigningKey | None = None,
    ) -> Accepted:
        """Write one event of ours and apply it, with anything it unblocked."""
        epoch = 0 if kind == Kind.MEMBERSHIP else self.keyring.current_epoch
        with self.store.atomic():
            outcome = self.log.append_local(
                signer or self.signer, self.keyring, kind, epoch, payload
            )
            ours, *unblocked = outcome.accepted
            self._apply(ours, payload, echo, ours=True)
            for accepted in unblocked:
                self._apply(accepted, None, None)
        self._roster_changed(outcome.roster_changed, outcome.revoked_changed)
        return ours

    def append_record(self, payload: Payload) -> Accepted:
        """Append one sealed event of ours carrying ``payload`` (a map with a string ``t``).

        The way layers above the engine (files, processors) write their own record types;
        document edits go through the coalescing path instead.
        """
        if payload.get("t") == T_DOC_UPDATE:
            raise WrongTypeError("doc.update is written by the edit path, not append_record")
        accepted = self._append(payload)
        self._notify()
        return accepted

    def records_after(self, rowid: int, limit: int = 1000) -> list[Record]:
        """Stored events after local ``rowid``, each with its payload opened (None if it can't be).

        Derived state that lives above the engine (job tables, search indexes) folds these
        behind a cursor of its own, so it can be rebuilt from the log like everything else.
        """
        records = []
        for row in self.store.events_after(rowid, limit):
            event = row.decoded()
            payload: Payload | None
            if self.log.revoked(event.author, event.seq):
                payload = None
            elif event.kind == Kind.DATA:
                try:
                    payload = self.keyring.open_payload(event)
                except (IntegrityError, DecodeError):
                    payload = None
            else:
                payload = public_payload(event)
            records.append(Record(row.rowid, event, payload))
        return records

    def close(self) -> None:
        """Flush everything, snapshot what changed, release the database."""
        if self.store.readonly and not any(live.dirty for live in self._live.values()):
            self._live.clear()
            self.store.close()
            return
        self.flush()
        with self.store.atomic():
            for live in self._live.values():
                self._snapshot(live, force=False)
        self._live.clear()
        self.store.close()

    # --- remote events ------------------------------------------------------------------------

    def accept_remote(self, raw: bytes) -> Outcome:
        """The accept path for an event from elsewhere, then apply what got stored."""
        with self.store.atomic():
            outcome = self.log.accept(raw)
            for accepted in outcome.accepted:
                self._apply(accepted, None, None)
        self._roster_changed(outcome.roster_changed, outcome.revoked_changed)
        self._notify()
        return outcome

    def _rolled_back(self) -> None:
        self._live.clear()
        self._applied = 0
        self._in_order = False

    def accept_remote_batch(self, raws: list[bytes]) -> Outcome:
        """A batch from a peer (segment-verified, see ``Log.accept_batch``), then applied."""
        with self.store.atomic():
            outcome = self.log.accept_batch(raws)
            for accepted in outcome.accepted:
                self._apply(accepted, None, None)
        self._roster_changed(outcome.roster_changed, outcome.revoked_changed)
        self._notify()
        return outcome

    def _refresh_live(self) -> None:
        """Another process wrote to the vault: reload live documents from the store.

        Unflushed local edits survive: they are carried over as the diff from the last
        flush, applied on top of the reloaded document.
        """
        for doc_id, live in list(self._live.items()):
            if not live.dirty:
                del self._live[doc_id]
                continue
            pending = live.doc.get_update(live.flushed_state)
            fresh = self._load(doc_id, upto=None)
            fresh.doc.apply_update(pending)  # after the flush point: still ours to write
            fresh.edits, fresh.dirty_since = live.edits, live.dirty_since
            self._live[doc_id] = fresh

    def catch_up(self) -> int:
        """Apply stored events the derived state has not seen: after a crash, a rebuild, or
        events that another process stored (a bulk sync, see ``replicas.apply_helper``).

        Each round decodes and opens a run of events outside any transaction (decryption is
        most of the work and needs no lock), then applies them in one short transaction that
        re-reads the watermark first: another process catching up on the same home may have
        applied some of them meanwhile, and nothing is applied twice.
        """
        applied = 0
        while True:
            rows = self.store.raws_after(self.applied_upto(), CATCH_UP_ROWS)
            if not rows:
                return applied
            opened = [self._open_stored(*row) for row in rows]
            with self.store.atomic():
                upto = self.applied_upto()
                applied += self._apply_opened([o for o in opened if o[0].rowid > upto])

    def settle(self, roster_changed: bool, revoked_changed: bool) -> int:
        """After events were stored without the engine (``Log.accept_batch`` directly):
        apply what is not applied yet, then what their membership events mean for us."""
        applied = self.catch_up()
        self._roster_changed(roster_changed, revoked_changed)
        self._notify()
        return applied

    def _open_stored(
        self, rowid: int, raw: bytes, event_id: bytes
    ) -> tuple[Accepted, Payload | None]:
        """A stored event and, for a data event we can open, its payload (None otherwise:
        ``_apply`` then opens it itself and notes why it cannot).

        Whether the event is revoked is not asked here but where it is applied, inside the
        applying transaction (``_apply_opened``, ``_apply``), which sees any removal another
        process stored meanwhile; a revoked event's payload is opened and dropped there."""
        event = decode_stored(raw, event_id)
        payload = None
        if event.kind == Kind.DATA:
            try:
                payload = self.keyring.open_payload(event)
            except (IntegrityError, DecodeError):
                payload = None
        return Accepted(rowid, event), payload

    def _stored_event(self, rowid: int) -> Event:
        row = self.store.event_by_rowid(rowid)
        if row is None:
            raise NotFoundError(f"no event at rowid {rowid}")
        return row.decoded()

    def _apply_opened(self, opened: list[tuple[Accepted, Payload | None]]) -> int:
        """``_apply`` each, in order; but a plain record only needs its index row (where
        processors and listings find it by type), and a bulk sync is mostly those: their
        rows go in one statement. Plain: an opened data event, not revoked, whose type is
        not in ``_APPLIED_BEYOND_THE_INDEX``, once the transaction's first ``_apply`` has
        put the applied mark in order (``_apply_missed``)."""
        rows: list[tuple[int, str, None, int, None]] = []
        for accepted, payload in opened:
            event = accepted.event
            if (
                payload is None
                or not self._in_order
                or payload["t"] in _APPLIED_BEYOND_THE_INDEX
                or self.log.revoked(event.author, event.seq)
            ):
                self._index(rows)
                self._apply(accepted, payload, None)
            else:
                rows.append((accepted.rowid, payload["t"], None, len(event.raw), None))
                self._applied = max(self._applied, accepted.rowid)
        self._index(rows)
        return len(opened)

    def _index(self, rows: list[tuple[int, str, None, int, None]]) -> None:
        if rows:
            self.store.conn.executemany(_INDEX_EVENT, rows)
            rows.clear()

    # --- events -> documents (the one path) ---------------------------------------------------

    def _apply(
        self,
        accepted: Accepted,
        payload: Payload | None,
        echo: LiveDoc | None,
        ours: bool = False,
    ) -> None:
        """``payload``: the event's, if the caller has it opened; ``ours``: the event was
        just written here (see ``files.apply_record``)."""
        event, rowid = accepted.event, accepted.rowid
        if not self._in_order:
            self._in_order = True
            self._apply_missed(rowid)
        note = None
        if self.log.revoked(event.author, event.seq):
            note, payload = "revoked: written after its author was removed", None
        elif payload is None and event.kind == Kind.DATA:
            try:
                payload = self.keyring.open_payload(event)
            except (IntegrityError, DecodeError) as exc:
                note = str(exc)
        elif payload is None:
            payload = public_payload(event)
        doc_id = update = None
        kind = None if payload is None else payload.get("t")
        if kind == T_DOC_UPDATE:
            try:
                doc_id = field_bytes(payload, "doc", DOC_ID_BYTES)  # type: ignore[arg-type]
                update = field_bytes(payload, "u")  # type: ignore[arg-type]
            except WrongTypeError as exc:
                note, doc_id = str(exc), None
        elif kind in files.FILE_TYPES:
            try:
                doc_id = files.apply_record(
                    self.store.conn,
                    rowid,
                    event,
                    payload,  # type: ignore[arg-type]
                    ours=ours,
                )
            except DecodeError as exc:
                note = str(exc)
        self.store.conn.execute(
            _INDEX_EVENT,
            (rowid, None if payload is None else payload["t"], doc_id, len(event.raw), note),
        )
        if update is not None and doc_id is not None and note is None:
            try:
                self._merge(doc_id, update, accepted, echo)
            except Exception as exc:
                self._refuse_update(doc_id, rowid, exc)
        elif payload is not None and payload.get("t") == T_REPLICA_PROFILE:
            name = payload.get("name")
            if isinstance(name, str):
                self.store.conn.execute(
                    "INSERT OR REPLACE INTO replica_names VALUES (?, ?)", (event.author, name)
                )
        self._applied = max(self._applied, rowid)

    def _apply_missed(self, rowid: int) -> None:
        """First apply the stored events before ``rowid`` that no process has applied yet.

        ``applied_upto`` means every event up to it is applied. A bulk sync stores events and
        leaves them to its helper process (``replicas.apply_helper``); a daemon or a command
        that applies an event of its own in the meantime must not move the mark past them.
        Once per transaction; rowids have no holes (events are never deleted), so the common
        case is one read of the mark.
        """
        upto = self.applied_upto()
        while upto < rowid - 1:
            rows = [r for r in self.store.raws_after(upto, CATCH_UP_ROWS) if r[0] < rowid]
            if not rows:
                return
            for row in rows:
                self._apply(*self._open_stored(*row), None)
            upto = rows[-1][0]

    def _refuse_update(self, doc_id: bytes, rowid: int, exc: Exception) -> None:
        """A signed ``doc.update`` whose bytes pycrdt cannot apply (a buggy or hostile member).

        It stays stored and synced (the log is the log) but inert: noted in the index, so no
        load replays it, and the document is reloaded from the store without it. Raising
        instead would roll back the whole batch and stall sync with that author for good.
        """
        self.store.conn.execute(
            "UPDATE event_index SET note = ? WHERE rowid = ?",
            (f"not a valid Yjs update ({type(exc).__name__}): not applied", rowid),
        )
        self._live.pop(doc_id, None)

    def _merge(
        self, doc_id: bytes, update: bytes, accepted: Accepted, echo: LiveDoc | None
    ) -> None:
        live = echo if echo is not None else self._live.get(doc_id)
        if live is None:
            live = self._load(doc_id, upto=accepted.rowid)
            self._remember(live)
        elif echo is None:
            if live.dirty:
                self.flush(doc_id)  # our edits first, so the next diff is only ours
            live.apply_from_log(update)
        live.last_rowid = max(live.last_rowid, accepted.rowid)
        self._write_summary(live, accepted)

    def _write_summary(self, live: LiveDoc, accepted: Accepted) -> None:
        summary = documents.summarize(live)
        time_ms = accepted.event.time_ms
        self.store.conn.execute(
            "INSERT INTO docs (doc, title, tags, created_ms, updated_ms, size, events)"
            " VALUES (?, ?, ?, ?, ?, ?, 1)"
            " ON CONFLICT (doc) DO UPDATE SET title = excluded.title, tags = excluded.tags,"
            " created_ms = excluded.created_ms, updated_ms = max(updated_ms, excluded.updated_ms),"
            " size = excluded.size, events = events + 1, since_snapshot = since_snapshot + 1",
            (
                live.doc_id,
                summary.title,
                json.dumps(summary.tags),
                summary.created_ms,
                time_ms,
                summary.size,
            ),
        )
        self._snapshot(live, force=False, threshold=SNAPSHOT_EVERY)

    def _snapshot(self, live: LiveDoc, *, force: bool, threshold: int = 1) -> None:
        """Store the full state of a live document if enough happened since the last one.

        Only a document with no unflushed edits is snapshotted: a snapshot must never hold
        what the log does not.
        """
        if live.dirty:
            return
        row = self.store.query_one("SELECT since_snapshot FROM docs WHERE doc = ?", (live.doc_id,))
        if row is None or (row[0] < threshold and not force):
            return
        self.store.conn.execute(
            "INSERT OR REPLACE INTO snapshots VALUES (?, ?, ?)",
            (live.doc_id, live.doc.get_update(), live.last_rowid),
        )
        self.store.conn.execute("UPDATE docs SET since_snapshot = 0 WHERE doc = ?", (live.doc_id,))

    # --- opening documents --------------------------------------------------------------------

    def resolve_doc(self, prefix: str) -> bytes:
        """The one document whose hex id starts with ``prefix``."""
        low, high = hex_prefix_bounds(prefix, DOC_ID_BYTES)
        rows = self.store.query_all(
            "SELECT doc FROM docs WHERE doc BETWEEN ? AND ? LIMIT 2", (low, high)
        )
        if not rows:
            raise NotFoundError(f"no document {prefix}")
        if len(rows) > 1:
            raise AmbiguousError(f"document prefix {prefix} is ambiguous")
        return bytes(rows[0][0])

    def open(self, doc_id: bytes) -> LiveDoc:
        """The live document (loaded from its snapshot plus the events after it)."""
        live = self._live.get(doc_id)
        if live is not None:
            self._live.move_to_end(doc_id)
            return live
        row = self.store.query_one("SELECT 1 FROM docs WHERE doc = ?", (doc_id,))
        if row is None:
            raise NotFoundError(f"no document {doc_id.hex()}")
        live = self._load(doc_id, upto=None)
        self._remember(live)
        return live

    def _load(self, doc_id: bytes, upto: int | None) -> LiveDoc:
        live = LiveDoc(doc_id)
        row = self.store.query_one(
            "SELECT state, upto_rowid FROM snapshots WHERE doc = ?", (doc_id,)
        )
        after = 0
        if row is not None and row[0] is not None:
            live.apply_from_log(bytes(row[0]))
            after = row[1]
        for rowid, update in self._doc_updates(doc_id, after, upto):
            live.apply_from_log(update)
            live.last_rowid = rowid
        live.last_rowid = max(live.last_rowid, after)
        return live

    def _doc_updates(
        self, doc_id: bytes, after: int, upto: int | None
    ) -> Iterable[tuple[int, bytes]]:
        rows = self.store.query_all(
            f"SELECT e.rowid, e.id, {E_RAW_COLUMNS} FROM event_index i"
            " JOIN events e ON e.rowid = i.rowid"
            " WHERE i.doc = ? AND i.type = 'doc.update' AND i.rowid > ? AND i.rowid <= ?"
            " AND i.note IS NULL ORDER BY i.rowid",
            (doc_id, after, upto if upto is not None else 2**62),
        )
        for rowid, event_id, *where in rows:
            event = decode_stored(self.store.raw(*where), bytes(event_id))
            payload = self.keyring.open_payload(event)
            yield rowid, field_bytes(payload, "u")

    def _remember(self, live: LiveDoc) -> None:
        self._live[live.doc_id] = live
        self._live.move_to_end(live.doc_id)
        while len(self._live) > MAX_LIVE_DOCS:
            old_id, old = next(iter(self._live.items()))
            if old.dirty:
                self.flush(old_id)
            with self.store.atomic():
                self._snapshot(old, force=False)
            del self._live[old_id]

    def _write_applied(self) -> None:
        self._in_order = False
        if self._applied:
            self.store.conn.execute(
                "UPDATE engine_state SET value = max(value, ?) WHERE key = 'applied_upto'",
                (self._applied,),
            )
            self._applied = 0

    def rebuilds(self) -> int:
        """How many times derived state was rebuilt (a removal can revoke applied events)."""
        row = self.store.query_one("SELECT value FROM engine_state WHERE key = 'rebuilds'")
        return int(row[0]) if row else 0

    def applied_upto(self) -> int:
        """The local rowid up to which every stored event is applied (in any process)."""
        row = self.store.query_one("SELECT value FROM engine_state WHERE key = 'applied_upto'")
        return int(row[0]) if row else 0

    # --- subscriptions ------------------------------------------------------------------------

    def subscribe(self, after: int | None = None) -> Subscription:
        """Applied events after local rowid ``after`` (default: from now on)."""
        from engine.subscription import Subscription

        return Subscription(self, self.applied_upto() if after is None else after)

    def add_wakeup(self, wakeup: asyncio.Event) -> None:
        self._wakeups.add(wakeup)

    def remove_wakeup(self, wakeup: asyncio.Event) -> None:
        self._wakeups.discard(wakeup)

    def _notify(self) -> None:
        for wakeup in self._wakeups:
            wakeup.set()

    def notify(self) -> None:
        """Wake whoever waits for events, for events another process stored on this home
        (a folder worker told so by its daemon)."""
        self._notify()

    # --- rebuilding derived state -------------------------------------------------------------

    def rebuild(self) -> int:
        """Drop every derived row and re-apply the whole log (derived state is disposable)."""
        self._live.clear()
        with self.store.atomic():
            for table in (
                "event_index",
                "docs",
                "snapshots",
                "replica_names",
                "file_versions",
                "file_bases",
                "chunks",
                "files",
            ):
                self.store.conn.execute(f"DELETE FROM {table}")
            self.store.conn.execute("UPDATE engine_state SET value = 0 WHERE key = 'applied_upto'")
            self.store.conn.execute(  # tells state folded above the engine, in any process
                "INSERT INTO engine_state VALUES ('rebuilds', 1)"
                " ON CONFLICT (key) DO UPDATE SET value = value + 1"
            )
        applied = self.catch_up()
        for hook in self.rebuilt_hooks:
            hook()
        return applied
