"""Authoring events: seal a payload under the epoch's key, sign, and assemble.

A ``Keyring`` holds the vault's epoch keys (epoch -> 32-byte root). Epoch 0 means a public
body: the payload is stored as is, so a blind relay can read membership. Every other epoch
seals with a one-time key (see ``eventlog.crypto`` for why nonces cannot repeat), after
padding the payload to a size bucket (``eventlog.padding``) so the relay cannot read exact
sizes either.
"""

from __future__ import annotations

from dataclasses import dataclass

from eventlog.crypto import (
    PURPOSE_EVENTS,
    SigningKey,
    derive_key,
    new_salt,
    open_sealed,
    seal,
)
from eventlog.envelope import Event, Header, assemble, encode_signed, event_id, signature_message
from eventlog.errors import MissingKeyError
from eventlog.padding import pad, unpad
from eventlog.payload import Payload, decode_payload, encode_payload


class Keyring:
    """The epoch keys this replica holds, and the per-purpose keys derived from them."""

    def __init__(self, epochs: dict[int, bytes] | None = None) -> None:
        self._epochs: dict[int, bytes] = dict(epochs or {})
        self._events: dict[int, bytes] = {}

    @property
    def current_epoch(self) -> int:
        return max(self._epochs, default=0)

    def epochs(self) -> dict[int, bytes]:
        return dict(self._epochs)

    def add(self, epoch: int, key: bytes) -> None:
        self._epochs[epoch] = key
        self._events.pop(epoch, None)

    def has(self, epoch: int) -> bool:
        return epoch == 0 or epoch in self._epochs

    def events_key(self, epoch: int) -> bytes:
        key = self._events.get(epoch)
        if key is None:
            root = self._epochs.get(epoch)
            if root is None:
                raise MissingKeyError(f"no key for epoch {epoch}")
            key = self._events[epoch] = derive_key(root, PURPOSE_EVENTS)
        return key

    def open_body(self, event: Event) -> bytes:
        return bytes(self._open(event))

    def _open(self, event: Event) -> bytes | memoryview:
        """The plaintext payload bytes of an event (public bodies as they are), unpadded."""
        if event.epoch == 0:
            return event.body
        padded = open_sealed(
            self.events_key(event.epoch),
            event.header.nonce,
            event.body,
            event.associated_data(),
        )
        return unpad(padded)

    def open_payload(self, event: Event) -> Payload:
        return decode_payload(self._open(event))


@dataclass(frozen=True, slots=True)
class Position:
    """Where the next event of an author goes: its seq, prev id and lamport."""

    seq: int
    prev: bytes
    lamport: int


def author_event(
    signer: SigningKey,
    keyring: Keyring,
    vault: bytes,
    position: Position,
    time_ms: int,
    kind: int,
    epoch: int,
    payload: Payload,
) -> Event:
    """Seal (unless ``epoch`` is 0), sign and assemble one event."""
    plaintext = encode_payload(payload)
    header = Header(
        vault,
        signer.public,
        position.seq,
        position.prev,
        position.lamport,
        time_ms,
        epoch,
        kind,
        new_salt() if epoch else b"",
    )
    body = (
        seal(keyring.events_key(epoch), header.nonce, pad(plaintext), header.associated_data())
        if epoch
        else plaintext
    )
    signed = encode_signed(header, body)
    id_ = event_id(signed)
    return assemble(header, body, signer.sign(signature_message(id_)), signed, id_)
