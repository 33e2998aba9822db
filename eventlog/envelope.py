"""The event envelope (format v2; v1 still read) and its strict canonical codec.

Signed bytes are the canonical msgpack encoding of a fixed-order array::

    [v, vault, author, seq, prev, lamport, time_ms, epoch, kind, nonce, body]

and an event travels and rests as ``[signed, sig]``. In v2, ``id = BLAKE3-256(signed)`` and
``sig = Ed25519(author, SIG_LABEL || id)``; in v1 (what earlier builds wrote) the id was
BLAKE2b-256 and the signature covered the signed bytes themselves. Signing the id makes the
cost of signing and verifying independent of the body's size: a 1 MiB chunk event cost
3.7 ms to sign and 2.0 ms to verify here, a BLAKE3 pass costs 0.2 ms (design note 26).

"Canonical" means the bytes are exactly what :func:`msgpack.packb` produces for the decoded
value (shortest integer and length forms, ``bin`` for bytes). We check it by re-encoding and
comparing, which is both simple and complete: any second encoding of the same value would let
one signed event have two ids, so it is refused.
"""

from __future__ import annotations

import hashlib
from enum import IntEnum
from typing import Any, Final, NamedTuple

import msgpack
from blake3 import blake3

from eventlog.errors import (
    MalformedError,
    NonCanonicalError,
    OversizeError,
    TruncatedError,
    UnknownVersionError,
    WrongTypeError,
)

VERSION: Final = 2
"""The format this build writes."""
READABLE_VERSIONS: Final = (1, 2)
SIG_LABEL: Final = b"shoal event v2 id:"
"""What a v2 signature covers before the id. Nothing else a replica key signs starts with it
(a sync handshake signs a bare 32-byte BLAKE2b transcript), so no other signature can pass
for an event's."""
MAX_EVENT_BYTES: Final = 8 * 1024 * 1024
"""Largest wire event. File content is chunked well below this (blobs), so only a pathological
single CRDT update could reach it."""
MAX_NONCE_BYTES: Final = 64
KEY_BYTES: Final = 32
SIG_BYTES: Final = 64
ZERO32: Final = bytes(32)
MAX_UINT64: Final = 2**64 - 1
MAX_KIND: Final = 255
FIELD_COUNT: Final = 11
FIELD_TYPES: Final = (int, bytes, bytes, int, bytes, int, int, int, int, bytes, bytes)
"""The exact Python types of the signed fields, in order, as msgpack decodes them."""


class Kind(IntEnum):
    """Public class of an event: the only thing about its meaning a blind relay can read."""

    GENESIS = 0
    MEMBERSHIP = 1
    DATA = 2
    KEY_ROTATION = 3


class Header(NamedTuple):
    """Everything the signature covers except the body; also the AEAD's associated data.

    A named tuple rather than a frozen dataclass: every received event builds one, and a
    frozen dataclass's ``__init__`` costs ~2 us more (one ``object.__setattr__`` per field).
    """

    vault: bytes
    author: bytes
    seq: int
    prev: bytes
    lamport: int
    time_ms: int
    epoch: int
    kind: int
    nonce: bytes
    v: int = VERSION

    def fields(self) -> list[Any]:
        return [
            self.v,
            self.vault,
            self.author,
            self.seq,
            self.prev,
            self.lamport,
            self.time_ms,
            self.epoch,
            self.kind,
            self.nonce,
        ]

    def associated_data(self) -> bytes:
        """The bytes the AEAD binds the body to: every header field, canonically encoded."""
        return msgpack.packb(self.fields(), use_bin_type=True)


class Event(NamedTuple):
    """One decoded, not yet trusted, event. ``raw`` is its exact wire form."""

    header: Header
    body: bytes
    signed: bytes
    sig: bytes
    id: bytes
    raw: bytes

    @property
    def message(self) -> bytes:
        """What ``sig`` signs: the labelled id (v2), or the signed bytes (v1)."""
        return signature_message(self.id) if self.header.v >= 2 else self.signed

    def associated_data(self) -> bytes:
        """``header.associated_data()``, cut out of the signed bytes instead of re-encoded.

        The signed bytes are ``[*header fields, body]`` canonically encoded: a fixarray of 11,
        the fields, then the body as ``bin``. The associated data is the fixarray of the same
        10 fields, so it is those bytes behind a fixarray-of-10 marker.
        """
        size = len(self.body)
        body_header = 2 if size < 0x100 else 3 if size < 0x10000 else 5
        return b"\x9a" + self.signed[1 : len(self.signed) - size - body_header]

    # Shortcuts for the fields every caller reads.
    @property
    def author(self) -> bytes:
        return self.header.author

    @property
    def seq(self) -> int:
        return self.header.seq

    @property
    def prev(self) -> bytes:
        return self.header.prev

    @property
    def lamport(self) -> int:
        return self.header.lamport

    @property
    def kind(self) -> int:
        return self.header.kind

    @property
    def epoch(self) -> int:
        return self.header.epoch

    @property
    def vault(self) -> bytes:
        return self.header.vault

    @property
    def time_ms(self) -> int:
        return self.header.time_ms


