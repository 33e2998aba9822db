"""Which epoch keys a membership change wraps for whom, and unwrapping the ones meant for us.

A ``member.add`` carries every epoch key the vault has, wrapped for the new member's X25519
key; a ``member.remove`` starts a new epoch whose key is wrapped for every member that stays
(see ``eventlog.membership`` for the fold that decides which of them stand). The engine
appends the events and keeps the keyring; this module only builds and opens the wrappings.
"""

from __future__ import annotations

from eventlog.accept import Log, now_ms
from eventlog.crypto import KxKey, random_key, wrap_key
from eventlog.errors import MembershipError, NotFoundError
from eventlog.membership import (
    ROLE_INVITE,
    Member,
    member_add_payload,
    member_remove_payload,
    rotation_epoch,
    wrap_context,
    wrapped_keys,
)
from eventlog.payload import Payload, decode_payload
from eventlog.sealing import Keyring


def add_payload(
    log: Log, keyring: Keyring, member: bytes, kx: bytes, role: str, expires_ms: int
) -> Payload:
    """A ``member.add`` for ``member`` carrying every epoch key we hold, wrapped for ``kx``."""
    keys = {
        epoch: wrap_key(kx, key, wrap_context(log.vault_id, epoch, member))
        for epoch, key in keyring.epochs().items()
    }
    return member_add_payload(member, kx, role, keys, expires_ms)


def removal(log: Log, me: bytes, member: bytes) -> tuple[Payload, int, bytes]:
    """A ``member.remove`` of ``member`` by ``me``; with the new epoch and its key.

    The cutoff is how far we hold the removed author's log. The new key is wrapped for each
    remaining member that can still connect, delegates included (an unused invite or the
    recovery key must still let a device read new events).
    """
    roster = log.roster
    if member == me:
        raise MembershipError("a device cannot remove itself; remove it from another device")
    if member not in roster:
        if member in log.removed:
            raise MembershipError("that device was already removed")
        raise NotFoundError(f"no member {member.hex()}")
    head = log.head(member)
    cutoff = 0 if head is None else head.seq
    epoch = rotation_epoch(log.next_position(me).lamport, me)
    key = random_key()
    keys = {
        m.author: wrap_key(m.kx, key, wrap_context(log.vault_id, epoch, m.author))
        for m in roster.values()
        if m.author != member and _gets_new_keys(log, m)
    }
    return member_remove_payload(member, cutoff, epoch, keys), epoch, key


def _gets_new_keys(log: Log, member: Member) -> bool:
    """An invite that was used or has expired can no longer connect: it needs no key."""
    if member.role != ROLE_INVITE:
        return True
    return log.head(member.author) is None and now_ms() <= member.expires_ms


def unwrap_added(log: Log, kx: KxKey, member: bytes) -> dict[int, bytes]:
    """The epoch keys ``member``'s own ``member.add`` carries (the epochs that existed then)."""
    entry = log.roster.get(member)
    if entry is None:
        raise MembershipError("this key is not (yet) a member of the vault")
    row = log.store.event_by_id(entry.added_event)
    if row is None:
        raise NotFoundError("the membership event is not in the store")
    payload = decode_payload(row.decoded().body)
    return {
        epoch: kx.unwrap(wrapped, wrap_context(log.vault_id, epoch, member))
        for epoch, wrapped in wrapped_keys(payload).items()
    }


def unwrap_rotations(log: Log, keyring: Keyring, kx: KxKey, member: bytes) -> dict[int, bytes]:
    """The keys of epochs that valid removals started for ``member`` and ``keyring`` lacks."""
    return {
        removal.epoch: kx.unwrap(wrapped, wrap_context(log.vault_id, removal.epoch, member))
        for _, removal in log.fold.rotations
        if (wrapped := removal.keys.get(member)) is not None and not keyring.has(removal.epoch)
    }
