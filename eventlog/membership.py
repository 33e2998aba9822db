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
admit can read the vault; they never hold anything else. Removal and new epochs come with
the hardening issue; the format has room for them (per-epoch ``keys``).
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
ROLE_INVITE: Final = "invite"
ROLE_RECOVERY: Final = "recovery"
ROLES: Final = frozenset({ROLE_OWNER, ROLE_FULL, ROLE_INVITE, ROLE_RECOVERY})
DEVICE_ROLES: Final = frozenset({ROLE_OWNER, ROLE_FULL})
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
    expires_ms: int = 0
    """For invites: after this wall-clock time the key may no longer be used (0 = never)."""

    @property
    def can_manage(self) -> bool:
        return self.role == ROLE_OWNER


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
    if writer is None:
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
    if member in roster and member != event.author:
        raise MembershipError("replica is already a member")
    return Member(member, kx, role, event.author, event.id, event.time_ms, expires)


def wrapped_keys(payload: Payload) -> dict[int, bytes]:
    keys = payload.get("keys")
    return dict(keys) if isinstance(keys, dict) else {}


def check_writer(roster: dict[bytes, Member], event: Event) -> None:
    """Data and other kinds: written by a device member (delegates only add devices)."""
    member = roster.get(event.author)
    if member is None:
        raise MembershipError("author is not a member of this vault")
    if member.role not in DEVICE_ROLES:
        raise MembershipError(f"a {member.role} key may only add devices")
    if event.kind == Kind.DATA and event.epoch == 0:
        raise MembershipError("data events must be sealed (epoch >= 1)")
