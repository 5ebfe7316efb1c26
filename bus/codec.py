"""msgpack on the wire; strict decoding with a size and a nesting limit.

Decoding never raises anything but `MalformedMessage` (or `OversizedMessage`): whatever
the decoder itself raises on hostile input (a `RecursionError` on deep nesting, say) is a
malformed message, never an escaped exception that could end a receiving loop. Nesting
deeper than `MAX_DEPTH` is refused even where the decoder would cope, because the value
must also survive being encoded again later, from a deeper stack (into an event).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

import msgspec
import msgspec.inspect

from bus.errors import MalformedMessage, OversizedMessage

MAX_MESSAGE_BYTES = 1024 * 1024
MAX_DEPTH = 100
"""Containers (maps, arrays, messages) nested in one another, at most, in one message."""
T = TypeVar("T")
ENCODING_HEADER = "Baton-Encoding"
"""NATS header naming a message's encoding: `msgpack` (the default when absent) or `json`."""
ENCODINGS = ("msgpack", "json")

_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()
_MSGPACK_OPENERS = bytes([*range(0x80, 0xA0), 0xDC, 0xDD, 0xDE, 0xDF])
"""Every byte that can start a msgpack map or array (fixmap, fixarray, array/map 16/32)."""
_MSGPACK_OTHERS = bytes(b for b in range(256) if b not in _MSGPACK_OPENERS)
_JSON_OTHERS = bytes(b for b in range(256) if b not in b"[{")


_CONTAINERS = (dict, list, tuple, msgspec.Struct)
_SCALARS = (
    msgspec.inspect.StrType, msgspec.inspect.IntType, msgspec.inspect.FloatType,
    msgspec.inspect.BoolType, msgspec.inspect.NoneType, msgspec.inspect.LiteralType,
    msgspec.inspect.EnumType, msgspec.inspect.BytesType,
)  # fmt: skip


def _holds_no_container(kind: msgspec.inspect.Type) -> bool:
    if isinstance(kind, msgspec.inspect.UnionType):
        return all(_holds_no_container(member) for member in kind.types)
    return isinstance(kind, _SCALARS)


@functools.cache
def _nesting_fields(struct: type[msgspec.Struct]) -> tuple[str, ...]:
    """The fields of a Struct type that may hold a container: the others are declared
    scalars, which its decoder enforced, so the walk skips them."""
    info = msgspec.inspect.type_info(struct)
    if not isinstance(info, msgspec.inspect.StructType):
        return struct.__struct_fields__
    return tuple(f.name for f in info.fields if not _holds_no_container(f.type))


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether `value` nests more than `limit` containers (dicts, lists, tuples, Structs)
    in one another. Level by level, not recursive, so it is safe on any depth, and it
    stops at the first level too many."""
    level = [value] if isinstance(value, _CONTAINERS) else []
    for _ in range(limit):
        below: list[Any] = []
        for node in level:
            if isinstance(node, dict):
                inner: Iterable[Any] = node.values()
            elif isinstance(node, list | tuple):
                inner = node
            else:
                inner = [getattr(node, name) for name in _nesting_fields(type(node))]
            below += [child for child in inner if isinstance(child, _CONTAINERS)]
        if not below:
            return False
        level = below
    return bool(level)


def _check_depth(value: Any, data: bytes, others: bytes) -> None:
    """`MalformedMessage` if `value`, decoded from `data`, nests more than `MAX_DEPTH`
    deep. Data with at most `MAX_DEPTH` bytes that could open a container cannot, so the
    usual message is never walked (counting those bytes runs at C speed)."""
    if len(data.translate(None, others)) > MAX_DEPTH and too_deep(value):
        raise MalformedMessage(f"nested more than {MAX_DEPTH} deep")


def to_msgpack(data: bytes, encoding: str) -> bytes:
    """`data` as msgpack: JSON is transcoded (so one strict decoder serves both); data
    that is not valid JSON (or nests too deep), or an unknown encoding, raises
    `MalformedMessage`."""
    if encoding in ("", "msgpack"):
        return data
    if encoding != "json":
        raise MalformedMessage(f"unknown {ENCODING_HEADER} {encoding!r}: use msgpack or json")
    if len(data) > MAX_MESSAGE_BYTES:
        raise OversizedMessage(len(data), MAX_MESSAGE_BYTES)
    try:
        value = msgspec.json.decode(data)
    except Exception as exc:  # any failure of the decoder on hostile input is this
        raise MalformedMessage(f"not JSON: {type(exc).__name__}: {exc}") from exc
    _check_depth(value, data, _JSON_OTHERS)
    try:
        return _encoder.encode(value)
    except Exception as exc:
        raise MalformedMessage(f"not encodable: {type(exc).__name__}: {exc}") from exc


def from_msgpack(data: bytes, encoding: str) -> bytes:
    """A msgpack payload in the encoding a peer asked in (for replies)."""
    if encoding == "json":
        return _json_encoder.encode(msgspec.msgpack.decode(data))
    return data


def encode(message: Any) -> bytes:
    """The msgpack bytes of a message (or any msgpack-able value)."""
    return _encoder.encode(message)


class Decoder(Generic[T]):
    """One strict decoder for the messages one subject accepts."""

    def __init__(self, type_: Any, max_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self._decoder: msgspec.msgpack.Decoder[T] = msgspec.msgpack.Decoder(type_)
        self.max_bytes = max_bytes

    def decode(self, data: bytes) -> T:
        """The one message `data` holds, else `MalformedMessage` saying why."""
        if len(data) > self.max_bytes:
            raise OversizedMessage(len(data), self.max_bytes)
        try:
            value = self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise MalformedMessage(str(exc)) from exc
        except Exception as exc:  # any failure of the decoder on hostile input is this
            raise MalformedMessage(f"{type(exc).__name__}: {exc}") from exc
        _check_depth(value, data, _MSGPACK_OTHERS)
        return value
