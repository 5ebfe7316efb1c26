"""`SqliteEventStore`: the store's public face, composing the writer thread, the reader
thread and the reads, snapshots and projections that run on them."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from pathlib import Path

import private
from eventstore._common import check_append, check_open
from eventstore._subscription import Notifier
from eventstore.errors import StorageError
from eventstore.model import (
    EventQuery,
    EventRow,
    NewEvent,
    Snapshot,
    SnapshotCheck,
    StoredEvent,
    VerifyReport,
)
from eventstore.sqlite.blobs import SqliteBlobs, blob_path
from eventstore.sqlite.connection import connect
from eventstore.sqlite.projections import SqliteProjections
from eventstore.sqlite.reader import LogReader
from eventstore.sqlite.snapshots import Snapshots
from eventstore.sqlite.worker import Worker
from eventstore.sqlite.writer import LogWriter

__all__ = ["SqliteEventStore"]


class SqliteEventStore:
    """The default `EventStore`: durable, hash-chained, group-committed, in one SQLite file.

    Create it with `await SqliteEventStore.open(path)` and `await store.close()` it when
    done. One process should own a file at a time; a second writer is still safe (each
    transaction re-reads the chain's tail) but contends for the write lock, and its
    appends reach this store's subscribers within a second.
    """

    def __init__(
        self,
        path: Path,
        writer: sqlite3.Connection,
        reader: sqlite3.Connection,
        busy_timeout_ms: int = 5_000,
    ) -> None:
        """Use `open()`; this only wires connections that are already set up."""
        self._path = path
        self._closed = False
        self._notifier = Notifier()
        is_closed = self._is_closed
        self._writer = LogWriter(path.name, writer, is_closed, self._notifier)
        self._reader = Worker(path.name, reader, is_closed)
        self._writer.start()
        self._reader.start()
        self._reads = LogReader(self._reader, self._notifier, is_closed)
        self._snapshots = Snapshots(self._writer, self._reader)
        self.projections = SqliteProjections(self._writer, self._reader)
        """The projection port (`ProjectionStore`), in the same file as the log."""
        self.blobs = SqliteBlobs(blob_path(path), busy_timeout_ms)
        """The blob port (`BlobStore`): a file of its own beside the log's
        (`eventstore.sqlite.blobs`), made on the first put."""

    @property
    def path(self) -> Path:
        """The database file."""
        return self._path

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        busy_timeout_ms: int = 5_000,
        max_size_bytes: int | None = None,
    ) -> SqliteEventStore:
        """Open (creating the directory and schema if needed) the store at `path`.

        `busy_timeout_ms` bounds how long a write waits for another process's lock.
        `max_size_bytes` caps the file (SQLite's max_page_count): once reached, appends
        fail with `StorageError` and everything already stored stays readable.
        Raises `StorageError` if the file cannot be opened or is not a Baton event store;
        a file of the previous schema (1) is upgraded in place.
        """
        path = Path(path)
        try:
            private.make_dir(path.parent)
        except OSError as e:
            raise StorageError(f"cannot create directory {path.parent}: {e}") from e
        try:
            # made 0600 here, not by SQLite (0644): its -wal and -shm take the file's mode
            private.touch(path)
        except OSError as e:
            raise StorageError(f"cannot open event store {path}: {e}") from e
        writer, reader = await asyncio.to_thread(connect, path, busy_timeout_ms, max_size_bytes)
        return cls(path, writer, reader, busy_timeout_ms)

    # -- writing -------------------------------------------------------------------------

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> list[StoredEvent]:
        """Append all of `events` to `stream` or none of them (see `EventStore.append`).

        Returns after the transaction holding them has committed with a full fsync.
        """
        batch = tuple(events)
        check_append(stream, batch, expected_version)
        check_open(self._closed)
        if not batch:
            return []
        return await self._writer.append(stream, batch, expected_version)

    # -- reading -------------------------------------------------------------------------

    async def read_stream(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[StoredEvent]:
        """A stream's events in version order, optionally only up to a global position."""
        return await self._reads.read_stream(stream, from_version, until_position)

    async def read_stream_rows(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[EventRow]:
        """Like `read_stream`, but only (position, version, type, schema, data) per event,
        as plain tuples: the lean read a replay (decode + fold) needs, several times
        faster than building full `StoredEvent`s."""
        return await self._reads.read_stream_rows(stream, from_version, until_position)

    async def read_all(self, from_position: int = 1, limit: int | None = None) -> list[StoredEvent]:
        """Every stream's events in global order."""
        return await self._reads.read_all(from_position, limit)

    async def stream_version(self, stream: str) -> int:
        """The stream's last version, 0 if it has no events."""
        return await self._reads.stream_version(stream)

    async def last_position(self) -> int:
        """The global position of the newest event, 0 for an empty log."""
        return await self._reads.last_position()

    async def streams(self, prefix: str = "") -> list[str]:
        """Names of the streams that have events, sorted, filtered by prefix."""
        return await self._reads.streams(prefix)

    async def open_streams(self, prefix: str, closed_by: Collection[str]) -> list[str]:
        """Streams with this prefix holding no event of a type in `closed_by`, sorted, in
        one statement whose cost per closed stream is one index seek."""
        return await self._reads.open_streams(prefix, closed_by)

    async def query(self, query: EventQuery) -> list[StoredEvent]:
        """Events matching every filter in `query`, in global order."""
        return await self._reads.query(query)

    def subscribe(self, from_position: int = 1) -> AsyncIterator[StoredEvent]:
        """History from `from_position`, then live appends (see `EventStore.subscribe`)."""
        return self._reads.subscribe(from_position)

    async def verify(self, checkpoints: Mapping[int, str] | None = None) -> VerifyReport:
        """Recompute the hash chain over the log as it stands now, reading it in chunks;
        with `checkpoints`, check the log against them too (see `EventStore.verify`)."""
        return await self._reads.verify(checkpoints)

    # -- snapshots -----------------------------------------------------------------------

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep a snapshot (replacing one of the same stream and version), durably, bound
        to the event at its position (see `EventStore.save_snapshot`)."""
        await self._snapshots.save(snapshot)

    async def load_snapshot(
        self, stream: str, until_position: int | None = None
    ) -> Snapshot | None:
        """The stream's newest snapshot still bound to the log, or the newest at or before
        `until_position` (see `EventStore.load_snapshot`)."""
        return await self._snapshots.load(stream, until_position)

    async def verify_snapshots(self) -> list[SnapshotCheck]:
        """Every stored snapshot, checked against the log as it is now."""
        return await self._snapshots.verify()

    # -- lifecycle -----------------------------------------------------------------------

    def _is_closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Finish the appends already queued, stop both threads and close the connections;
        subscriptions end."""
        if self._closed:
            return
        self._closed = True
        self._notifier.notify()
        for worker in (self._writer, self._reader):
            await worker.stop()
        await self.blobs.close()
