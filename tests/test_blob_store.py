"""The blob port every event store keeps beside its log: one contract, run against the
in-memory, SQLite (a real file) and JetStream (a real nats-server's Object Store) backends."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import nats
import pytest
from nats.js import api

from eventstore import (
    BlobMismatchError,
    BlobNotFoundError,
    EventStore,
    InvalidEventError,
    MemoryEventStore,
    SqliteEventStore,
    StorageError,
    digest_of,
)
from eventstore.jetstream import JetStreamEventStore
from eventstore.sqlite.blobs import blob_path

BIG = os.urandom(3 * 1024 * 1024 + 17)  # several Object Store chunks, not a round number


class BlobStoreContract:
    """What every backend's `store.blobs` must do."""

    def make_store(self) -> AbstractAsyncContextManager[EventStore]:
        raise NotImplementedError

    def test_put_then_get_returns_the_same_bytes_under_their_digest(self) -> None:
        async def scenario() -> None:
            async with self.make_store() as store:
                info = await store.blobs.put(BIG, "application/x-test")
                assert info.digest == digest_of(BIG)
                assert info.size == len(BIG)
                assert info.media_type == "application/x-test"
                assert await store.blobs.get(info.digest) == BIG
                found = await store.blobs.info(info.digest)
                assert found is not None
                assert (found.size, found.media_type) == (len(BIG), "application/x-test")
                assert [b.digest for b in await store.blobs.list()] == [info.digest]
                empty = await store.blobs.put(b"", "text/plain")
                assert await store.blobs.get(empty.digest) == b""

        asyncio.run(scenario())

    def test_a_put_of_stored_content_stores_it_once_and_marks_it_stored_now(self) -> None:
        async def scenario() -> None:
            async with self.make_store() as store:
                first = await store.blobs.put(b"same", "text/plain")
                again = await store.blobs.put(b"same", "text/plain", digest=first.digest)
                assert again.digest == first.digest
                assert again.stored_at >= first.stored_at
                assert len(await store.blobs.list()) == 1
                # a collection that began before the second put leaves it alone
                assert not await store.blobs.delete(first.digest, stored_before=first.stored_at)
                assert await store.blobs.get(first.digest) == b"same"

        asyncio.run(scenario())

    def test_content_that_does_not_match_its_digest_is_refused_and_nothing_is_stored(
        self,
    ) -> None:
        async def scenario() -> None:
            async with self.make_store() as store:
                claimed = digest_of(b"what was promised")
                with pytest.raises(BlobMismatchError) as refused:
                    await store.blobs.put(b"something else", "text/plain", digest=claimed)
                assert refused.value.expected == claimed
                assert refused.value.actual == digest_of(b"something else")
                assert await store.blobs.info(claimed) is None
                assert await store.blobs.info(digest_of(b"something else")) is None
                assert await store.blobs.list() == []

        asyncio.run(scenario())

    def test_bad_digests_media_types_and_missing_blobs_are_typed_errors(self) -> None:
        async def scenario() -> None:
            async with self.make_store() as store:
                # wrong types on purpose, as a caller without type checks could pass them
                for bad in ("", "sha256:xyz", "md5:" + "0" * 32, "sha256:" + "A" * 64, 3):
                    with pytest.raises(InvalidEventError):
                        await store.blobs.get(bad)  # type: ignore[arg-type]
                with pytest.raises(InvalidEventError):
                    await store.blobs.put(b"x", "bad\ntype")
                with pytest.raises(InvalidEventError):
                    await store.blobs.put("text", "text/plain")  # type: ignore[arg-type]
                assert await store.blobs.list() == [], "a refused put stores nothing"
                missing = digest_of(b"never stored")
                with pytest.raises(BlobNotFoundError):
                    await store.blobs.get(missing)
                assert not await store.blobs.delete(missing)

        asyncio.run(scenario())

    def test_delete_removes_only_what_it_names(self) -> None:
        async def scenario() -> None:
            async with self.make_store() as store:
                keep = await store.blobs.put(b"keep", "text/plain")
                drop = await store.blobs.put(b"drop", "text/plain")
                assert await store.blobs.delete(drop.digest, stored_before=time.time() + 1)
                assert not await store.blobs.delete(drop.digest)
                with pytest.raises(BlobNotFoundError):
                    await store.blobs.get(drop.digest)
                assert [b.digest for b in await store.blobs.list()] == [keep.digest]
                # stored again after a delete, it is there again
                back = await store.blobs.put(b"drop", "text/plain")
                assert await store.blobs.get(back.digest) == b"drop"

        asyncio.run(scenario())

    def test_the_blobs_close_with_the_store(self) -> None:
        async def scenario() -> None:
            async with self.make_store() as store:
                info = await store.blobs.put(b"x", "text/plain")
                await store.close()
                with pytest.raises(StorageError):
                    await store.blobs.get(info.digest)

        asyncio.run(scenario())


