"""Delegate keys: the invite and recovery identities derived from a 32-byte secret.

See ``eventlog.membership`` for what a delegate may do and ``replicas.pairing`` for how a new
device uses one.
"""

from __future__ import annotations

import os
from typing import Final

from engine.engine import Engine
from eventlog.crypto import KxKey, SigningKey, derive_key
from eventlog.membership import ROLE_RECOVERY
from replicas.home import Home, write_secret

SECRET_BYTES: Final = 32
RECOVERY_FILE: Final = "recovery.secret"


def delegate_keys(secret: bytes) -> tuple[SigningKey, KxKey]:
    """The delegate identity a code or recovery secret stands for."""
    return (
        SigningKey(derive_key(secret, b"shoal/v1/delegate-sign")),
        KxKey(derive_key(secret, b"shoal/v1/delegate-kx")),
    )


def create_recovery(home: Home, engine: Engine) -> None:
    """At ``init``: admit the recovery delegate and keep its secret for one showing."""
    secret = os.urandom(SECRET_BYTES)
    signer, kx = delegate_keys(secret)
    engine.add_member(signer.public, kx.public, ROLE_RECOVERY)
    write_secret(home.identity_dir / RECOVERY_FILE, secret)
