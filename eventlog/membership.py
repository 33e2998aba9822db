"""The roster: who may write to a vault, folded from public membership events.

A pure fold over events: no I/O. The *genesis* event (seq 1 of the founder, ``vault`` field
zero, its id becomes the vault id) makes the founder the first member with role ``owner``.
``member.add`` events, written by an owner, add replicas with a role and carry the epoch keys
wrapped for the new member's X25519 key. The format leaves room for removal and new epochs
(``removed_by``, per-epoch ``keys``) which the hardening issue fills in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from eventlog.crypto import KEY_BYTES
from eventlog.envelope import ZERO32, Event, Kind
from eventlog.errors import MembershipError, WrongTypeError
from eventlog.payload import Payload, field_bytes, field_str

ROLE_OWNER: Final = "owner"
ROLE_FULL: Final = "full"
ROLES: Final = frozenset({ROLE_OWNER, ROLE_FULL})
T_GENESIS: Final = "vault.genesis"
T_MEMBER_ADD: Final = "member.add"


@dataclass(frozen=True, slots=True)
class Member:
    author: bytes
    kx: bytes
    role: str
    added_by: bytes
    added_event: bytes
    added_ms: int

    @property
    def can_manage(self) -> bool:
        return self.role == ROLE_OWNER


def genesis_payload(founder_kx: bytes) -> Payload:
    return {"t": T_GENESIS, "kx": founder_kx}


def member_add_payload(member: bytes, kx: bytes, role: str, keys: dict[int, bytes]) -> Payload:
    """``keys`` maps epoch -> that epoch's key wrapped for ``kx`` (see ``wrap_context``)."""
    if role not in ROLES:
        raise MembershipError(f"unknown role {role!r}")
    return {"t": T_MEMBER_ADD, "member": member, "kx": kx, "role": role, "keys": keys}


def wrap_context(vault_id: bytes, epoch: int, member: bytes) -> bytes:
    """What a wrapped epoch key is bound to, so it cannot be replayed into another vault."""
    return b"shoal/v1/epoch-key" + vault_id + epoch.to_bytes(8, "big") + member


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


def member_from_add(roster: dict[bytes, Member], event: Event, payload: Payload) -> Member:
    """Check a ``member.add`` against the roster and return the member it adds."""
    writer = roster.get(event.author)
    if writer is None or not writer.can_manage:
        raise MembershipError("only an owner may add members")
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
    except WrongTypeError as exc:
        raise MembershipError(str(exc)) from exc
    if role not in ROLES:
        raise MembershipError(f"unknown role {role!r}")
    existing = roster.get(member)
    if existing is not None and member != event.author:
        raise MembershipError("replica is already a member")
    return Member(member, kx, role, event.author, event.id, event.time_ms)


def wrapped_keys(payload: Payload) -> dict[int, bytes]:
    keys = payload.get("keys")
    return dict(keys) if isinstance(keys, dict) else {}


def check_writer(roster: dict[bytes, Member], event: Event) -> None:
    """Everything but genesis and membership: the author must be a member, data sealed."""
    if event.author not in roster:
        raise MembershipError("author is not a member of this vault")
    if event.kind == Kind.DATA and event.epoch == 0:
        raise MembershipError("data events must be sealed (epoch >= 1)")
