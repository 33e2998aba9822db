"""The sync wire codec: every message round-trips, and every malformed frame is refused with
``ProtocolError`` and the right close code, never another exception type."""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transport.messages import (
    CHALLENGE_BYTES,
    ID_BYTES,
    MAX_BATCH_EVENTS,
    MAX_FRAME_BYTES,
    MAX_HAVE_AUTHORS,
    MAX_PROBES,
    MAX_REASON,
    Ack,
    Auth,
    CaughtUp,
    CloseCode,
    Error,
    Events,
    Have,
    Hello,
    Message,
    MsgType,
    Probe,
    Proof,
    ProtocolError,
    _canonical,
    decode,
    encode,
)

ids = st.binary(min_size=ID_BYTES, max_size=ID_BYTES)
u64 = st.integers(min_value=0, max_value=2**64 - 1)
raw_events = st.lists(st.binary(max_size=300), max_size=8).map(tuple)

STRATEGIES: dict[MsgType, st.SearchStrategy[Message]] = {
    MsgType.HELLO: st.builds(
        Hello,
        u64,
        ids,
        ids,
        st.text(max_size=16),
        st.binary(min_size=CHALLENGE_BYTES, max_size=CHALLENGE_BYTES),
    ),
    MsgType.AUTH: st.builds(Auth, st.binary(min_size=64, max_size=64)),
    MsgType.HAVE: st.builds(Have, st.lists(st.tuples(ids, u64, ids), max_size=6).map(tuple)),
    MsgType.EVENTS: st.builds(Events, u64, raw_events),
    MsgType.ACK: st.builds(Ack, u64),
    MsgType.CAUGHT_UP: st.just(CaughtUp()),
    MsgType.ERROR: st.builds(Error, u64, st.text(max_size=MAX_REASON)),
    MsgType.PROBE: st.builds(Probe, st.lists(st.tuples(ids, u64), max_size=MAX_PROBES).map(tuple)),
    MsgType.PROOF: st.builds(Proof, st.lists(st.binary(max_size=300), max_size=12).map(tuple)),
}
messages = st.one_of(*STRATEGIES.values())

MALFORMED = CloseCode.MALFORMED
TOO_LARGE = CloseCode.FRAME_TOO_LARGE


def refused(frame: bytes, code: CloseCode = MALFORMED) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(frame)
    assert info.value.code is code, info.value
    return info.value


def pack(*fields: Any) -> bytes:
    return bytes(msgpack.packb(list(fields), use_bin_type=True))


# --- round trips --------------------------------------------------------------------------------


def test_every_message_type_has_a_strategy() -> None:
    assert set(STRATEGIES) == set(MsgType)


@pytest.mark.parametrize("kind", list(MsgType), ids=lambda k: k.name)
@given(data=st.data())
def test_round_trip(kind: MsgType, data: st.DataObject) -> None:
    message = data.draw(STRATEGIES[kind])
    frame = encode(message)
    assert frame[1] == kind  # [type, ...]: a fixarray, then the tag as a fixint
    decoded = decode(frame)
    assert decoded == message
    assert type(decoded) is type(message)
    assert encode(decoded) == frame


def test_limits_are_inclusive() -> None:
    """The largest legal lists decode; one more entry is too large."""
    events = tuple(b"e" for _ in range(MAX_BATCH_EVENTS))
    assert decode(encode(Events(1, events))) == Events(1, events)
    refused(encode(Events(1, (*events, b"e"))), TOO_LARGE)
    places = tuple((bytes(32), i) for i in range(MAX_PROBES))
    assert decode(encode(Probe(places))) == Probe(places)
    refused(encode(Probe((*places, (bytes(32), 0)))), TOO_LARGE)
    proofs = tuple(b"" for _ in range(MAX_PROBES))
    assert decode(encode(Proof(proofs))) == Proof(proofs)
    refused(encode(Proof((*proofs, b""))), TOO_LARGE)
    refused(pack(MsgType.HAVE, [0] * (MAX_HAVE_AUTHORS + 1)), TOO_LARGE)
    reason = "r" * MAX_REASON
    assert decode(encode(Error(1, reason))) == Error(1, reason)
    refused(encode(Error(1, reason + "r")))
    longest = Hello(1, bytes(32), bytes(32), "x" * 16, bytes(32))
    assert decode(encode(longest)) == longest
    refused(encode(Hello(1, bytes(32), bytes(32), "x" * 17, bytes(32))))


