"""The v1 envelope codec: round trips, and every kind of bad input rejected with our errors."""

from __future__ import annotations

import contextlib

import msgpack
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from eventlog.crypto import SigningKey
from eventlog.envelope import (
    MAX_EVENT_BYTES,
    READABLE_VERSIONS,
    VERSION,
    Header,
    assemble,
    decode_event,
    decode_stored,
    encode_signed,
    encode_wire,
)
from eventlog.errors import (
    DecodeError,
    MalformedError,
    NonCanonicalError,
    OversizeError,
    TruncatedError,
    UnknownVersionError,
    WrongTypeError,
)

KEY = SigningKey.generate()
b32 = st.binary(min_size=32, max_size=32)
uint = st.integers(min_value=1, max_value=2**64 - 1)

headers = st.builds(
    Header,
    vault=b32,
    author=st.just(KEY.public),
    seq=uint,
    prev=b32,
    lamport=uint,
    time_ms=st.integers(min_value=0, max_value=2**64 - 1),
    epoch=st.integers(min_value=0, max_value=2**32),
    kind=st.integers(min_value=0, max_value=255),
    nonce=st.binary(max_size=64),
    v=st.sampled_from(READABLE_VERSIONS),
).filter(lambda h: h.seq != 1 or h.prev == bytes(32))


def make(header: Header, body: bytes) -> bytes:
    """A correctly signed event of either format (``Event.message`` picks what is signed)."""
    unsigned = assemble(header, body, bytes(64))
    return assemble(header, body, KEY.sign(unsigned.message), unsigned.signed).raw


@given(headers, st.binary(max_size=2048))
def test_round_trip(header: Header, body: bytes) -> None:
    raw = make(header, body)
    event = decode_event(raw)
    assert event.header == header
    assert event.body == body
    assert event.raw == raw
    assert len(event.id) == 32
    assert event.associated_data() == header.associated_data()


@given(headers, st.binary(max_size=256), st.data())
def test_every_truncation_is_rejected(header: Header, body: bytes, data: st.DataObject) -> None:
    raw = make(header, body)
    cut = data.draw(st.integers(min_value=0, max_value=len(raw) - 1))
    with pytest.raises(DecodeError):
        decode_event(raw[:cut])


def test_truncation_is_named() -> None:
    raw = make(Header(bytes(32), KEY.public, 1, bytes(32), 1, 0, 0, 2, b""), b"x" * 40)
    with pytest.raises(TruncatedError):
        decode_event(raw[:-5])


@given(st.binary(max_size=512))
def test_garbage_raises_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_event(data)


def flipped(raw: bytes, data: st.DataObject) -> bytes:
    """``raw`` with one bit flipped, where ``data`` says."""
    damaged = bytearray(raw)
    i = data.draw(st.integers(min_value=0, max_value=len(damaged) - 1))
    damaged[i] ^= 1 << data.draw(st.integers(min_value=0, max_value=7))
    return bytes(damaged)


@given(headers, st.binary(max_size=128), st.data())
def test_bit_flips_never_escape_as_other_errors(
    header: Header, body: bytes, data: st.DataObject
) -> None:
    raw = flipped(make(header, body), data)
    try:
        event = decode_event(raw)
    except DecodeError:
        return
    # A flip inside a bytes field can still decode; then it is a different event or signature.
    original = decode_event(make(header, body))
    assert event.raw == raw
    assert (event.id, event.sig) != (original.id, original.sig)


@given(headers, st.binary(max_size=2048))
def test_reading_back_a_stored_event_equals_the_strict_decode(header: Header, body: bytes) -> None:
    event = decode_event(make(header, body))
    assert decode_stored(event.raw, event.id) == event


@given(headers, st.binary(max_size=128), st.data())
def test_a_damaged_stored_event_gets_a_typed_error_or_a_well_typed_event(
    header: Header, body: bytes, data: st.DataObject
) -> None:
    try:
        event = decode_stored(flipped(make(header, body), data), bytes(32))
    except DecodeError:
        return
    assert all(type(f) is bytes for f in (event.vault, event.author, event.prev, event.body))
    assert all(type(f) is int for f in (event.seq, event.lamport, event.epoch, event.kind))


@given(st.binary(max_size=512))
def test_reading_back_garbage_raises_only_decode_errors(data: bytes) -> None:
    with contextlib.suppress(DecodeError):
        decode_stored(data, bytes(32))


def test_trailing_bytes_rejected() -> None:
    raw = make(Header(bytes(32), KEY.public, 1, bytes(32), 1, 0, 0, 2, b""), b"")
    with pytest.raises(MalformedError):
        decode_event(raw + b"\x00")


def test_oversize_rejected_before_parsing() -> None:
    with pytest.raises(OversizeError):
        decode_event(b"\x92" + b"\x00" * MAX_EVENT_BYTES)


def fields(**override: object) -> list[object]:
    base: dict[str, object] = {
        "v": 1,
        "vault": bytes(32),
        "author": KEY.public,
        "seq": 2,
        "prev": bytes(32),
        "lamport": 2,
        "time_ms": 5,
        "epoch": 1,
        "kind": 2,
        "nonce": b"n",
        "body": b"b",
    }
    base.update(override)
    return list(base.values())


