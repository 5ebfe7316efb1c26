"""Large values by reference, as both sides of the wire see them: which map in a payload is
a `BlobRef`, how a value becomes a blob's bytes and back, and the two walks that swap
values above a threshold for references (`externalize`) and references for their values
(`internalize`), given a way to put and get blobs. Pure but for those two callbacks.

A value's bytes, by its type (the `media_type` of its reference):

- a string: its UTF-8 bytes, `text/plain; charset=utf-8`;
- bytes: themselves, `application/octet-stream`;
- anything else (a map, a list, a number...): its msgpack, `application/msgpack`; the
  map or list may hold references of its own (its large parts went first).

A value is swapped when its msgpack encoding would be over the threshold: first the
large parts inside a map or list, then the map or list itself if it is still over.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable
from typing import Any, Final

import msgspec

from bus.errors import MalformedMessage
from bus.protocol import BLOB_KEY, BLOB_THRESHOLD, BlobRef

TEXT: Final = "text/plain; charset=utf-8"
BINARY: Final = "application/octet-stream"
MSGPACK: Final = "application/msgpack"
_DIGEST: Final = re.compile(r"^sha256:[0-9a-f]{64}$")
_MARK: Final = BLOB_KEY.encode()
_REF_KEYS: Final = frozenset((BLOB_KEY, "size", "media_type"))
_REF_SIZE: Final = 110  # a reference's encoded size, about
_encoder = msgspec.msgpack.Encoder()

Put = Callable[[bytes, str], Awaitable[BlobRef]]
"""Stores a blob's bytes with their media type; returns its reference."""
Get = Callable[[BlobRef], Awaitable[bytes]]
"""The bytes a reference names (checked against its digest)."""


class BlobMismatch(MalformedMessage):
    """Bytes that do not hash to the digest that names them."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"blob content hashes to {actual}, not to {expected}")
        self.expected = expected
        self.actual = actual


def digest_of(data: bytes) -> str:
    """The `sha256:<hex>` that names `data`."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def is_digest(text: object) -> bool:
    return isinstance(text, str) and _DIGEST.match(text) is not None


def check(ref: BlobRef, data: bytes) -> bytes:
    """`data` if it is what `ref` names (size and digest), else `BlobMismatch`."""
    actual = digest_of(data)
    if actual != ref.digest or len(data) != ref.size:
        raise BlobMismatch(ref.digest, actual)
    return data


def as_ref(value: object) -> BlobRef | None:
    """`value` as a reference, if it is a map of exactly a reference's keys, well formed."""
    if type(value) is not dict or len(value) != 3 or value.keys() != _REF_KEYS:
        return None
    try:
        ref = msgspec.convert(value, BlobRef)
    except msgspec.ValidationError:
        return None
    return ref if is_digest(ref.digest) else None


def ref_value(ref: BlobRef) -> dict[str, Any]:
    """The map that stands for `ref` in a payload."""
    return {BLOB_KEY: ref.digest, "size": ref.size, "media_type": ref.media_type}


def may_hold_refs(data: bytes) -> bool:
    """Whether encoded data (an event's, a message's) can hold a reference at all: a
    check at memchr speed before anything is decoded or walked."""
    return _MARK in data


def refs_in(value: Any) -> list[BlobRef]:
    """Every reference in `value`, in the order met (not into the blobs they name)."""
    found: list[BlobRef] = []
    stack = [value]
    while stack:
        node = stack.pop()
        if type(node) is dict:
            ref = as_ref(node)
            if ref is not None:
                found.append(ref)
            else:
                stack.extend(reversed(list(node.values())))
        elif type(node) is list or type(node) is tuple:
            stack.extend(reversed(node))
    return found


def encode_value(value: Any) -> tuple[bytes, str]:
    """A value as a blob's bytes and media type (see the module's docs)."""
    if isinstance(value, str):
        return value.encode(), TEXT
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value), BINARY
    return _encoder.encode(value), MSGPACK


def decode_value(data: bytes, media_type: str) -> Any:
    """The value a blob's bytes hold, by its media type (`MalformedMessage` if they do not
    decode; an unknown type is bytes)."""
    kind = media_type.split(";", 1)[0].strip().lower()
    try:
        if kind == "text/plain":
            return data.decode()
        if kind == MSGPACK:
            return msgspec.msgpack.decode(data)
    except (UnicodeDecodeError, msgspec.DecodeError) as exc:
        raise MalformedMessage(f"a {media_type} blob that does not decode: {exc}") from exc
    return data


async def externalize(value: Any, put: Put, threshold: int = BLOB_THRESHOLD) -> Any:
    """`value` with each part whose encoding is over `threshold` bytes stored by `put` and
    replaced by its reference (see the module's docs); `value` itself when it is small."""
    if len(_encoder.encode(value)) <= threshold:
        return value

    async def shrink(node: Any) -> tuple[Any, int]:
        if type(node) is str:
            size = (len(node) if node.isascii() else len(node.encode())) + 5
        elif isinstance(node, bytes | bytearray):
            size = len(node) + 5
        elif type(node) is dict and as_ref(node) is None:
            items = {}
            size = 5
            for key, item in node.items():
                items[key], part = await shrink(item)
                size += part + len(str(key)) + 5
            node = items
        elif type(node) is list or type(node) is tuple:
            parts = [await shrink(item) for item in node]
            node = [item for item, _ in parts]
            size = 5 + sum(part for _, part in parts)
        else:
            return node, (_REF_SIZE if type(node) is dict else 9)
        if size <= threshold:
            return node, size
        data, media_type = encode_value(node)
        return ref_value(await put(data, media_type)), _REF_SIZE

    shrunk, _ = await shrink(value)
    return shrunk


async def internalize(value: Any, get: Get) -> Any:
    """`value` with every reference in it replaced by the value its blob holds (fetched
    with `get`, and so on into the blobs that hold references); `value` itself when it
    holds none."""
    if not may_hold_refs(_encoder.encode(value)):
        return value

    async def grow(node: Any) -> Any:
        if type(node) is dict:
            ref = as_ref(node)
            if ref is None:
                return {key: await grow(item) for key, item in node.items()}
            held = decode_value(await get(ref), ref.media_type)
            return await internalize(held, get) if ref.media_type == MSGPACK else held
        if type(node) is list or type(node) is tuple:
            return [await grow(item) for item in node]
        return node

    return await grow(value)