# --- malformed frames ---------------------------------------------------------------------------


@given(messages, st.data())
def test_every_truncation_is_refused(message: Message, data: st.DataObject) -> None:
    frame = encode(message)
    cut = data.draw(st.integers(min_value=0, max_value=len(frame) - 1))
    refused(frame[:cut])


@given(messages, st.binary(min_size=1, max_size=16))
def test_trailing_bytes_are_refused(message: Message, extra: bytes) -> None:
    refused(encode(message) + extra)


def test_empty_and_non_array_frames() -> None:
    refused(b"")
    refused(pack(1)[1:])  # a bare integer
    refused(msgpack.packb(5))
    refused(msgpack.packb([]))
    refused(msgpack.packb(["hello"]))
    refused(msgpack.packb([True]))  # a bool is not a type tag
    refused(msgpack.packb([1.0]))
    refused(msgpack.packb({"t": 1}))
    refused(b"\xc1")  # never used in msgpack
    refused(b"\x92\x05" + b"\x91" * 5000 + b"\x01")  # nested beyond any stack


ARITY: dict[MsgType, list[Any]] = {
    MsgType.HELLO: [1, bytes(32), bytes(32), "full", bytes(32)],
    MsgType.AUTH: [bytes(64)],
    MsgType.HAVE: [[]],
    MsgType.EVENTS: [1, []],
    MsgType.ACK: [1],
    MsgType.CAUGHT_UP: [],
    MsgType.ERROR: [1, "bye"],
    MsgType.PROBE: [[]],
    MsgType.PROOF: [[]],
}


@pytest.mark.parametrize("kind", list(MsgType), ids=lambda k: k.name)
def test_wrong_arity(kind: MsgType) -> None:
    fields = ARITY[kind]
    assert encode(decode(pack(kind, *fields))) == pack(kind, *fields)
    refused(pack(kind, *fields, 0))
    refused(pack(kind, *fields, b"x", b"y"))
    if fields:
        refused(pack(kind, *fields[:-1]))


@given(st.integers(min_value=-(2**63), max_value=2**64 - 1).filter(lambda t: t not in set(MsgType)))
def test_unknown_message_type(tag: int) -> None:
    refused(pack(tag))
    refused(pack(tag, 1, b"x"))