def wire(values: list[object]) -> bytes:
    signed = msgpack.packb(values, use_bin_type=True)
    return encode_wire(signed, KEY.sign(signed))


@pytest.mark.parametrize(
    "override",
    [
        {"vault": bytes(31)},
        {"author": "a" * 32},
        {"seq": 0},
        {"seq": -1},
        {"seq": True},
        {"lamport": 1.5},
        {"kind": 256},
        {"body": "text"},
        {"prev": None},
    ],
)
def test_wrong_types_rejected(override: dict[str, object]) -> None:
    with pytest.raises(WrongTypeError):
        decode_event(wire(fields(**override)))


def test_oversized_nonce_rejected() -> None:
    with pytest.raises(OversizeError):
        decode_event(wire(fields(nonce=b"x" * 65)))


def test_seq_one_needs_zero_prev() -> None:
    with pytest.raises(WrongTypeError):
        decode_event(wire(fields(seq=1, prev=b"\x01" * 32)))


def test_unknown_version_rejected() -> None:
    with pytest.raises(UnknownVersionError):
        decode_event(wire(fields(v=VERSION + 1)))
    with pytest.raises(UnknownVersionError):
        decode_event(wire([VERSION + 1, b"future", b"format"]))


def test_wrong_arity_rejected() -> None:
    with pytest.raises(WrongTypeError):
        decode_event(wire(fields()[:-1]))


def test_non_canonical_integer_rejected() -> None:
    signed = msgpack.packb(fields(), use_bin_type=True)
    # seq=2 is one byte (0x02) canonically; re-encode it as uint16 (0xcd 0x00 0x02).
    start = signed.index(KEY.public) + len(KEY.public)
    assert signed[start] == 0x02
    longer = signed[:start] + b"\xcd\x00\x02" + signed[start + 1 :]
    msgpack.unpackb(longer)  # still valid msgpack
    with pytest.raises(NonCanonicalError):
        decode_event(encode_wire(longer, KEY.sign(longer)))


def test_non_canonical_outer_rejected() -> None:
    signed = msgpack.packb(fields(), use_bin_type=True)
    sig = KEY.sign(signed)
    # bin8 for a 64-byte signature is canonical; bin16 is not.
    outer = b"\x92" + msgpack.packb(signed, use_bin_type=True) + b"\xc5\x00\x40" + sig
    with pytest.raises(NonCanonicalError):
        decode_event(outer)


LONGER_FORMS = st.sampled_from(["array16", "array32", "bin16", "bin32"])


def array_header(form: str, count: int) -> bytes:
    """An array header of ``count`` items: the fixarray, unless ``form`` asks for a longer one."""
    longer = {
        "array16": b"\xdc" + count.to_bytes(2, "big"),
        "array32": b"\xdd" + count.to_bytes(4, "big"),
    }
    return longer.get(form, bytes([0x90 | count]))


def bin_item(form: str, data: bytes) -> bytes:
    """``data`` as msgpack bin: the shortest form, unless ``form`` asks for a longer one."""
    sizes = {"bin16": (b"\xc5", 2), "bin32": (b"\xc6", 4)}
    if form not in sizes:
        return msgpack.packb(data, use_bin_type=True)
    tag, width = sizes[form]
    assume(len(data) < 1 << (8 * width // 2))  # else that form is the canonical one
    return tag + len(data).to_bytes(width, "big") + data


@given(headers, st.binary(max_size=300), LONGER_FORMS)
def test_every_longer_outer_form_is_non_canonical(header: Header, body: bytes, form: str) -> None:
    """The outer check is by length: every other header form of the same values is longer."""
    signed = encode_signed(header, body)
    sig = KEY.sign(signed)
    raw = array_header(form, 2) + bin_item(form, signed) + msgpack.packb(sig, use_bin_type=True)
    assert msgpack.unpackb(raw) == [signed, sig]
    with pytest.raises(NonCanonicalError):
        decode_event(raw)


@given(headers, st.binary(max_size=300), LONGER_FORMS)
def test_every_longer_signed_form_is_non_canonical(header: Header, body: bytes, form: str) -> None:
    """The signed bytes' array and body headers are checked by length too (the body is
    neither copied nor compared again): a longer form of either is refused."""
    fields_part = msgpack.packb(header.fields(), use_bin_type=True)[1:]
    signed = array_header(form, 11) + fields_part + bin_item(form, body)
    assert msgpack.unpackb(signed) == [*header.fields(), body]
    with pytest.raises(NonCanonicalError):
        decode_event(encode_wire(signed, KEY.sign(signed)))


def test_map_instead_of_array_rejected() -> None:
    signed = msgpack.packb({"v": 1}, use_bin_type=True)
    with pytest.raises(DecodeError):
        decode_event(encode_wire(signed, KEY.sign(signed)))


@pytest.mark.parametrize("size", [0, 1, 255, 256, 65_535, 65_536, 300_000])
def test_associated_data_is_cut_from_every_body_length_form(size: int) -> None:
    """bin8, bin16 and bin32 bodies: the cut equals the encoded header fields."""
    header = Header(bytes(32), KEY.public, 2, b"\x07" * 32, 3, 4, 1, 2, b"n" * 24)
    event = decode_event(make(header, b"b" * size))
    assert event.associated_data() == header.associated_data()
