"""The roster: who may write to a vault, folded from public membership events.

A pure fold over events: no I/O. The *genesis* event (seq 1 of the founder, ``vault`` field
zero, its id becomes the vault id) makes the founder the first member with role ``owner``.
``member.add`` events add replicas with a role and carry the epoch keys wrapped for the new
member's X25519 key.

Roles: ``owner`` manages the roster; ``full`` is an ordinary device. Two *delegate* roles
let a device join without an existing device online: an ``invite`` key (derived from a
one-time code) may write exactly one event, a ``member.add`` of a ``full`` device, before it
expires; the ``recovery`` key (derived from the vault's recovery secret) may add ``full``
devices at any time. Delegates hold the vault keys (wrapped for them) so the device they
admit can read the vault; they never hold anything else.

``member.remove`` (by any device member, owner or full) removes a member and starts a new key
epoch, whose key it carries wrapped for every *remaining* member only. It records ``cutoff``:
the removed author's head seq as the remover had it. That author's events up to ``cutoff``
stay valid; any beyond it are *revoked* — never stored, served or applied — which every
replica and the relay decide alike from the removal event alone.

The roster is a **fold** (:func:`fold_roster`) over the set of membership events, in
``(lamport, author, seq)`` order, so concurrent changes (two devices removing each other, a
removal racing an add) resolve the same way on every replica whatever order they arrived in:
the first change in that order wins, and an event becomes invalid when its author was removed
before it (in the fold) or its seq lies beyond its author's cutoff (which may be learnt only
later in the fold, hence the fixpoint: the fold is re-run without such events until none is
left). A removed key is never re-admitted.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Final

from eventlog.crypto import KEY_BYTES
from eventlog.envelope import ZERO32, Event, Kind
from eventlog.errors import MembershipError, WrongTypeError
from eventlog.payload import Payload, field_bytes, field_str

ROLE_OWNER: Final = "owner"
ROLE_FULL: Final = "full"
ROLE_INVITE: Final = "invite"
ROLE_RECOVERY: Final = "recovery"
ROLES: Final = frozenset({ROLE_OWNER, ROLE_FULL, ROLE_INVITE, ROLE_RECOVERY})
DEVICE_ROLES: Final = frozenset({ROLE_OWNER, ROLE_FULL})
T_GENESIS: Final = "vault.genesis"
T_MEMBER_ADD: Final = "member.add"
T_MEMBER_REMOVE: Final = "member.remove"
EPOCH_AUTHOR_BITS: Final = 24
"""A new epoch's number is ``lamport << 24 | first 3 bytes of the author``: two concurrent
rotations cannot pick one number (the fold refuses the rare exact collision)."""


class RosterConflictError(MembershipError):
    """A membership event that was valid when written but lost to a concurrent change (the
    member it names was already removed, say). It is kept in the log, inert: refusing it
    would cut its author's chain."""


@dataclass(frozen=True, slots=True)
class Member:
    author: bytes
    kx: bytes
    role: str
    added_by: bytes
    added_event: bytes
    added_ms: int
    expires_ms: int = 0
    """For invites: after this wall-clock time the key may no longer be used (0 = never)."""
    removed_by: bytes | None = None
    removed_event: bytes | None = None
    removed_ms: int = 0
    cutoff: int | None = None
    """Removed members: their last valid seq (events beyond it are revoked)."""

    @property
    def can_manage(self) -> bool:
        return self.role == ROLE_OWNER

    @property
    def active(self) -> bool:
        return self.removed_event is None

    def allows(self, seq: int) -> bool:
        """May this member's event at ``seq`` stand (removal revokes what follows ``cutoff``)?"""
        return self.cutoff is None or seq <= self.cutoff


def genesis_payload(founder_kx: bytes) -> Payload:
    return {"t": T_GENESIS, "kx": founder_kx}


def member_add_payload(
    member: bytes, kx: bytes, role: str, keys: dict[int, bytes], expires_ms: int = 0
) -> Payload:
    """``keys`` maps epoch -> that epoch's key wrapped for ``kx`` (see ``wrap_context``)."""
    if role not in ROLES:
        raise MembershipError(f"unknown role {role!r}")
    payload: Payload = {"t": T_MEMBER_ADD, "member": member, "kx": kx, "role": role, "keys": keys}
    if expires_ms:
        payload["expires_ms"] = expires_ms
    return payload


def wrap_context(vault_id: bytes, epoch: int, member: bytes) -> bytes:
    """What a wrapped epoch key is bound to, so it cannot be replayed into another vault."""
    return b"shoal/v1/epoch-key" + vault_id + epoch.to_bytes(8, "big") + member


