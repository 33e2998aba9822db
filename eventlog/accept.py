"""The accept path (DESIGN.md "Accepting an event"), the same for local and remote events.

decode -> vault -> signature -> roster -> chain -> equivocation -> one transaction -> publish.
A relay stops here; a full replica's engine then decrypts and applies what this returns.

The roster is the fold of ``eventlog.membership`` over the stored membership events, re-run
when one arrives. An event beyond its removed author's cutoff is *revoked*: not stored, not an
error (a member that saw it before the removal may still offer it). Stored events that a new
removal revokes stay in the log, but the version vector this log advertises stops at the
cutoff (so they are never served) and ``Outcome.revoked_changed`` tells the engine to drop
what it derived from them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum
from typing import NamedTuple

from eventlog.crypto import SigningKey, verify_signature
from eventlog.envelope import ZERO32, Event, Kind, decode_event
from eventlog.errors import (
    BrokenChainError,
    DecodeError,
    FrozenAuthorError,
    IntegrityError,
    MembershipError,
    PendingFullError,
    WrongVaultError,
)
from eventlog.membership import (
    Member,
    MembershipEntry,
    Roster,
    check_writer,
    fold_roster,
)
from eventlog.payload import Payload, decode_payload
from eventlog.sealing import Keyring, Position, author_event
from eventlog.store import MAX_PENDING, Head, Store

ROSTER_KINDS = frozenset({Kind.GENESIS, Kind.MEMBERSHIP})


def public_payload(event: Event) -> Payload | None:
    """The payload of a public (epoch 0) event; None if sealed or not a payload."""
    if event.epoch != 0:
        return None
    try:
        return decode_payload(event.body)
    except DecodeError:
        return None


def now_ms() -> int:
    return int(time.time() * 1000)


class Status(Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    PENDING = "pending"
    EQUIVOCATION = "equivocation"
    REVOKED = "revoked"
    """Written by a removed author after its cutoff: refused, not stored."""


class Accepted(NamedTuple):
    """An event now in the store, with its local arrival number."""

    rowid: int
    event: Event


@dataclass(slots=True)
class Outcome:
    status: Status
    event_id: bytes
    accepted: list[Accepted] = field(default_factory=list)
    """This event and any pending events it unblocked, in the order they were stored."""
    dropped: list[tuple[bytes, str]] = field(default_factory=list)
    """Pending events that turned out invalid once their turn came: ``(id, reason)``."""
    heads: dict[bytes, int] = field(default_factory=dict)
    """Highest seq per author among the events offered (stored, duplicate or parked)."""
    roster_changed: bool = False
    """A membership event was stored: the roster (and maybe the key epochs) changed."""
    revoked_changed: bool = False
    """Which stored events are revoked changed: derived state must be rebuilt."""


class Log:
    """A vault's log over a :class:`Store`: the one gate every event passes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.vault_id = store.vault_id
        self._frozen: set[bytes] = store.frozen_authors()
        self._heads: dict[bytes, Head] = store.version_vector()
        """The version vector, kept in memory: sync sessions read it on every push."""
        self._lamport = max((h.lamport for h in self._heads.values()), default=0)
        self._membership: dict[bytes, MembershipEntry] = {}
        self._fold = Roster()
        self._caps: dict[bytes, Head | None] = {}
        """Authors whose stored log runs past what the roster allows: where it must stop."""
        self.roster_version = 0
        """Bumped whenever the fold changes (callers compare it to notice a change)."""
        self.heads_version = 0
        """Bumped whenever :meth:`version_vector` may change: sync sessions cache on it."""
        self._revoked_changed = False
        self._load_roster()
        store.rollback_hooks.append(self._reload)
        store.external_change_hooks.append(self._reload)

    def _reload(self) -> None:
        self._frozen = self.store.frozen_authors()
        self._heads = self.store.version_vector()
        self.heads_version += 1
        self._lamport = max((h.lamport for h in self._heads.values()), default=0)
        self._load_roster()

    def _load_roster(self) -> None:
        entries: dict[bytes, MembershipEntry] = {}
        for row in self.store.membership_events():
            event = row.decoded()
            if event.kind in ROSTER_KINDS:
                entries[event.id] = (event, public_payload(event))
        self._membership = entries
        self._set_fold(fold_roster(self.vault_id, entries.values()))

    def _set_fold(self, fold: Roster) -> bool:
        """Adopt a new fold; True if it changes which stored events are revoked."""
        before = dict(self._caps)
        self._fold = fold
        self.roster_version += 1
        self.heads_version += 1
        self._caps = {}
        for author, head in self._heads.items():
            member = fold.members.get(author)
            limit = 0 if member is None else member.cutoff
            if limit is None or head.seq <= limit:
                continue
            row = self.store.event_at(author, limit) if limit else None
            self._caps[author] = None if row is None else Head(row.seq, row.id, row.lamport)
        return before != self._caps

    def _write_roster(self) -> None:
        self.store.replace_members(self._fold.members)

    def refresh(self) -> None:
        """Pick up what other processes committed (cheap when nothing changed)."""
        self.store.poll_external_change()

    @property
    def roster(self) -> dict[bytes, Member]:
        """The current members (removed ones are in :attr:`removed`)."""
        return self._fold.active()

    @property
    def removed(self) -> dict[bytes, Member]:
        return self._fold.removed()

    @property
    def fold(self) -> Roster:
        """The whole fold: every member ever, invalid membership events, rotations."""
        return self._fold

    def vault_format(self) -> int:
        """The event format the vault was founded in (its genesis event's version).

        Whatever is addressed by a hash for the vault's lifetime (file chunks) keeps the
        founding format's hash, so addresses and deduplication do not change on upgrade.
        """
        genesis = self._membership.get(self.vault_id)
        if genesis is None:
            raise MembershipError("the vault's genesis event is not here yet")
        return genesis[0].header.v

    def revoked(self, author: bytes, seq: int) -> bool:
        """Is this stored event beyond what the roster allows (its author removed before it)?"""
        return not self._fold.allows(author, seq)

    @property
    def frozen(self) -> set[bytes]:
        return set(self._frozen)

    def head(self, author: bytes) -> Head | None:
        return self._heads.get(author)

    def version_vector(self) -> dict[bytes, Head]:
        """How far we hold each log, stopping removed authors at their cutoff."""
        if not self._caps:
            return dict(self._heads)
        vv = {a: h for a, h in self._heads.items() if a not in self._caps}
        vv.update({a: h for a, h in self._caps.items() if h is not None})
        return vv

    # --- local writes -----------------------------------------------------------------------

    def next_position(self, author: bytes) -> Position:
        head = self.head(author)
        if head is None:
            return Position(1, ZERO32, self._lamport + 1)
        return Position(head.seq + 1, head.id, max(self._lamport, head.lamport) + 1)

    def append_local(
        self,
        signer: SigningKey,
        keyring: Keyring,
        kind: int,
        epoch: int,
        payload: Payload,
        vault: bytes | None = None,
    ) -> Outcome:
        """Author, sign and store one event of ours. Batch by wrapping calls in ``atomic()``.

        Our own signature is not re-verified (we just made it); every other check is the
        remote path's, so a local write can never store what a peer would refuse. The
        outcome's first accepted event is ours; any after it were pending and unblocked by
        it (a ``member.add`` admits events its member already sent).
        """
        event = author_event(
            signer,
            keyring,
            self.vault_id if vault is None else vault,
            self.next_position(signer.public),
            now_ms(),
            kind,
            epoch,
            payload,
        )
        version = self.roster_version
        with self.store.atomic():
            status, accepted = self._admit(event, now_ms())
            if status is Status.REVOKED:
                raise MembershipError("this device was removed from the vault")
            if status is not Status.ACCEPTED:
                raise IntegrityError(f"local event was not accepted: {status.value}")
            outcome = Outcome(status, event.id, accepted)
            self._drain(outcome)
            self._note_roster(outcome, version)
        outcome.revoked_changed = self._revoked_changed
        self._revoked_changed = False
        return outcome

    def _note_roster(self, outcome: Outcome, version: int) -> None:
        if self.roster_version != version:
            outcome.roster_changed = True
            self._write_roster()

    # --- remote events ----------------------------------------------------------------------

    def accept(self, raw: bytes) -> Outcome:
        """Check and store one event from anywhere. Raises a typed error if it is invalid."""
        event = decode_event(raw)
        self._check_vault(event)
        verify_signature(event.author, event.sig, event.message)
        version = self.roster_version
        with self.store.atomic():
            status, accepted = self._admit(event, now_ms())
            outcome = Outcome(status, event.id, accepted)
            if accepted:
                self._drain(outcome)
            self._note_roster(outcome, version)
        if status is Status.REVOKED:
            outcome.dropped.append((event.id, "written after its author was removed"))
        outcome.revoked_changed = self._revoked_changed
        self._revoked_changed = False
        return outcome

    def accept_batch(self, raws: list[bytes]) -> Outcome:
        """Check and store a batch from a peer in one transaction, verifying by segment.

        Why one signature per segment suffices: each event's signed bytes contain ``prev``,
        the id (BLAKE3-256; BLAKE2b-256 in format v1) of the author's previous signed bytes.
        If the last event of a run ``e_1 .. e_n`` (one author, consecutive seqs, each
        ``prev`` naming the id of the one before) carries a valid signature, the author
        signed ``id(e_n)`` (or, in v1, ``e_n``'s bytes), which fixes ``e_n``'s bytes, which
        fix ``id(e_{n-1})``, which fixes ``e_{n-1}``'s bytes (a second preimage of the hash is
        infeasible), and so on down to ``e_1``: the author vouched for every event of the run.
        This is why Hypercore signs tree roots rather than blocks. The tail of each run is
        stored as an *anchor*; batches we serve end at anchors, so every peer can use the
        same argument on what we send (``Store.serving_batch``).

        Raises a typed error for the first invalid event, and then nothing of the batch is
        stored (it is one transaction): the peer is closed and resends from version vectors.
        """
        events = [decode_event(raw) for raw in raws]
        outcome = Outcome(Status.DUPLICATE, events[0].id if events else b"")
        heads = outcome.heads
        tails = []  # the index of each run's last event, in order
        last = len(events) - 1
        for i, event in enumerate(events):  # runs every event of a sync: plain tuple reads
            header = event.header
            if header.vault != self.vault_id:
                self._check_vault(event)
            if heads.get(header.author, 0) < header.seq:
                heads[header.author] = header.seq
            following = events[i + 1].header if i < last else None
            if (
                following is None
                or following.author != header.author
                or following.seq != header.seq + 1
                or following.prev != event.id
            ):
                verify_signature(header.author, event.sig, event.message)
                tails.append(i)
        now = now_ms()
        version = self.roster_version
        with self.store.atomic():
            first = 0
            for tail in tails:
                run = events[first : tail + 1]
                first = tail + 1
                if self._admit_run(run, outcome):
                    continue
                for event in run:
                    status, accepted = self._admit(event, now, anchor=event is run[-1])
                    if status is Status.ACCEPTED:
                        outcome.status = Status.ACCEPTED
                        start = len(outcome.accepted)
                        outcome.accepted.extend(accepted)
                        self._drain(outcome, start)
                    elif status is Status.REVOKED:
                        outcome.dropped.append((event.id, "written after its author was removed"))
            self._note_roster(outcome, version)
        outcome.revoked_changed = self._revoked_changed
        self._revoked_changed = False
        return outcome

    def _admit_run(self, run: list[Event], outcome: Outcome) -> bool:
        """Store a run that simply continues its author's log, as a whole; False if it does
        not (nothing is done then: ``_admit`` takes its events one by one).

        The common case of a sync. ``accept_batch`` has checked the run's links and its
        anchor's signature, so what ``_admit`` checks per event reduces to the first link,
        the lamports and the writer. A gap, a duplicate, a membership event, an author that
        is frozen or removed before the run's end, or anything parked (it may be an
        equivocation, or unblocked by the run) takes the event-by-event path.
        """
        first, last = run[0], run[-1]
        author = first.author
        head = self._heads.get(author)
        if head is None:  # a log that starts here: decode_event checked seq 1's zero prev
            head = Head(0, first.prev, 0)
        if (
            len(run) < 2
            or first.seq != head.seq + 1
            or first.prev != head.id
            or author in self._frozen
            or not self._fold.allows(author, last.seq)
            or self.store.pending_count()
        ):
            return False
        lamport = head.lamport
        for event in run:
            if event.kind in ROSTER_KINDS or event.lamport <= lamport:
                return False
            lamport = event.lamport
        for event in run:
            check_writer(self._fold, event)  # raises as _admit would: the batch is refused
        rowids = self.store.insert_run(run)
        self._heads[author] = Head(last.seq, last.id, last.lamport)
        self.heads_version += 1
        self._lamport = max(self._lamport, last.lamport)
        outcome.accepted.extend(map(Accepted, rowids, run))
        outcome.status = Status.ACCEPTED
        return True

    def _check_vault(self, event: Event) -> None:
        if event.vault == self.vault_id:
            return
        if event.vault == ZERO32 and event.kind == Kind.GENESIS and event.id == self.vault_id:
            return
        raise WrongVaultError("event belongs to another vault")

    def _admit(self, event: Event, now: int, anchor: bool = True) -> tuple[Status, list[Accepted]]:
        """Place an authenticated event: store it, park it, or record it as evidence.

        ``anchor`` says the event's own signature was checked (see ``accept_batch``).
        """
        if event.author in self._frozen:
            raise FrozenAuthorError("author equivocated and is frozen")
        head = self.head(event.author)
        expected = 1 if head is None else head.seq + 1
        if event.seq < expected:
            stored = self.store.event_at(event.author, event.seq)
            if stored is not None and stored.id == event.id:
                return Status.DUPLICATE, []
            if stored is not None:
                self._equivocate(event, (stored.id, stored.raw), now)
                return Status.EQUIVOCATION, []
        # A membership event at its turn is not refused by the roster as it stands: an earlier
        # (in fold order) one may reinstate its author, so it is judged by the fold it joins.
        roster_kind = event.kind in ROSTER_KINDS
        revoked = event.author in self._fold.members and self.revoked(event.author, event.seq)
        if revoked and (not roster_kind or event.seq > expected):
            return Status.REVOKED, []  # never parked: a peer re-offers it if a change reinstates
        if event.seq > expected:
            return self._park(event, f"waiting for seq {expected}", now, anchor)
        if head is not None and event.prev != head.id:
            raise BrokenChainError(f"prev does not name seq {head.seq} of this author")
        if head is not None and event.lamport <= head.lamport:
            raise BrokenChainError("lamport does not increase along the author's log")
        if event.kind != Kind.GENESIS and event.author not in self._fold.members:
            return self._park(event, "author not on the roster yet", now, anchor)
        fold = None
        if roster_kind:
            fold = self._fold_with(event)
            if not fold.allows(event.author, event.seq):
                return Status.REVOKED, []  # it lost to a concurrent removal of its author
        else:
            check_writer(self._fold, event)
        rowid = self.store.insert_event(event, anchor)
        self._heads[event.author] = Head(event.seq, event.id, event.lamport)
        self.heads_version += 1
        self._lamport = max(self._lamport, event.lamport)
        if fold is not None:
            self._membership[event.id] = (event, self._public_payload(event))
            self._revoked_changed |= self._set_fold(fold)
            self._drop_revoked_pending()
        return Status.ACCEPTED, [Accepted(rowid, event)]

    def _drop_revoked_pending(self) -> None:
        """Parked events the roster now revokes will never be placed: let them go."""
        for author, member in self._fold.members.items():
            if member.cutoff is not None:
                self.store.drop_pending_after(author, member.cutoff)

    def _fold_with(self, event: Event) -> Roster:
        """The roster with one more membership event.

        Raises if the event could never stand (malformed, or its author's role may not make
        this change); one that only lost to a concurrent change is kept (inert), and one whose
        author turns out removed before it is revoked by the caller.
        """
        payload = self._public_payload(event)
        fold = fold_roster(self.vault_id, [*self._membership.values(), (event, payload)])
        reason = fold.invalid.get(event.id)
        intrinsic = reason is not None and event.id not in fold.conflicts | fold.late
        if intrinsic and fold.allows(event.author, event.seq):
            raise MembershipError(str(reason))
        return fold

    @staticmethod
    def _public_payload(event: Event) -> Payload:
        if event.epoch != 0:
            raise MembershipError("membership events must have a public body")
        try:
            return decode_payload(event.body)
        except DecodeError as exc:
            raise MembershipError(f"membership body: {exc}") from exc

    def _park(
        self, event: Event, reason: str, now: int, anchor: bool
    ) -> tuple[Status, list[Accepted]]:
        waiting = self.store.pending_at(event.author, event.seq)
        if waiting is not None:
            if waiting[0] != event.id:
                self._equivocate(event, waiting[:2], now)
                return Status.EQUIVOCATION, []
            return Status.PENDING, []
        if self.store.pending_count() >= MAX_PENDING:
            raise PendingFullError(f"pending area holds {MAX_PENDING} events; retry later")
        self.store.add_pending(event, reason, now, anchor)
        return Status.PENDING, []

    def _equivocate(self, event: Event, other: tuple[bytes, bytes], now: int) -> None:
        """Two signed events at one place: keep both as evidence and freeze the author."""
        self.store.record_equivocation(event.author, event.seq, [other, (event.id, event.raw)], now)
        self._frozen.add(event.author)

    def _drain(self, outcome: Outcome, start: int = 0) -> None:
        """Move pending events that the events just stored have unblocked.

        An event waits for its predecessor or for its author's membership; so each stored
        event unblocks at most its successor and, if it adds a member, that member's seq 1.
        """
        if not self.store.pending_count():
            return  # the common case: nothing waits, so nothing to look up
        queue = [key for a in outcome.accepted[start:] for key in self._unblocked_by(a.event)]
        while queue:
            author, seq = queue.pop()
            waiting = self.store.pending_at(author, seq)
            if waiting is None:
                continue
            self.store.drop_pending(author, seq)
            event = decode_event(waiting[1])
            try:
                status, accepted = self._admit(event, now_ms(), waiting[2])
            except (IntegrityError, MembershipError) as exc:
                outcome.dropped.append((event.id, str(exc)))
                continue
            if status is Status.ACCEPTED:
                outcome.accepted.extend(accepted)
                queue.extend(self._unblocked_by(event))

    def _unblocked_by(self, event: Event) -> list[tuple[bytes, int]]:
        keys = [(event.author, event.seq + 1)]
        if event.kind == Kind.MEMBERSHIP:
            member = self._public_payload(event).get("member")
            if isinstance(member, bytes):
                keys.append((member, 1))
        return keys
