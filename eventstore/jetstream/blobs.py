"""The blob port (`BlobStore`) of the JetStream backend: a JetStream Object Store bucket
(default `BATON_BLOBS`, file storage, the log's replicas), created on the first put.

Each blob is one object named by its digest (`sha256:<hex>`); its media type and the time
of its last put are the object's headers (`Baton-Media-Type`, `Baton-Stored-At`). The
Object Store checks its own SHA-256 of the chunks on every get, and this store checks the
content against the name again, so a blob changed at rest is refused either way.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import api
from nats.js.object_store import ObjectStore

from eventstore._common import check_open
from eventstore.blobs import (
    DEFAULT_MEDIA_TYPE,
    BlobInfo,
    BlobMismatchError,
    BlobNotFoundError,
    check_digest,
    checked_get,
    checked_put,
)
from eventstore.jetstream.log import NATS_ERRORS, STREAM_WAIT_S, storage_error, until_quorum

__all__ = ["DEFAULT_BUCKET", "ObjectBlobs"]

DEFAULT_BUCKET: Final = "BATON_BLOBS"
_MEDIA: Final = "Baton-Media-Type"
_STORED: Final = "Baton-Stored-At"
_GONE: Final = (nats.js.errors.ObjectNotFoundError, nats.js.errors.NotFoundError)


def _header(info: api.ObjectInfo, name: str, default: str) -> str:
    value = (info.headers or {}).get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else default


def _info(info: api.ObjectInfo) -> BlobInfo:
    try:
        stored_at = float(_header(info, _STORED, "0"))
    except ValueError:
        stored_at = 0.0
    return BlobInfo(
        digest=info.name,
        size=int(info.size or 0),
        media_type=_header(info, _MEDIA, DEFAULT_MEDIA_TYPE),
        stored_at=stored_at,
    )


class ObjectBlobs:
    """Blobs in the Object Store `bucket` on the connection `nc` (see the module's docs)."""

    def __init__(
        self,
        nc: NATS,
        *,
        bucket: str = DEFAULT_BUCKET,
        replicas: int = 1,
        timeout: float = 5.0,
    ) -> None:
        self._js = nc.jetstream(timeout=timeout)
        self._bucket = bucket
        self._replicas = replicas
        self._store: ObjectStore | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def bucket(self) -> str:
        """The Object Store bucket's name."""
        return self._bucket

    async def _objects(self, create: bool) -> ObjectStore | None:
        """The bucket (created with the configured replicas if missing and `create`);
        `None` if it is missing and not `create`."""
        check_open(self._closed)
        if self._store is not None:
            return self._store
        async with self._lock:
            if self._store is None:
                try:
                    self._store = await self._js.object_store(self._bucket)
                except nats.js.errors.BucketNotFoundError:
                    if not create:
                        return None
                    config = api.ObjectStoreConfig(
                        bucket=self._bucket,
                        description="Baton: large values, content-addressed (SHA-256)",
                        storage=api.StorageType.FILE,
                        replicas=self._replicas,
                    )
                    stream = api.StreamConfig(
                        name=f"OBJ_{self._bucket}", num_replicas=self._replicas
                    )

                    async def make() -> None:
                        self._store = await self._js.create_object_store(self._bucket, config)

                    await until_quorum(make, stream, STREAM_WAIT_S)
            return self._store

    async def put(
        self, data: bytes, media_type: str = DEFAULT_MEDIA_TYPE, *, digest: str | None = None
    ) -> BlobInfo:
        """Store `data` once (see `BlobStore.put`); a blob already there gets its
        `Baton-Stored-At` header moved to now."""
        raw, actual = checked_put(data, media_type, digest)
        now = time.time()
        try:
            objects = await self._objects(create=True)
            assert objects is not None
            try:
                found = await objects.get_info(actual)
            except _GONE:
                found = None
            headers = {_MEDIA: [media_type], _STORED: [repr(now)]}
            if found is not None and not found.deleted:
                kept = _header(found, _MEDIA, media_type)
                headers[_MEDIA] = [kept]
                meta = api.ObjectMeta(name=actual, description=found.description, headers=headers)
                await objects.update_meta(actual, meta)
                return BlobInfo(digest=actual, size=len(raw), media_type=kept, stored_at=now)
            meta = api.ObjectMeta(name=actual, headers=headers)
            await objects.put(actual, raw, meta=meta)
        except NATS_ERRORS as error:
            raise storage_error(f"storing blob {actual}", error) from error
        return BlobInfo(digest=actual, size=len(raw), media_type=media_type, stored_at=now)

    async def get(self, digest: str) -> bytes:
        """The blob's bytes, checked against `digest` (see `BlobStore.get`)."""
        check_digest(digest)
        try:
            objects = await self._objects(create=False)
            if objects is None:
                raise BlobNotFoundError(digest)
            result = await objects.get(digest)
        except _GONE as error:
            raise BlobNotFoundError(digest) from error
        except nats.js.errors.DigestMismatchError as error:
            raise BlobMismatchError(
                digest, "content the object store's own digest refuses"
            ) from error
        except NATS_ERRORS as error:
            raise storage_error(f"reading blob {digest}", error) from error
        return checked_get(digest, bytes(result.data or b""))

    async def info(self, digest: str) -> BlobInfo | None:
        """What is known of the blob, `None` if it is not stored."""
        check_digest(digest)
        try:
            objects = await self._objects(create=False)
            if objects is None:
                return None
            found = await objects.get_info(digest)
        except _GONE:
            return None
        except NATS_ERRORS as error:
            raise storage_error(f"reading blob {digest}", error) from error
        return None if found.deleted else _info(found)

    async def list(self) -> list[BlobInfo]:
        """Every stored blob, by digest."""
        try:
            objects = await self._objects(create=False)
            if objects is None:
                return []
            found = await objects.list(ignore_deletes=True)
        except _GONE:
            return []
        except NATS_ERRORS as error:
            raise storage_error("listing blobs", error) from error
        return sorted((_info(i) for i in found if not i.deleted), key=lambda b: b.digest)

    async def delete(self, digest: str, stored_before: float | None = None) -> bool:
        """Remove the blob (see `BlobStore.delete`)."""
        check_digest(digest)
        try:
            objects = await self._objects(create=False)
            if objects is None:
                return False
            found = await objects.get_info(digest)
            if stored_before is not None and _info(found).stored_at >= stored_before:
                return False
            await objects.delete(digest)
        except _GONE:
            return False
        except NATS_ERRORS as error:
            raise storage_error(f"deleting blob {digest}", error) from error
        return True

    async def close(self) -> None:
        """Further calls fail; the connection is the log's to close."""
        self._closed = True