def event_id(signed: bytes, version: int = VERSION) -> bytes:
    """The hash of the signed bytes (BLAKE3-256; BLAKE2b-256 in v1): the event's name
    everywhere."""
    if version >= 2:
        return blake3(signed).digest()
    return hashlib.blake2b(signed, digest_size=32).digest()


def signature_message(event_id: bytes) -> bytes:
    """What the author signs for a v2 event with this id."""
    return SIG_LABEL + event_id


def encode_signed(header: Header, body: bytes) -> bytes:
    """Canonical signed bytes for a header and a (sealed) body."""
    return msgpack.packb([*header.fields(), body], use_bin_type=True)


def encode_wire(signed: bytes, sig: bytes) -> bytes:
    return msgpack.packb([signed, sig], use_bin_type=True)


def assemble(
    header: Header,
    body: bytes,
    sig: bytes,
    signed: bytes | None = None,
    id_: bytes | None = None,
) -> Event:
    """Build an Event from parts we produced ourselves (no parsing needed)."""
    signed = signed if signed is not None else encode_signed(header, body)
    id_ = id_ if id_ is not None else event_id(signed, header.v)
    return Event(header, body, signed, sig, id_, encode_wire(signed, sig))


def _unpack(data: bytes, what: str) -> Any:
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            use_list=True,
            strict_map_key=True,
            max_bin_len=MAX_EVENT_BYTES,
            max_str_len=MAX_EVENT_BYTES,
            max_array_len=64,
            max_map_len=0,
            max_ext_len=0,
        )
    except msgpack.ExtraData as exc:
        raise MalformedError(f"{what}: trailing bytes after the value") from exc
    except ValueError as exc:
        if "incomplete" in str(exc):
            raise TruncatedError(f"{what}: input ends early") from exc
        raise MalformedError(f"{what}: {exc or 'not valid msgpack'}") from exc
    except Exception as exc:  # msgpack raises a few unrelated types for garbage input
        raise MalformedError(f"{what}: not valid msgpack ({type(exc).__name__})") from exc
    return value