WRONG_TYPES: list[tuple[str, bytes]] = [
    ("hello version negative", pack(1, -1, bytes(32), bytes(32), "full", bytes(32))),
    ("hello version str", pack(1, "1", bytes(32), bytes(32), "full", bytes(32))),
    ("hello version float", pack(1, 1.0, bytes(32), bytes(32), "full", bytes(32))),
    ("hello vault short", pack(1, 1, bytes(31), bytes(32), "full", bytes(32))),
    ("hello vault long", pack(1, 1, bytes(33), bytes(32), "full", bytes(32))),
    ("hello vault str", pack(1, 1, "v" * 32, bytes(32), "full", bytes(32))),
    ("hello replica nil", pack(1, 1, bytes(32), None, "full", bytes(32))),
    ("hello role bytes", pack(1, 1, bytes(32), bytes(32), b"full", bytes(32))),
    ("hello role int", pack(1, 1, bytes(32), bytes(32), 7, bytes(32))),
    ("hello challenge short", pack(1, 1, bytes(32), bytes(32), "full", bytes(16))),
    ("auth sig short", pack(2, bytes(63))),
    ("auth sig long", pack(2, bytes(65))),
    ("auth sig list", pack(2, [bytes(64)])),
    ("have not a list", pack(3, bytes(32))),
    ("have entry short", pack(3, [[bytes(32), 1]])),
    ("have entry not a list", pack(3, [bytes(32)])),
    ("have author short", pack(3, [[bytes(31), 1, bytes(32)]])),
    ("have seq negative", pack(3, [[bytes(32), -1, bytes(32)]])),
    ("have seq bool", pack(3, [[bytes(32), True, bytes(32)]])),
    ("have head str", pack(3, [[bytes(32), 1, "h" * 32]])),
    ("events batch negative", pack(4, -5, [])),
    ("events batch bytes", pack(4, b"\x01", [])),
    ("events not a list", pack(4, 1, b"raw")),
    ("events entry str", pack(4, 1, ["raw"])),
    ("events entry int", pack(4, 1, [b"ok", 3])),
    ("ack negative", pack(5, -1)),
    ("ack float", pack(5, 1.5)),
    ("ack nil", pack(5, None)),
    ("error code negative", pack(7, -1, "x")),
    ("error reason bytes", pack(7, 4400, b"x")),
    ("probe entry long", pack(8, [[bytes(32), 1, 2]])),
    ("probe seq str", pack(8, [[bytes(32), "1"]])),
    ("probe author short", pack(8, [[bytes(3), 1]])),
    ("proof entry nil", pack(9, [None])),
    ("proof not a list", pack(9, b"x")),
    (
        "invalid utf-8 role",
        b"\x96\x01\x01\xc4\x20"
        + bytes(32)
        + b"\xc4\x20"
        + bytes(32)
        + b"\xa2\xff\xfe\xc4\x20"
        + bytes(32),
    ),
    ("map field", b"\x92\x05\x81\x01\x02"),
    ("ext field", b"\x92\x05\xd4\x01\x00"),
    ("timestamp field", b"\x92\x05\xd6\xff\x00\x00\x00\x00"),
]


@pytest.mark.parametrize(("frame"), [f for _, f in WRONG_TYPES], ids=[n for n, _ in WRONG_TYPES])
def test_wrong_field_types(frame: bytes) -> None:
    refused(frame)


NON_CANONICAL: list[tuple[str, bytes]] = [
    ("uint8 for a fixint", b"\x92\x05\xcc\x01"),
    ("uint64 for a fixint", b"\x92\x05\xcf" + struct.pack(">Q", 1)),
    ("uint8 type tag", b"\x91\xcc\x06"),
    ("array16 for a fixarray", b"\xdc\x00\x02\x05\x01"),
    ("array32 for a fixarray", b"\xdd\x00\x00\x00\x02\x05\x01"),
    ("bin16 for a bin8", b"\x92\x02\xc5\x00\x40" + bytes(64)),
    ("str8 for a fixstr", b"\x93\x07\x01\xd9\x03bye"),
    ("int8 for a positive fixint", b"\x92\x05\xd0\x01"),
]


@pytest.mark.parametrize(
    ("frame"), [f for _, f in NON_CANONICAL], ids=[n for n, _ in NON_CANONICAL]
)
def test_non_canonical_encodings(frame: bytes) -> None:
    assert msgpack.unpackb(frame) is not None  # it is valid msgpack, only not canonical
    error = refused(frame)
    assert "canonical" in error.reason


Form = tuple[bytes, str, int]
"""A msgpack header form: prefix byte(s), struct format of the length/value, largest value."""
Draw = Callable[[st.SearchStrategy[Any]], Any]


def _pick(draw: Draw, forms: list[Form]) -> Form:
    form: Form = draw(st.sampled_from(forms))
    return form


