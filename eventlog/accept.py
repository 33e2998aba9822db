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
from eventlog.membership import Member, founder_from_genesis, member_from_add
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


class Log:
    """A vault's log over a :class:`Store`: the one gate every event passes."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.vault_id = store.vault_id
        self._roster: dict[bytes, Member] = store.members()
        self._frozen: set[bytes] = store.frozen_authors()
        self._lamport = store.max_lamport()
        self._heads: dict[bytes, Head] = {}
        store.rollback_hooks.append(self._reload)

    def _reload(self) -> None:
        self._roster = self.store.members()
        self._frozen = self.store.frozen_authors()
        self._lamport = self.store.max_lamport()
        self._heads.clear()

    @property
    def roster(self) -> dict[bytes, Member]:
        return dict(self._roster)

    @property
    def frozen(self) -> set[bytes]:
        return set(self._frozen)

    def head(self, author: bytes) -> Head | None:
        cached = self._heads.get(author)
        if cached is None:
            cached = self.store.head(author)
            if cached is not None:
                self._heads[author] = cached
        return cached

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

    def _check_vault(self, event: Event) -> None:
        if event.vault == self.vault_id:
            return
        if event.vault == ZERO32 and event.kind == Kind.GENESIS and event.id == self.vault_id:
            return
        raise WrongVaultError("event belongs to another vault")

    def _admit(self, event: Event, now: int) -> tuple[Status, list[Accepted]]:
        """Place a verified event: store it, park it, or record it as evidence."""
        if event.author in self._frozen:
            raise FrozenAuthorError("author equivocated and is frozen")
        stored = self.store.event_at(event.author, event.seq)
        if stored is not None:
            if stored.id == event.id:
                return Status.DUPLICATE, []
            self._equivocate(event, (stored.id, stored.raw), now)
            return Status.EQUIVOCATION, []
        head = self.head(event.author)
        expected = 1 if head is None else head.seq + 1
        if event.seq > expected:
            return self._park(event, f"waiting for seq {expected}", now)
        if head is not None and event.prev != head.id:
            raise BrokenChainError(f"prev does not name seq {head.seq} of this author")
        if head is not None and event.lamport <= head.lamport:
            raise BrokenChainError("lamport does not increase along the author's log")
        member = self._roster_change(event)
        if member is None and event.author not in self._roster:
            return self._park(event, "author not on the roster yet", now)
        rowid = self.store.insert_event(event)
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
        if event.kind == Kind.DATA and event.epoch == 0:
            raise MembershipError("data events must be sealed (epoch >= 1)")
        return None

    @staticmethod
    def _public_payload(event: Event) -> Payload:
        if event.epoch != 0:
            raise MembershipError("membership events must have a public body")
        try:
            return decode_payload(event.body)
        except DecodeError as exc:
            raise MembershipError(f"membership body: {exc}") from exc

    def _park(self, event: Event, reason: str, now: int) -> tuple[Status, list[Accepted]]:
        waiting = self.store.pending_at(event.author, event.seq)
        if waiting is not None:
            if waiting[0] != event.id:
                self._equivocate(event, waiting, now)
                return Status.EQUIVOCATION, []
            return Status.PENDING, []
        if self.store.pending_count() >= MAX_PENDING:
            raise PendingFullError(f"pending area holds {MAX_PENDING} events; retry later")
        self.store.add_pending(event, reason, now)
        return Status.PENDING, []

    def _equivocate(self, event: Event, other: tuple[bytes, bytes], now: int) -> None:
        """Two signed events at one place: keep both as evidence and freeze the author."""
        self.store.record_equivocation(event.author, event.seq, [other, (event.id, event.raw)], now)
        self._frozen.add(event.author)

    def _drain(self, outcome: Outcome) -> None:
        """Move pending events that the events just stored have unblocked.

        An event waits for its predecessor or for its author's membership; so each stored
        event unblocks at most its successor and, if it adds a member, that member's seq 1.
        """
        queue = [key for a in outcome.accepted for key in self._unblocked_by(a.event)]
        while queue:
            author, seq = queue.pop()
            waiting = self.store.pending_at(author, seq)
            if waiting is None:
                continue
            self.store.drop_pending(author, seq)
            event = decode_event(waiting[1])
            try:
                status, accepted = self._admit(event, now_ms())
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