def member_remove_payload(
    member: bytes, cutoff: int, epoch: int, keys: dict[bytes, bytes]
) -> Payload:
    """``keys`` maps each remaining member's key -> the new epoch key wrapped for it."""
    return {"t": T_MEMBER_REMOVE, "member": member, "cutoff": cutoff, "epoch": epoch, "keys": keys}


def rotation_epoch(lamport: int, author: bytes) -> int:
    """The epoch number a rotation at ``lamport`` by ``author`` must use (see the constant)."""
    return (lamport << EPOCH_AUTHOR_BITS) | int.from_bytes(author[: EPOCH_AUTHOR_BITS // 8], "big")


def founder_from_genesis(event: Event, payload: Payload, vault_id: bytes) -> Member:
    """Check a genesis event and return the founder it makes a member."""
    if event.kind != Kind.GENESIS or event.seq != 1 or event.vault != ZERO32:
        raise MembershipError("genesis must be seq 1, kind genesis, with a zero vault field")
    if event.id != vault_id:
        raise MembershipError("genesis is not this vault's genesis")
    if event.epoch != 0 or payload.get("t") != T_GENESIS:
        raise MembershipError("genesis must carry a public vault.genesis body")
    kx = field_bytes(payload, "kx", KEY_BYTES)
    return Member(event.author, kx, ROLE_OWNER, event.author, event.id, event.time_ms)


def _check_writer_may_add(writer: Member | None, event: Event, role: str) -> None:
    if writer is None or not writer.active:
        raise MembershipError("only members may change the roster")
    if writer.can_manage:
        return
    if writer.role == ROLE_RECOVERY and role in DEVICE_ROLES:
        return
    if writer.role == ROLE_INVITE and role == ROLE_FULL:
        if event.seq != 1:
            raise MembershipError("an invite admits one device only")
        if writer.expires_ms and event.time_ms > writer.expires_ms:
            raise MembershipError("the invite had expired")
        return
    raise MembershipError(f"a {writer.role} member may not add a {role} member")


def member_from_add(roster: dict[bytes, Member], event: Event, payload: Payload) -> Member:
    """Check a ``member.add`` against the roster and return the member it adds."""
    if event.epoch != 0 or payload.get("t") != T_MEMBER_ADD:
        raise MembershipError("membership events carry a public member.add body")
    try:
        member = field_bytes(payload, "member", KEY_BYTES)
        kx = field_bytes(payload, "kx", KEY_BYTES)
        role = field_str(payload, "role")
        keys = payload.get("keys")
        if type(keys) is not dict or not all(
            type(k) is int and type(v) is bytes for k, v in keys.items()
        ):
            raise WrongTypeError("member.add: 'keys' must map epochs to wrapped keys")
        expires = payload.get("expires_ms", 0)
        if type(expires) is not int or expires < 0:
            raise WrongTypeError("member.add: 'expires_ms' must be a non-negative integer")
    except WrongTypeError as exc:
        raise MembershipError(str(exc)) from exc
    if role not in ROLES:
        raise MembershipError(f"unknown role {role!r}")
    _check_writer_may_add(roster.get(event.author), event, role)
    if member in roster and (member != event.author or not roster[member].active):
        raise RosterConflictError("replica is already a member (or was removed)")
    return Member(member, kx, role, event.author, event.id, event.time_ms, expires)


@dataclass(frozen=True, slots=True)
class Removal:
    """A checked ``member.remove``: who, up to which seq, and the epoch it starts."""

    member: bytes
    cutoff: int
    epoch: int
    keys: dict[bytes, bytes]


def removal_from_payload(payload: Payload) -> Removal:
    try:
        member = field_bytes(payload, "member", KEY_BYTES)
        cutoff, epoch, keys = payload.get("cutoff"), payload.get("epoch"), payload.get("keys")
        if type(cutoff) is not int or cutoff < 0 or type(epoch) is not int or epoch < 1:
            raise WrongTypeError("member.remove: 'cutoff' and 'epoch' must be integers")
        if type(keys) is not dict or not all(
            type(k) is bytes and len(k) == KEY_BYTES and type(v) is bytes for k, v in keys.items()
        ):
            raise WrongTypeError("member.remove: 'keys' must map member keys to wrapped keys")
    except WrongTypeError as exc:
        raise MembershipError(str(exc)) from exc
    return Removal(member, cutoff, epoch, dict(keys))


def _check_removal(roster: dict[bytes, Member], event: Event, removal: Removal) -> None:
    writer = roster.get(event.author)
    if writer is None or not writer.active:
        raise RosterConflictError("the remover is no longer a member")
    if writer.role not in DEVICE_ROLES:
        raise MembershipError("only a device member (owner or full) may remove members")
    target = roster.get(removal.member)
    if target is None or not target.active:
        raise RosterConflictError("the removed key is not a member (any more)")
    if removal.member == event.author:
        raise MembershipError("a device cannot remove itself")
    if removal.epoch != rotation_epoch(event.lamport, event.author):
        raise MembershipError("member.remove: epoch does not follow from (lamport, author)")


@dataclass(slots=True)
class Roster:
    """The fold's result: every member ever validly added, and which events stand.

    ``members`` includes removed members (with their ``cutoff``); ``invalid`` names the
    membership events that do not stand, with why; ``rotations`` lists the valid removals in
    fold order (each starts an epoch).
    """

    members: dict[bytes, Member] = field(default_factory=dict)
    invalid: dict[bytes, str] = field(default_factory=dict)
    late: set[bytes] = field(default_factory=set)
    """Invalid because their seq lies beyond their author's cutoff (revoked, not malformed)."""
    conflicts: set[bytes] = field(default_factory=set)
    """Invalid because a concurrent change came first (kept, inert; see RosterConflictError)."""
    rotations: list[tuple[bytes, Removal]] = field(default_factory=list)

    def active(self) -> dict[bytes, Member]:
        return {a: m for a, m in self.members.items() if m.active}

    def removed(self) -> dict[bytes, Member]:
        return {a: m for a, m in self.members.items() if not m.active}

    def allows(self, author: bytes, seq: int) -> bool:
        member = self.members.get(author)
        return member is not None and member.allows(seq)


MembershipEntry = tuple[Event, Payload | None]
"""A stored or candidate membership event with its public payload (None: not decodable)."""


def fold_order(event: Event) -> tuple[int, bytes, int]:
    return (event.lamport, event.author, event.seq)


def fold_roster(vault_id: bytes, entries: Iterable[MembershipEntry]) -> Roster:
    """The roster a set of membership events makes, the same whatever order they came in."""
    ordered = sorted(entries, key=lambda entry: fold_order(entry[0]))
    late: set[bytes] = set()
    while True:
        roster = _walk(vault_id, ordered, late)
        beyond = {
            event.id
            for event, _ in ordered
            if event.id not in roster.invalid and not roster.allows(event.author, event.seq)
        }
        if not beyond:
            roster.late = late
            for event_id in late:
                roster.invalid[event_id] = "written after its author was removed"
            return roster
        late |= beyond


def _walk(vault_id: bytes, ordered: list[MembershipEntry], skip: set[bytes]) -> Roster:
    roster = Roster()
    epochs: set[int] = set()
    for event, payload in ordered:
        if event.id in skip:
            continue
        try:
            _fold_one(vault_id, roster, epochs, event, payload)
        except RosterConflictError as exc:
            roster.invalid[event.id] = str(exc)
            roster.conflicts.add(event.id)
        except (MembershipError, WrongTypeError) as exc:
            roster.invalid[event.id] = str(exc)
    return roster


def _fold_one(
    vault_id: bytes, roster: Roster, epochs: set[int], event: Event, payload: Payload | None
) -> None:
    if payload is None or event.epoch != 0:
        raise MembershipError("membership events must have a public body")
    if event.kind == Kind.GENESIS:
        if roster.members:
            raise MembershipError("a second genesis")
        founder = founder_from_genesis(event, payload, vault_id)
        roster.members[founder.author] = founder
        return
    author = roster.members.get(event.author)
    if author is not None and not author.allows(event.seq):
        raise MembershipError("written after its author was removed")
    kind = payload.get("t")
    if kind == T_MEMBER_ADD:
        member = member_from_add(roster.members, event, payload)
        roster.members[member.author] = member
    elif kind == T_MEMBER_REMOVE:
        removal = removal_from_payload(payload)
        _check_removal(roster.members, event, removal)
        if removal.epoch in epochs:
            raise RosterConflictError("member.remove: its epoch number is already in use")
        epochs.add(removal.epoch)
        roster.members[removal.member] = replace(
            roster.members[removal.member],
            removed_by=event.author,
            removed_event=event.id,
            removed_ms=event.time_ms,
            cutoff=removal.cutoff,
        )
        roster.rotations.append((event.id, removal))
    else:
        raise MembershipError(f"unknown membership event {kind!r}")


def wrapped_keys(payload: Payload) -> dict[int, bytes]:
    keys = payload.get("keys")
    return dict(keys) if isinstance(keys, dict) else {}


def check_writer(roster: Roster, event: Event) -> None:
    """Data and other kinds: written by a device member (delegates only add devices)."""
    member = roster.members.get(event.author)
    if member is None:
        raise MembershipError("author is not a member of this vault")
    if member.role not in DEVICE_ROLES:
        raise MembershipError(f"a {member.role} key may only add devices")
    if event.kind == Kind.DATA and event.epoch == 0:
        raise MembershipError("data events must be sealed (epoch >= 1)")
