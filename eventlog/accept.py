"""The accept path (DESIGN.md "Accepting an event"), the same for local and remote events.

decode -> vault -> signature -> roster -> chain -> equivocation -> one transaction -> publish.
A relay stops here; a full replica's engine then decrypts and applies what this returns.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import Enum

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
from eventlog.membership import Member, check_writer, founder_from_genesis, member_from_add
from eventlog.payload import Payload, decode_payload
from eventlog.sealing import Keyring, Position, author_event
from eventlog.store import MAX_PENDING, Head, Store


def now_ms() -> int:
    return int(time.time() * 1000)


class Status(Enum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    PENDING = "pending"
    EQUIVOCATION = "equivocation"


@dataclass(frozen=True, slots=True)
class Accepted:
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


class Log:
    """A vault's log over a :class:`Store`: the one gate every event passes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.vault_id = store.vault_id
        self._roster: dict[bytes, Member] = store.members()
        self._frozen: set[bytes] = store.frozen_authors()
        self._heads: dict[bytes, Head] = store.version_vector()
        """The version vector, kept in memory: sync sessions read it on every push."""
        self._lamport = max((h.lamport for h in self._heads.values()), default=0)
        store.rollback_hooks.append(self._reload)
        store.external_change_hooks.append(self._reload)

    def _reload(self) -> None:
        self._roster = self.store.members()
        self._frozen = self.store.frozen_authors()
        self._heads = self.store.version_vector()
        self._lamport = max((h.lamport for h in self._heads.values()), default=0)

    def refresh(self) -> None:
        """Pick up what other processes committed (cheap when nothing changed)."""
        self.store.poll_external_change()

    @property
    def roster(self) -> dict[bytes, Member]:
        return dict(self._roster)

    @property
    def frozen(self) -> set[bytes]:
        return set(self._frozen)

    def head(self, author: bytes) -> Head | None:
        return self._heads.get(author)

    def version_vector(self) -> dict[bytes, Head]:
        return dict(self._heads)

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
        with self.store.atomic():
            status, accepted = self._admit(event, now_ms())
            if status is not Status.ACCEPTED:
                raise IntegrityError(f"local event was not accepted: {status.value}")
            outcome = Outcome(status, event.id, accepted)
            self._drain(outcome)
        return outcome

    # --- remote events ----------------------------------------------------------------------

    def accept(self, raw: bytes) -> Outcome:
        """Check and store one event from anywhere. Raises a typed error if it is invalid."""
        event = decode_event(raw)
        self._check_vault(event)
        verify_signature(event.author, event.sig, event.signed)
        with self.store.atomic():
            status, accepted = self._admit(event, now_ms())
            outcome = Outcome(status, event.id, accepted)
            if accepted:
                self._drain(outcome)
        return outcome

    def accept_batch(self, raws: list[bytes]) -> Outcome:
        """Check and store a batch from a peer in one transaction, verifying by segment.

        Why one signature per segment suffices: each event's signed bytes contain ``prev``,
        the BLAKE2b-256 id of the author's previous signed bytes. If the last event of a run
        ``e_1 .. e_n`` (one author, consecutive seqs, each ``prev`` naming the id of the one
        before) carries a valid signature, the author signed ``e_n``'s bytes, which fix
        ``id(e_{n-1})``, which fixes ``e_{n-1}``'s bytes (a second preimage of BLAKE2b-256 is
        infeasible), and so on down to ``e_1``: the author vouched for every event of the run.
        This is why Hypercore signs tree roots rather than blocks. The tail of each run is
        stored as an *anchor*; batches we serve end at anchors, so every peer can use the
        same argument on what we send (``Store.serving_batch``).

        Raises a typed error for the first invalid event, and then nothing of the batch is
        stored (it is one transaction): the peer is closed and resends from version vectors.
        """
        events = [decode_event(raw) for raw in raws]
        for event in events:
            self._check_vault(event)
        tails = set()
        for i, event in enumerate(events):
            following = events[i + 1] if i + 1 < len(events) else None
            continues = (
                following is not None
                and following.author == event.author
                and following.seq == event.seq + 1
                and following.prev == event.id
            )
            if not continues:
                verify_signature(event.author, event.sig, event.signed)
                tails.add(i)
        outcome = Outcome(Status.DUPLICATE, events[0].id if events else b"")
        for event in events:
            outcome.heads[event.author] = max(outcome.heads.get(event.author, 0), event.seq)
        now = now_ms()
        with self.store.atomic():
            for i, event in enumerate(events):
                status, accepted = self._admit(event, now, anchor=i in tails)
                if status is Status.ACCEPTED:
                    outcome.status = Status.ACCEPTED
                    start = len(outcome.accepted)
                    outcome.accepted.extend(accepted)
                    self._drain(outcome, start)
        return outcome

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
        if event.seq > expected:
            return self._park(event, f"waiting for seq {expected}", now, anchor)
        if head is not None and event.prev != head.id:
            raise BrokenChainError(f"prev does not name seq {head.seq} of this author")
        if head is not None and event.lamport <= head.lamport:
            raise BrokenChainError("lamport does not increase along the author's log")
        member = self._roster_change(event)
        if member is None and event.author not in self._roster:
            return self._park(event, "author not on the roster yet", now, anchor)
        rowid = self.store.insert_event(event, anchor)
        if member is not None:
            self.store.put_member(member)
            self._roster[member.author] = member
        self._heads[event.author] = Head(event.seq, event.id, event.lamport)
        self._lamport = max(self._lamport, event.lamport)
        return Status.ACCEPTED, [Accepted(rowid, event)]

    def _roster_change(self, event: Event) -> Member | None:
        """The member a genesis or membership event adds; checks the writer otherwise."""
        if event.kind == Kind.GENESIS:
            return founder_from_genesis(event, self._public_payload(event), self.vault_id)
        if event.author not in self._roster:
            return None
        if event.kind == Kind.MEMBERSHIP:
            return member_from_add(self._roster, event, self._public_payload(event))
        check_writer(self._roster, event)
        return None

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