def _wide_pack(value: Any, draw: Draw) -> bytes:
    """A msgpack encoder that may pick a wider form than the canonical one for any item."""
    if isinstance(value, bool) or value is None:
        return bytes(msgpack.packb(value))
    if isinstance(value, int):
        forms: list[Form] = [(b"", ">B", 0x7F)] if 0 <= value <= 0x7F else []
        forms += [
            (b"\xcc", ">B", 0xFF),
            (b"\xcd", ">H", 0xFFFF),
            (b"\xce", ">I", 0xFFFFFFFF),
            (b"\xcf", ">Q", 2**64 - 1),
        ]
        usable = [f for f in forms if 0 <= value <= f[2]]
        if not usable:
            return bytes(msgpack.packb(value))
        prefix, fmt, _ = _pick(draw, usable)
        return prefix + struct.pack(fmt, value)
    if isinstance(value, bytes):
        n = len(value)
        forms = [(b"\xc4", ">B", 0xFF), (b"\xc5", ">H", 0xFFFF), (b"\xc6", ">I", 2**32 - 1)]
        prefix, fmt, _ = _pick(draw, [f for f in forms if n <= f[2]])
        return prefix + struct.pack(fmt, n) + value
    if isinstance(value, str):
        data = value.encode()
        n = len(data)
        forms = [(b"", "", 31)] if n <= 31 else []
        forms += [(b"\xd9", ">B", 0xFF), (b"\xda", ">H", 0xFFFF), (b"\xdb", ">I", 2**32 - 1)]
        prefix, fmt, _ = _pick(draw, [f for f in forms if n <= f[2]])
        if not fmt:
            return bytes([0xA0 | n]) + data
        return prefix + struct.pack(fmt, n) + data
    assert isinstance(value, list)
    return _array_head(len(value), draw) + b"".join(_wide_pack(item, draw) for item in value)


def _array_head(n: int, draw: Draw) -> bytes:
    """An array header for ``n`` items, in any form that can hold ``n``."""
    forms = [(b"", "", 15)] if n <= 15 else []
    forms += [(b"\xdc", ">H", 0xFFFF), (b"\xdd", ">I", 2**32 - 1)]
    prefix, fmt, _ = _pick(draw, [f for f in forms if n <= f[2]])
    return bytes([0x90 | n]) if not fmt else prefix + struct.pack(fmt, n)


@given(messages, st.data())
def test_any_second_encoding_is_refused(message: Message, data: st.DataObject) -> None:
    canonical = encode(message)
    frame = _wide_pack(msgpack.unpackb(canonical), data.draw)
    assert msgpack.unpackb(frame) == msgpack.unpackb(canonical)
    if frame == canonical:
        assert decode(frame) == message
    else:
        assert "canonical" in refused(frame).reason


