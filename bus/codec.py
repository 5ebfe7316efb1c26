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

_encoder = msgspec.msgpack.Encoder()


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
