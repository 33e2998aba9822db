"""Signing, sealing and key wrapping: every use of ``cryptography`` lives here.

Nouns: a *replica key* is an Ed25519 key (its public half is the replica id); a *kx key* is
the replica's X25519 key that vault keys are wrapped for; an *epoch key* is the vault's
symmetric root for one key epoch; *purpose keys* are derived from it with HKDF and a label.

Why nonces cannot repeat (the sealing argument)
-----------------------------------------------
Each event body is sealed with ChaCha20-Poly1305 under a **one-time key**
``k_e = BLAKE2b-256(key=purpose key, data=s, person=LABEL)`` where ``s`` is 24 fresh bytes
from the OS CSPRNG, carried in the event's ``nonce`` field. Keyed BLAKE2b is a PRF, so
``k_e`` is as good as an HKDF output; it is used here because it costs a fifth of HKDF on the
per-event path (purpose keys themselves come from HKDF). Every one-time key encrypts exactly one
message, so the AEAD nonce (fixed at zero) is used once per key whatever happens: there is no
counter to lose in a crash, to roll back by restoring a backup, or to duplicate by cloning a
disk. Two events share a one-time key only if their 192-bit salts collide; over 2^48 seals the
chance is below 2^-96. Key wrapping uses the same idea with an ephemeral X25519 key per wrap.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from typing import Final

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from eventlog.errors import BadSignatureError, DecryptError, WrongTypeError

SALT_BYTES: Final = 24
KEY_BYTES: Final = 32
_ZERO_NONCE: Final = bytes(12)

# Purpose labels: one key per use, so a key can never be confused across uses.
PURPOSE_EVENTS: Final = b"shoal/v1/events"
_EVENT_KEY_PERSON: Final = b"shoal-v1-evkey"  # BLAKE2b personalization: at most 16 bytes
_WRAP_INFO: Final = b"shoal/v1/key-wrap"


def random_key() -> bytes:
    return os.urandom(KEY_BYTES)


def derive_key(root: bytes, purpose: bytes, salt: bytes | None = None) -> bytes:
    """HKDF-SHA256 of ``root`` for one labelled purpose (optionally salted)."""
    return HKDF(hashes.SHA256(), KEY_BYTES, salt, purpose).derive(root)


# --- signatures -----------------------------------------------------------------------------


class SigningKey:
    """A replica's Ed25519 key. ``public`` (32 bytes) is the replica id."""

    __slots__ = ("_key", "public")

    def __init__(self, private: bytes) -> None:
        if len(private) != KEY_BYTES:
            raise WrongTypeError("replica key: expected 32 bytes")
        self._key = Ed25519PrivateKey.from_private_bytes(private)
        self.public = self._key.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(KEY_BYTES))

    def private_bytes(self) -> bytes:
        return self._key.private_bytes_raw()

    def sign(self, message: bytes) -> bytes:
        return self._key.sign(message)


@lru_cache(maxsize=4096)
def _public_key(author: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(author)


def verify_signature(author: bytes, sig: bytes, message: bytes) -> None:
    """Raise ``BadSignatureError`` unless ``sig`` is ``author``'s signature of ``message``."""
    try:
        _public_key(author).verify(sig, message)
    except (InvalidSignature, ValueError) as exc:
        raise BadSignatureError("signature does not verify") from exc


def signature_ok(author: bytes, sig: bytes, message: bytes) -> bool:
    try:
        verify_signature(author, sig, message)
    except BadSignatureError:
        return False
    return True


# --- sealing event bodies ----------------------------------------------------------------------


def new_salt() -> bytes:
    return os.urandom(SALT_BYTES)


def one_time_key(purpose_key: bytes, salt: bytes) -> bytes:
    return hashlib.blake2b(
        salt, key=purpose_key, digest_size=KEY_BYTES, person=_EVENT_KEY_PERSON
    ).digest()


def seal(purpose_key: bytes, salt: bytes, plaintext: bytes | bytearray, associated: bytes) -> bytes:
    """Encrypt one body under the one-time key for ``salt`` (see the module docstring)."""
    one_time = one_time_key(purpose_key, salt)
    return ChaCha20Poly1305(one_time).encrypt(_ZERO_NONCE, plaintext, associated)


def open_sealed(purpose_key: bytes, salt: bytes, ciphertext: bytes, associated: bytes) -> bytes:
    one_time = one_time_key(purpose_key, salt)
    try:
        return ChaCha20Poly1305(one_time).decrypt(_ZERO_NONCE, ciphertext, associated)
    except InvalidTag as exc:
        raise DecryptError("body does not open under its epoch key") from exc


# --- key agreement and wrapping ------------------------------------------------------------------


class KxKey:
    """A replica's X25519 key, for receiving wrapped epoch keys."""

    __slots__ = ("_key", "public")

    def __init__(self, private: bytes) -> None:
        if len(private) != KEY_BYTES:
            raise WrongTypeError("kx key: expected 32 bytes")
        self._key = X25519PrivateKey.from_private_bytes(private)
        self.public = self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> KxKey:
        return cls(os.urandom(KEY_BYTES))

    def private_bytes(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        """Open a key wrapped for us by :func:`wrap_key`."""
        if len(wrapped) != KEY_BYTES + KEY_BYTES + 16:
            raise DecryptError("wrapped key has the wrong length")
        ephemeral, box = wrapped[:KEY_BYTES], wrapped[KEY_BYTES:]
        shared = self._key.exchange(X25519PublicKey.from_public_bytes(ephemeral))
        kek = derive_key(shared, _WRAP_INFO + context, ephemeral + self.public)
        try:
            return ChaCha20Poly1305(kek).decrypt(_ZERO_NONCE, box, context)
        except InvalidTag as exc:
            raise DecryptError("wrapped key does not open for this replica") from exc


def wrap_key(recipient_kx: bytes, key: bytes, context: bytes) -> bytes:
    """Seal ``key`` so only the holder of ``recipient_kx``'s private half can open it.

    A fresh ephemeral X25519 key per wrap makes each key-encryption key single-use, so the
    fixed AEAD nonce never repeats (same argument as for event bodies). ``context`` binds the
    wrap to its vault and epoch.
    """
    ephemeral = X25519PrivateKey.generate()
    ephemeral_pub = ephemeral.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    shared = ephemeral.exchange(X25519PublicKey.from_public_bytes(recipient_kx))
    kek = derive_key(shared, _WRAP_INFO + context, ephemeral_pub + recipient_kx)
    return ephemeral_pub + ChaCha20Poly1305(kek).encrypt(_ZERO_NONCE, key, context)
