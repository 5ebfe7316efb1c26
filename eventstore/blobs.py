"""Content-addressed blobs beside the log: large values stored once, named by their SHA-256.

Events refer to a blob by its digest (`sha256:<64 hex>`), so the log stays small and the
hash chain covers the digest, which pins the content. The store follows the log's
backend: a SQLite file beside the SQLite log (`sqlite_blobs`), a JetStream Object Store
bucket beside the JetStream log (`jetstream_blobs`), a dict beside the in-memory one.

Every backend shares the rules here: a put names the digest it expects or has it
computed, and content that does not hash to the digest it is given is refused with
`BlobMismatchError` (nothing is stored); a put of a blob already there stores nothing new
but marks it as just stored (`stored_at`), so a collection that started earlier cannot
take it away from the event about to refer to it; a get checks the content against its
digest again, so a blob changed at rest is refused too.
"""

from __future__ import annotations

import hashlib
import re
from typing import Final, Protocol

import msgspec

from eventstore.errors import EventStoreError, InvalidEventError

DIGEST_PREFIX: Final = "sha256:"
DEFAULT_MEDIA_TYPE: Final = "application/octet-stream"
_DIGEST: Final = re.compile(r"^sha256:[0-9a-f]{64}$")
_MEDIA_TYPE: Final = re.compile(r"^[\x21-\x7e][\x20-\x7e]{0,126}$")


class BlobInfo(msgspec.Struct, frozen=True, kw_only=True):
    """What the store knows of one blob besides its bytes."""

    digest: str
    size: int
    media_type: str
    stored_at: float
    """Unix time of its last put (the first, or a later one of the same content)."""


class BlobNotFoundError(EventStoreError):
    """No blob with this digest is stored."""

    def __init__(self, digest: str) -> None:
        super().__init__(f"no blob {digest}")
        self.digest = digest


class BlobMismatchError(EventStoreError):
    """Content that does not hash to the digest it came with: refused, nothing stored."""

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"blob content hashes to {actual}, not to {expected}")
        self.expected = expected
        self.actual = actual


def digest_of(data: bytes) -> str:
    """The digest that names `data`."""
    return DIGEST_PREFIX + hashlib.sha256(data).hexdigest()


def check_digest(digest: object) -> str:
    """`digest` if it is a well-formed `sha256:<64 lowercase hex>`, else `InvalidEventError`."""
    if not isinstance(digest, str) or not _DIGEST.match(digest):
        raise InvalidEventError(f"not a blob digest (sha256:<64 hex>): {digest!r}")
    return digest


def check_media_type(media_type: object) -> str:
    """`media_type` if it is printable ASCII of 1..127 characters, else `InvalidEventError`."""
    if not isinstance(media_type, str) or not _MEDIA_TYPE.match(media_type):
        raise InvalidEventError(f"not a media type: {media_type!r}")
    return media_type


def checked_put(data: object, media_type: object, digest: object | None) -> tuple[bytes, str]:
    """The bytes and digest of a put, checked (see the module's docs)."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidEventError(f"blob data must be bytes, got {type(data).__name__}")
    raw = bytes(data)
    check_media_type(media_type)
    actual = digest_of(raw)
    if digest is not None and check_digest(digest) != actual:
        raise BlobMismatchError(str(digest), actual)
    return raw, actual


def checked_get(digest: str, data: bytes) -> bytes:
    """`data` as read for `digest`, if it still hashes to it; else `BlobMismatchError`."""
    actual = digest_of(data)
    if actual != digest:
        raise BlobMismatchError(digest, actual)
    return data


class BlobStore(Protocol):
    """Content-addressed blobs (see the module's docs)."""

    async def put(
        self, data: bytes, media_type: str = DEFAULT_MEDIA_TYPE, *, digest: str | None = None
    ) -> BlobInfo:
        """Store `data` (once) and return what names it. With `digest`, refuse content that
        does not hash to it (`BlobMismatchError`). Returns once it is durable."""
        ...

    async def get(self, digest: str) -> bytes:
        """The blob's bytes, checked against `digest`; `BlobNotFoundError` if absent."""
        ...

    async def info(self, digest: str) -> BlobInfo | None:
        """What is known of the blob, `None` if it is not stored."""
        ...

    async def list(self) -> list[BlobInfo]:
        """Every stored blob, by digest."""
        ...

    async def delete(self, digest: str, stored_before: float | None = None) -> bool:
        """Remove the blob (only if its last put was before `stored_before`, when given);
        whether it was removed."""
        ...

    async def close(self) -> None:
        """Release the backend's resources; further calls fail."""
        ...