def test_oversize_frames() -> None:
    refused(b"\x00" * (MAX_FRAME_BYTES + 1), TOO_LARGE)
    big = encode(Events(1, (b"x" * (MAX_FRAME_BYTES // 2), b"y" * (MAX_FRAME_BYTES // 2))))
    assert len(big) > MAX_FRAME_BYTES
    refused(big, TOO_LARGE)
    # Just under the limit is fine.
    fits = encode(Events(1, (b"x" * (MAX_FRAME_BYTES - 64),)))
    assert len(fits) <= MAX_FRAME_BYTES
    assert decode(fits) == Events(1, (b"x" * (MAX_FRAME_BYTES - 64),))


# --- fuzz ---------------------------------------------------------------------------------------


def _check_total(frame: bytes) -> None:
    """decode either returns a message that re-encodes to the very same bytes, or raises
    ProtocolError with one of the codes a decoder may give; nothing else escapes."""
    try:
        message = decode(frame)
    except ProtocolError as exc:
        assert exc.code in (MALFORMED, TOO_LARGE), exc
        assert isinstance(exc.reason, str) and exc.reason
        return
    assert encode(message) == frame


@settings(max_examples=500)
@given(st.binary(max_size=400))
def test_fuzz_random_bytes(frame: bytes) -> None:
    _check_total(frame)


@settings(max_examples=300)
@given(st.sampled_from(list(MsgType)).map(int), st.binary(max_size=200))
def test_fuzz_random_bytes_after_a_valid_header(tag: int, tail: bytes) -> None:
    for arity in range(1, 7):
        _check_total(bytes([0x90 | arity]) + msgpack.packb(tag) + tail)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=70)
    | st.sampled_from([bytes(32), bytes(64), 1, 0]),
    lambda children: st.lists(children, max_size=5),
    max_leaves=20,
)


@settings(max_examples=200)
@given(
    st.one_of(st.sampled_from(list(MsgType)).map(int), st.integers(-3, 20)),
    st.lists(msgpack_values, max_size=6),
)
def test_fuzz_structured_frames(tag: int, fields: list[Any]) -> None:
    _check_total(msgpack.packb([tag, *fields], use_bin_type=True))


@settings(max_examples=300)
@given(messages, st.data())
def test_fuzz_bit_flips_in_valid_frames(message: Message, data: st.DataObject) -> None:
    frame = bytearray(encode(message))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(0, len(frame) - 1))
        frame[i] ^= data.draw(st.integers(1, 255))
    _check_total(bytes(frame))


def _any_form(value: Any, draw: Draw) -> bytes:
    """Any valid msgpack encoding of ``value``: every header form whose range holds it,
    signed forms for positive integers and float 32 for floats included."""
    if isinstance(value, bool) or value is None or value == {}:
        return bytes(msgpack.packb(value))
    if isinstance(value, float):
        single = abs(value) < 3e38 and struct.unpack(">f", struct.pack(">f", value))[0] == value
        if single and draw(st.booleans()):
            return b"\xca" + struct.pack(">f", value)
        return b"\xcb" + struct.pack(">d", value)
    if isinstance(value, int):
        forms = [(b"", ">B", 0, 0x7F), (b"", ">b", -32, -1)]
        forms += [(b"\xcc", ">B", 0, 2**8 - 1), (b"\xcd", ">H", 0, 2**16 - 1)]
        forms += [(b"\xce", ">I", 0, 2**32 - 1), (b"\xcf", ">Q", 0, 2**64 - 1)]
        forms += [(b"\xd0", ">b", -(2**7), 2**7 - 1), (b"\xd1", ">h", -(2**15), 2**15 - 1)]
        forms += [(b"\xd2", ">i", -(2**31), 2**31 - 1), (b"\xd3", ">q", -(2**63), 2**63 - 1)]
        usable = [f for f in forms if f[2] <= value <= f[3]]
        prefix, fmt, _, _ = draw(st.sampled_from(usable))
        return bytes(prefix + struct.pack(fmt, value))
    if isinstance(value, list):
        return _array_head(len(value), draw) + b"".join(_any_form(i, draw) for i in value)
    return _wide_pack(value, draw)  # bytes and str


INT_EDGES = [
    edge + step
    for edge in (-(2**63), -(2**31), -(2**15), -(2**7), -32, 0, 2**7, 2**8, 2**16, 2**32, 2**64)
    for step in (-1, 0, 1)
    if -(2**63) <= edge + step < 2**64
]
any_value: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from(INT_EDGES)
    | st.floats(allow_nan=False)
    | st.binary(max_size=300)
    | st.text(max_size=300)
    | st.just({}),
    lambda inner: st.lists(inner, max_size=20),
    max_leaves=40,
)


@settings(max_examples=500)
@given(any_value, st.data())
def test_the_canonical_check_agrees_with_re_encoding(value: Any, data: st.DataObject) -> None:
    """``_canonical`` walks headers instead of re-packing the frame: for any value and any
    valid encoding of it, it must say exactly what comparing with ``packb`` says."""
    frame = _any_form(value, data.draw)
    assert _canonical(frame) == (msgpack.packb(msgpack.unpackb(frame), use_bin_type=True) == frame)