class TestMemoryBlobs(BlobStoreContract):
    @contextlib.asynccontextmanager
    async def make_store(self) -> AsyncIterator[EventStore]:
        store = MemoryEventStore()
        try:
            yield store
        finally:
            await store.close()


class TestSqliteBlobs(BlobStoreContract):
    tmp: Path = Path()

    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path) -> None:
        self.tmp = tmp_path

    @contextlib.asynccontextmanager
    async def make_store(self) -> AsyncIterator[EventStore]:
        path = self.tmp / f"{uuid.uuid4().hex[:8]}" / "events.db"
        store = await SqliteEventStore.open(path)
        try:
            yield store
        finally:
            await store.close()


def test_sqlite_blobs_live_in_a_private_file_of_their_own_made_on_the_first_put(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        path = tmp_path / "state" / "events.db"
        store = await SqliteEventStore.open(path)
        try:
            assert await store.blobs.list() == []
            assert not blob_path(path).exists(), "reads make no file"
            info = await store.blobs.put(BIG, "application/octet-stream")
        finally:
            await store.close()
        assert blob_path(path) == tmp_path / "state" / "events.blobs.db"
        assert stat.S_IMODE(blob_path(path).stat().st_mode) == 0o600
        assert path.stat().st_size < len(BIG) // 10, "the log's file does not hold the blob"
        # a blob changed at rest is refused on read
        with sqlite3.connect(blob_path(path)) as conn:
            conn.execute("UPDATE blobs SET data = ? WHERE digest = ?", (b"tampered", info.digest))
        store = await SqliteEventStore.open(path)
        try:
            with pytest.raises(BlobMismatchError):
                await store.blobs.get(info.digest)
        finally:
            await store.close()

    asyncio.run(scenario())


def test_a_file_that_is_not_a_blob_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "events.db"
    with sqlite3.connect(blob_path(path)) as conn:
        conn.execute("CREATE TABLE other (x)")

    async def scenario() -> None:
        store = await SqliteEventStore.open(path)
        try:
            with pytest.raises(StorageError, match="not a Baton blob store"):
                await store.blobs.put(b"x", "text/plain")
        finally:
            await store.close()

    asyncio.run(scenario())


class TestJetStreamBlobs(BlobStoreContract):
    url = ""

    @pytest.fixture(autouse=True)
    def _server(self, nats_url: str) -> None:
        self.url = nats_url

    @contextlib.asynccontextmanager
    async def make_store(self) -> AsyncIterator[EventStore]:
        tag = uuid.uuid4().hex[:12]
        nc = await nats.connect(self.url)
        store = await JetStreamEventStore.open(
            nc, f"T{tag}", subject_prefix=f"t{tag}", blob_bucket=f"B{tag}"
        )
        try:
            yield store
        finally:
            await store.close()
            js = nc.jetstream()
            for stream in (f"T{tag}", f"OBJ_B{tag}"):
                with contextlib.suppress(Exception):
                    await js.delete_stream(stream)
            await nc.close()


def test_the_object_store_bucket_has_the_logs_replicas(nats_url: str) -> None:
    async def scenario() -> None:
        tag = uuid.uuid4().hex[:12]
        nc = await nats.connect(nats_url)
        store = await JetStreamEventStore.open(
            nc, f"T{tag}", subject_prefix=f"t{tag}", blob_bucket=f"B{tag}"
        )
        try:
            await store.blobs.put(b"x", "text/plain")
            info = await nc.jetstream().stream_info(f"OBJ_B{tag}")
            assert info.config.num_replicas == 1
            assert info.config.storage == api.StorageType.FILE
        finally:
            await store.close()
            await nc.close()

    asyncio.run(scenario())
