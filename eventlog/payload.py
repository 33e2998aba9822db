"""The payload inside an event body: a msgpack map with a string ``t`` (its type).

Types used today: ``vault.genesis`` and ``member.add`` (public, epoch 0), ``doc.update`` and
``replica.profile`` (sealed). Unknown types are legal: they are stored, synced and listed, so
older replicas never drop what newer ones write.
"""

from __future__ import annotations

from typing import Any, Final

import msgpack

from eventlog.errors import MalformedError, TruncatedError, WrongTypeError

Payload = dict[str, Any]

MAX_PAYLOAD_ITEMS: Final = 4096


def encode_payload(payload: Payload) -> bytes:
    if not isinstance(payload.get("t"), str):
        raise WrongTypeError("payload: 't' must be a string")
    return msgpack.packb(payload, use_bin_type=True)


def decode_payload(data: bytes | memoryview) -> Payload:
    """Strictly decode a payload map; raise a ``DecodeError`` subclass if it is not one."""
    try:
        value = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=False,
            max_array_len=MAX_PAYLOAD_ITEMS,
            max_map_len=MAX_PAYLOAD_ITEMS,
        )
    except msgpack.ExtraData as exc:
        raise MalformedError("payload: trailing bytes") from exc
    except ValueError as exc:
        if "incomplete" in str(exc):
            raise TruncatedError("payload: input ends early") from exc
        raise MalformedError(f"payload: {exc or 'not valid msgpack'}") from exc
    except Exception as exc:
        raise MalformedError(f"payload: not valid msgpack ({type(exc).__name__})") from exc
    if type(value) is not dict or not isinstance(value.get("t"), str):
        raise WrongTypeError("payload: expected a map with a string 't'")
    return value


def field_bytes(payload: Payload, name: str, length: int | None = None) -> bytes:
    value = payload.get(name)
    if type(value) is not bytes or (length is not None and len(value) != length):
        size = f"{length}-byte " if length else ""
        raise WrongTypeError(f"payload {payload['t']}: '{name}' must be {size}bytes")
    return value


def field_str(payload: Payload, name: str) -> str:
    value = payload.get(name)
    if type(value) is not str:
        raise WrongTypeError(f"payload {payload['t']}: '{name}' must be a string")
    return value


def field_int(payload: Payload, name: str) -> int:
    value = payload.get(name)
    if type(value) is not int:
        raise WrongTypeError(f"payload {payload['t']}: '{name}' must be an integer")
    return value
