"""Pairing and recovery: new devices join through a *delegate* key.

An invite code and the recovery secret are both 32 random bytes from which a delegate's
Ed25519 and X25519 keys are derived (HKDF, one label each). The vault admits the delegate in
a public ``member.add`` that wraps the epoch keys for it (see ``eventlog.membership`` for
what a delegate may do). A new device derives the delegate keys from the code, connects as
the delegate, pulls the vault, unwraps the keys, and writes a ``member.add`` for its own fresh
key, signed by the delegate. The relay only ever sees public keys and wrapped keys: the code
never leaves the two devices (or the user's head), so the relay cannot read the vault.
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from typing import Final

import msgpack

from eventlog.crypto import KxKey, SigningKey
from eventlog.errors import NotFoundError, ShoalError
from eventlog.membership import ROLE_FULL, ROLE_INVITE, ROLE_OWNER
from replicas.delegates import RECOVERY_FILE, SECRET_BYTES, delegate_keys
from replicas.home import Home, read_secret
from replicas.node import SyncError, sync_once
from replicas.vault import Replica, discard_home, join_vault
from transport.messages import CloseCode

INVITE_PREFIX: Final = "shoal-invite-"
RECOVERY_PREFIX: Final = "shoal-recovery-"


class CodeError(ShoalError):
    exit_code = 2


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=").lower()


def _unb32(text: str) -> bytes:
    text = text.strip().upper()
    return base64.b32decode(text + "=" * (-len(text) % 8))


@dataclass(frozen=True)
class Invite:
    url: str
    vault_id: bytes
    secret: bytes
    expires_ms: int

    def encode(self) -> str:
        packed = msgpack.packb([1, self.url, self.vault_id, self.secret, self.expires_ms])
        return INVITE_PREFIX + _b32(packed)

    @classmethod
    def decode(cls, code: str) -> Invite:
        if not code.startswith(INVITE_PREFIX):
            raise CodeError("not a shoal invite code (it starts with shoal-invite-)")
        try:
            version, url, vault, secret, expires = msgpack.unpackb(
                _unb32(code[len(INVITE_PREFIX) :])
            )
            if version != 1 or len(vault) != 32 or len(secret) != SECRET_BYTES:
                raise ValueError
            return cls(str(url), bytes(vault), bytes(secret), int(expires))
        except Exception:
            raise CodeError("the invite code is damaged (check for a copy/paste error)") from None


async def create_invite(replica: Replica, url: str, expires_s: float) -> Invite:
    """Admit a one-time invite key and publish it to ``url`` so the joiner can connect."""
    await _publish(replica, url)  # first: an unreachable URL must leave no invite behind
    secret = os.urandom(SECRET_BYTES)
    signer, kx = delegate_keys(secret)
    expires_ms = int((time.time() + expires_s) * 1000)
    replica.engine.add_member(signer.public, kx.public, ROLE_INVITE, expires_ms=expires_ms)
    await _publish(replica, url)
    return Invite(url, replica.log.vault_id, secret, expires_ms)


async def _publish(replica: Replica, url: str) -> None:
    """Sync with ``url``; if it is our own ``serve`` daemon, it already serves our log."""
    try:
        await sync_once(replica, url)
    except SyncError as exc:
        if exc.code != CloseCode.SELF:
            raise


async def redeem(
    home: Home, url: str, vault_id: bytes, secret: bytes, name: str, role: str
) -> Replica:
    """Make ``home`` a new member through the delegate that ``secret`` stands for."""
    delegate, delegate_kx = delegate_keys(secret)
    signer, kx = SigningKey.generate(), KxKey.generate()
    replica = join_vault(home, vault_id, signer, kx, name)
    try:
        await sync_once(replica, url, signer=delegate)
        if delegate.public not in replica.log.roster:
            raise CodeError("the relay or peer does not know this code (wrong vault or URL?)")
        home.save_vault_keys(replica.engine.adopt_keys(delegate_kx, member=delegate.public))
        replica.engine.add_member(signer.public, kx.public, role, signer=delegate)
        replica.engine.set_profile(name)
        await sync_once(replica, url, signer=delegate)
    except BaseException:
        replica.close()
        discard_home(home)
        raise
    return replica


async def join(home: Home, code: str, name: str) -> Replica:
    invite = Invite.decode(code)
    if invite.expires_ms < time.time() * 1000:
        raise CodeError("the invite has expired; ask for a new one")
    return await redeem(home, invite.url, invite.vault_id, invite.secret, name, ROLE_FULL)


# --- recovery ---------------------------------------------------------------------------------


def take_recovery_key(replica: Replica) -> str:
    """The recovery key, once: the secret is deleted from this home after it is shown."""
    path = replica.home.identity_dir / RECOVERY_FILE
    try:
        secret = read_secret(path)
    except NotFoundError:
        raise NotFoundError(
            "the recovery key was already shown (it is printed only once)"
        ) from None
    text = f"{RECOVERY_PREFIX}{replica.log.vault_id.hex()}-{_b32(secret)}"
    path.unlink()
    return text


def parse_recovery_key(text: str) -> tuple[bytes, bytes]:
    text = text.strip()
    if not text.startswith(RECOVERY_PREFIX):
        raise CodeError("not a shoal recovery key (it starts with shoal-recovery-)")
    try:
        vault_hex, secret_b32 = text[len(RECOVERY_PREFIX) :].split("-", 1)
        vault, secret = bytes.fromhex(vault_hex), _unb32(secret_b32)
        if len(vault) != 32 or len(secret) != SECRET_BYTES:
            raise ValueError
    except Exception:
        raise CodeError("the recovery key is damaged (check for a copy/paste error)") from None
    return vault, secret


async def restore(home: Home, url: str, recovery_key: str, name: str) -> Replica:
    vault_id, secret = parse_recovery_key(recovery_key)
    return await redeem(home, url, vault_id, secret, name, ROLE_OWNER)
