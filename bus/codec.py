"""msgpack on the wire; strict decoding with a size limit.

Decoding never raises a driver error: anything that is not exactly one expected message
becomes `MalformedMessage` (or `OversizedMessage`) naming what was wrong.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import msgspec

from bus.errors import MalformedMessage, OversizedMessage

MAX_MESSAGE_BYTES = 1024 * 1024
T = TypeVar("T")
ENCODING_HEADER = "Baton-Encoding"
"""NATS header naming a message's encoding: `msgpack` (the default when absent) or `json`."""
ENCODINGS = ("msgpack", "json")

_encoder = msgspec.msgpack.Encoder()
_json_encoder = msgspec.json.Encoder()


def to_msgpack(data: bytes, encoding: str) -> bytes:
    """`data` as msgpack: JSON is transcoded (so one strict decoder serves both); data
    that is not valid JSON, or an unknown encoding, raises `MalformedMessage`."""
    if encoding in ("", "msgpack"):
        return data
    if encoding != "json":
        raise MalformedMessage(f"unknown {ENCODING_HEADER} {encoding!r}: use msgpack or json")
    if len(data) > MAX_MESSAGE_BYTES:
        raise OversizedMessage(len(data), MAX_MESSAGE_BYTES)
    try:
        return _encoder.encode(msgspec.json.decode(data))
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"not JSON: {exc}") from exc


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
        if len(data) > self.max_bytes:
            raise OversizedMessage(len(data), self.max_bytes)
        try:
            return self._decoder.decode(data)
        except msgspec.DecodeError as exc:
            raise MalformedMessage(str(exc)) from exc
