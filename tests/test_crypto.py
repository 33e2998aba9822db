"""Sealing, signing and key wrapping: what must open opens, what was touched does not."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventlog.crypto import (
    KxKey,
    SigningKey,
    new_salt,
    open_sealed,
    random_key,
    seal,
    verify_signature,
    wrap_key,
)
from eventlog.errors import BadSignatureError, DecryptError, MalformedError
from eventlog.padding import PREFIX_BYTES, pad, padded_size, unpad


@given(st.binary(max_size=4096), st.binary(max_size=128))
def test_seal_round_trip(plaintext: bytes, associated: bytes) -> None:
    key, salt = random_key(), new_salt()
    assert open_sealed(key, salt, seal(key, salt, plaintext, associated), associated) == plaintext


@given(st.binary(max_size=70_000), st.data())
def test_padding_round_trip_and_only_canonical_padding_opens(payload: bytes, data) -> None:
    padded = bytes(pad(payload))
    assert len(padded) == padded_size(PREFIX_BYTES + len(payload))
    assert unpad(padded) == payload
    end = PREFIX_BYTES + len(payload)
    if end < len(padded):  # any non-zero byte in the padding is refused
        spot = data.draw(st.integers(end, len(padded) - 1))
        bad = bytearray(padded)
        bad[spot] = data.draw(st.integers(1, 255))
        with pytest.raises(MalformedError):
            unpad(bytes(bad))
    with pytest.raises(MalformedError):  # so is a body cut short or grown
        unpad(padded + b"\x00" if len(padded) > end else padded[:-1])


def test_seal_binds_key_salt_body_and_header() -> None:
    key, salt = random_key(), new_salt()
    box = seal(key, salt, b"secret", b"header")
    attempts: list[Callable[[], bytes]] = [
        lambda: open_sealed(random_key(), salt, box, b"header"),
        lambda: open_sealed(key, new_salt(), box, b"header"),
        lambda: open_sealed(key, salt, box, b"headeR"),
        lambda: open_sealed(key, salt, box[:-1] + bytes([box[-1] ^ 1]), b"header"),
    ]
    for bad in attempts:
        with pytest.raises(DecryptError):
            bad()


def test_salts_do_not_repeat() -> None:
    salts = {new_salt() for _ in range(100_000)}
    assert len(salts) == 100_000


def test_same_plaintext_seals_differently() -> None:
    key = random_key()
    assert seal(key, new_salt(), b"same", b"") != seal(key, new_salt(), b"same", b"")


def test_signatures() -> None:
    signer = SigningKey.generate()
    sig = signer.sign(b"message")
    verify_signature(signer.public, sig, b"message")
    with pytest.raises(BadSignatureError):
        verify_signature(signer.public, sig, b"messagE")
    with pytest.raises(BadSignatureError):
        verify_signature(SigningKey.generate().public, sig, b"message")
    with pytest.raises(BadSignatureError):
        verify_signature(b"\x00" * 31 + b"\x01", sig, b"message")


def test_key_wrap_only_opens_for_its_recipient_and_context() -> None:
    alice, mallory = KxKey.generate(), KxKey.generate()
    key = random_key()
    wrapped = wrap_key(alice.public, key, b"vault-1/epoch-1")
    assert alice.unwrap(wrapped, b"vault-1/epoch-1") == key
    with pytest.raises(DecryptError):
        mallory.unwrap(wrapped, b"vault-1/epoch-1")
    with pytest.raises(DecryptError):
        alice.unwrap(wrapped, b"vault-2/epoch-1")
    with pytest.raises(DecryptError):
        alice.unwrap(wrapped[:-1], b"vault-1/epoch-1")