def _bytes(value: Any, name: str, length: int | None = None, limit: int | None = None) -> bytes:
    if type(value) is not bytes:
        raise WrongTypeError(f"{name}: expected bytes, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise WrongTypeError(f"{name}: expected {length} bytes, got {len(value)}")
    if limit is not None and len(value) > limit:
        raise OversizeError(f"{name}: {len(value)} bytes exceeds {limit}")
    return value


def _uint(value: Any, name: str, low: int = 0, high: int = MAX_UINT64) -> int:
    if type(value) is not int:
        raise WrongTypeError(f"{name}: expected an integer, got {type(value).__name__}")
    if not low <= value <= high:
        raise WrongTypeError(f"{name}: {value} outside [{low}, {high}]")
    return value


def _bin_size(length: int) -> int:
    """Bytes of a canonical msgpack ``bin`` of ``length`` bytes: bin8, bin16 or bin32."""
    return length + (2 if length < 0x100 else 3 if length < 0x10000 else 5)


def decode_event(raw: bytes) -> Event:
    """Strictly decode a wire event. Raises a ``DecodeError`` subclass for any violation.

    Does not verify the signature or anything about the vault: see ``eventlog.accept``.
    """
    if not isinstance(raw, bytes | bytearray | memoryview):
        raise WrongTypeError(f"event: expected bytes, got {type(raw).__name__}")
    if type(raw) is not bytes:
        raw = bytes(raw)
    if len(raw) > MAX_EVENT_BYTES:
        raise OversizeError(f"event: {len(raw)} bytes exceeds {MAX_EVENT_BYTES}")
    outer = _unpack(raw, "event")
    if type(outer) is not list or len(outer) != 2:
        raise WrongTypeError("event: expected [signed, sig]")
    signed = _bytes(outer[0], "signed")
    sig = _bytes(outer[1], "sig", SIG_BYTES)
    fields = _unpack(signed, "signed bytes")
    if type(fields) is not list or not fields:
        raise WrongTypeError("signed bytes: expected an array")
    version = _uint(fields[0], "v")
    if version not in READABLE_VERSIONS:
        raise UnknownVersionError(
            f"event format version {version} (this build reads {READABLE_VERSIONS})"
        )
    if len(fields) != FIELD_COUNT:
        raise WrongTypeError(f"signed bytes: expected {FIELD_COUNT} fields, got {len(fields)}")
    vault, author, seq, prev, lamport, time_ms, epoch, kind, nonce, body = fields[1:]
    # The common case in one expression (this runs for every received event); any failure
    # goes through the per-field checks below for a precise error.
    well_typed = (
        tuple(map(type, fields)) == FIELD_TYPES
        and len(vault) == len(author) == len(prev) == KEY_BYTES
        and len(nonce) <= MAX_NONCE_BYTES
        and 1 <= seq <= MAX_UINT64
        and 1 <= lamport <= MAX_UINT64
        and 0 <= time_ms <= MAX_UINT64
        and 0 <= epoch <= MAX_UINT64
        and 0 <= kind <= MAX_KIND
    )
    if not well_typed:
        _bytes(vault, "vault", KEY_BYTES)
        _bytes(author, "author", KEY_BYTES)
        _uint(seq, "seq", low=1)
        _bytes(prev, "prev", KEY_BYTES)
        _uint(lamport, "lamport", low=1)
        _uint(time_ms, "time_ms")
        _uint(epoch, "epoch")
        _uint(kind, "kind", high=MAX_KIND)
        _bytes(nonce, "nonce", limit=MAX_NONCE_BYTES)
        _bytes(body, "body")
        raise WrongTypeError("signed bytes: malformed header")  # not reached: one check fails
    header = Header(vault, author, seq, prev, lamport, time_ms, epoch, kind, nonce, version)
    # The outer array holds two byte strings, each with one shortest header, and unpacking
    # consumed every byte: it is canonical exactly when its length is the shortest possible.
    # Integers have same-length non-canonical forms (int16 for uint16), so the header fields
    # are re-encoded from the decoded values and compared; the body, a byte string, is
    # canonical when its length header is the shortest, which the total length says (so a
    # 1 MiB body is neither copied nor compared again).
    canonical = len(raw) == 1 + _bin_size(len(signed)) + _bin_size(SIG_BYTES)
    fields_encoded = msgpack.packb(fields[:-1], use_bin_type=True)  # a fixarray of 10
    if (
        not canonical
        or signed[0] != 0x9B  # fixarray of 11
        or len(signed) != len(fields_encoded) + _bin_size(len(body))
        or signed[1 : len(fields_encoded)] != fields_encoded[1:]
    ):
        raise NonCanonicalError("event: bytes are not the canonical encoding")
    if seq == 1 and prev != ZERO32:
        raise WrongTypeError("prev: must be zero for seq 1")
    return Event(header, body, signed, sig, event_id(signed, version), raw)


def decode_stored(raw: bytes, event_id: bytes) -> Event:
    """An event read back from our own store, whose ``raw`` was decoded strictly (and whose id
    was computed) before it was stored: only unpacked and type-checked here, with the id taken
    from its row.

    Re-checking canonical form and re-hashing is most of a strict decode, and a catch-up after
    a bulk sync reads every event once more. Anything that does not unpack into the event's
    shape (a damaged row) goes through :func:`decode_event` and gets its typed error there.
    """
    try:
        signed, sig = msgpack.unpackb(raw, use_list=False)
        fields = msgpack.unpackb(signed, use_list=False)
    except Exception:  # msgpack raises several unrelated types for damaged input
        return decode_event(raw)
    if (
        type(sig) is not bytes
        or type(fields) is not tuple
        or tuple(map(type, fields)) != FIELD_TYPES
    ):
        return decode_event(raw)
    v, vault, author, seq, prev, lamport, time_ms, epoch, kind, nonce, body = fields
    header = Header(vault, author, seq, prev, lamport, time_ms, epoch, kind, nonce, v)
    return Event(header, body, signed, sig, event_id, raw)
