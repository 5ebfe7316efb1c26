"""`JetStreamEventStore`: the store's public face, composing the log's connection, the
index of what it holds, the writer, the reader and the snapshots."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Any

from nats.aio.client import Client as NATS

from eventstore._common import check_append, check_open, log
from eventstore._subscription import Notifier
from eventstore.errors import InvalidEventError, StorageError
from eventstore.jetstream.blobs import DEFAULT_BUCKET, ObjectBlobs
from eventstore.jetstream.failover import FailoverNotes
from eventstore.jetstream.index import LogIndex
from eventstore.jetstream.log import NATS_ERRORS, STREAM_WAIT_S, JetStreamLog, storage_error
from eventstore.jetstream.projections import JetStreamProjections
from eventstore.jetstream.reader import LogReader
from eventstore.jetstream.saved_index import IndexSaves
from eventstore.jetstream.schema import Layout
from eventstore.jetstream.snapshots import Snapshots
from eventstore.jetstream.writer import LogWriter
from eventstore.model import (
    EventQuery,
    EventRow,
    NewEvent,
    Snapshot,
    SnapshotCheck,
    StoredEvent,
    VerifyReport,
)

__all__ = ["JetStreamEventStore"]


def _shown(servers: list[str]) -> str:
    """The servers fit to print: never with the user and password a URL may carry (as
    `bus.permissions.shown_url`, which the event store does not import)."""
    return ", ".join(
        f"{scheme or 'nats'}://{rest.rpartition('@')[2]}"
        for scheme, _, rest in (url.rpartition("://") for url in servers)
    )


OLDEST_SERVER = (2, 12)
"""The oldest nats-server release the store runs on: its appends are atomic batches
(`Nats-Batch-*`, 2.12) and it reads with batched direct gets (2.11); on an older server
those wait for replies that never come."""


def check_server(nc: NATS) -> None:
    """`StorageError` if the server `nc` is connected to is older than `OLDEST_SERVER`
    (a release it does not name in a form nats-py can read is let through)."""
    version = nc.connected_server_version
    try:
        found = (version.major, version.minor)
    except ValueError:
        return
    if found < OLDEST_SERVER:
        where = _shown([nc.connected_url.geturl()]) if nc.connected_url else "the server"
        raise StorageError(
            f"the JetStream event store needs nats-server {'.'.join(map(str, OLDEST_SERVER))} "
            f"or newer; {where} runs {version.major}.{version.minor}.{version.patch}"
        )


async def _connect(servers: list[str], timeout: float, options: Mapping[str, Any]) -> NATS:
    """A client that reconnects forever once connected, but whose first connect fails
    (with the last error) once every server has refused it, or at once on a server
    certificate that the configured authority does not vouch for: nats-py would
    otherwise retry a wrong address or login forever."""
    failed = 0
    connected = False
    telling: list[Exception] = []  # a refused login: not the broken pipe that may follow

    async def on_error(error: Exception) -> None:
        nonlocal failed
        if not connected:
            failed += 1
            if "Authorization Violation" in str(error):
                telling.append(error)
            # a certificate the configured authority does not vouch for stays so (and
            # nats-py 2.16 hangs on the next server after one)
            if isinstance(error, ssl.SSLCertVerificationError):
                raise error
            if failed >= len(servers):
                raise telling[-1] if telling else error

    client = NATS()
    settings: dict[str, Any] = {
        "connect_timeout": max(1, int(timeout)),
        "allow_reconnect": True,
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "error_cb": on_error,
    }
    try:
        await client.connect(servers, **settings, **options)
    except Exception:
        # raising from on_error skips nats-py's own close: the socket is closed here, or
        # the server's reset of it may be printed as the process exits (as `bus.connection`)
        transport: Any = client._transport
        if transport:
            transport.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1):
                    await transport.wait_closed()
        raise
    connected = True
    return client


class JetStreamEventStore:
    """An `EventStore` kept in one NATS JetStream stream (see the package's docs).

    Open it with `await JetStreamEventStore.open(url_or_client)`. Appends from one store
    object are serialised (each must know the tail's hash); several processes may append
    to the same log, JetStream's expected-sequence checks keep them consistent.
    """

    def __init__(
        self,
        nc: NATS,
        *,
        owns_connection: bool,
        stream_name: str,
        subject_prefix: str,
        timeout: float,
        replicas: int = 1,
        blob_bucket: str = DEFAULT_BUCKET,
    ) -> None:
        """Use `open()`; this only wires the parts onto a connected client."""
        self._nc = nc
        self._owns_connection = owns_connection
        self._layout = Layout(stream_name, subject_prefix)
        self._timeout = timeout
        self._closed = False
        self._notifier = Notifier()
        is_closed = self._is_closed
        self._log = JetStreamLog(nc, self._layout, timeout)
        self._index = LogIndex(self._log)
        self._failovers = FailoverNotes(stream_name)
        self._writer = LogWriter(self._log, self._index, self._notifier, is_closed, self._failovers)
        self._reads = LogReader(self._log, self._index, self._notifier, is_closed)
        self._snapshots = Snapshots(self._log, replicas, is_closed, self._event_at)
        self.blobs = ObjectBlobs(nc, bucket=blob_bucket, replicas=replicas, timeout=timeout)
        """The blob port (`BlobStore`): a JetStream Object Store bucket with the log's
        replicas (`eventstore.jetstream.blobs`), made on the first put."""
        self.projections = JetStreamProjections(self._log, replicas, is_closed, self._event_at)
        """The projection port (`ProjectionStore`): rows in memory, saved beside the log
        now and then and at close (`eventstore.jetstream.projections`)."""
        self._index_saves = IndexSaves(self._log, self._index, replicas, self._event_at)

    # -- opening and closing ----------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url_or_client: str | Sequence[str] | NATS,
        stream_name: str = "BATON_EVENTS",
        replicas: int = 1,
        *,
        subject_prefix: str = "baton",
        timeout: float = 5.0,
        connect_options: Mapping[str, Any] | None = None,
        wait_s: float = STREAM_WAIT_S,
        blob_bucket: str = DEFAULT_BUCKET,
    ) -> JetStreamEventStore:
        """Connect (to a URL, or the first of several that answers, with
        `connect_options` added: a login, TLS; or use the given connected client), create
        the stream if missing (waiting up to `wait_s` for a cluster's quorum) and build
        the event-id index: from the index saved beside the log and the events after it,
        or by reading the whole log (`eventstore.jetstream.saved_index`).

        Large values go to the Object Store `blob_bucket` (made on the first put, with
        `replicas`). A client passed in stays the caller's: `close()` leaves it open. The
        server must run JetStream with `sync_interval: always` for acknowledged appends to
        be durable.
        """
        if not stream_name or any(c in stream_name for c in ".*> \t\r\n/\\"):
            raise InvalidEventError(f"invalid JetStream stream name {stream_name!r}")
        if not subject_prefix or any(c in subject_prefix for c in "*> \t\r\n"):
            raise InvalidEventError(f"invalid subject prefix {subject_prefix!r}")
        if replicas < 1:
            raise InvalidEventError(f"replicas must be >= 1, got {replicas!r}")
        owns = not isinstance(url_or_client, NATS)
        if isinstance(url_or_client, NATS):
            nc = url_or_client
        else:
            servers = [url_or_client] if isinstance(url_or_client, str) else list(url_or_client)
            try:
                nc = await _connect(servers, timeout, connect_options or {})
            except NATS_ERRORS as error:
                raise storage_error(f"connecting to {_shown(servers)}", error) from error
        store = cls(
            nc,
            owns_connection=owns,
            stream_name=stream_name,
            subject_prefix=subject_prefix,
            timeout=timeout,
            replicas=replicas,
            blob_bucket=blob_bucket,
        )
        try:
            check_server(nc)
            await store._log.ensure_stream(replicas, wait_s)
            await store._failovers.listen(nc, store._log.leader)
            await store._index_saves.load()
            await store._index.refresh()
            if store._index_saves.due():  # this open read many events: the next need not
                try:
                    await store._index_saves.save()
                except StorageError as error:
                    log.warning("index not saved after open: %s", error)
            store._index_saves.start()
        except BaseException:
            await store.close()
            raise
        return store

    def _is_closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        """Stop subscriptions and, if the store opened the connection, close it."""
        if self._closed:
            return
        await self.projections.save_all()  # what moved since the last save, kept
        await self._index_saves.close()
        self._closed = True
        self._notifier.notify()
        self._index.clear()
        await self._failovers.close()
        await self.blobs.close()
        if self._owns_connection:
            with contextlib.suppress(*NATS_ERRORS):
                await asyncio.wait_for(self._nc.close(), self._timeout)

    # -- appends ----------------------------------------------------------------------

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> list[StoredEvent]:
        """Append all of `events` to `stream` or none of them (see `EventStore.append`)."""
        batch = tuple(events)
        check_append(stream, batch, expected_version)
        check_open(self._closed)
        if not batch:
            return []
        return await self._writer.append(stream, batch, expected_version)

    # -- reads ------------------------------------------------------------------------

    async def read_stream_rows(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[EventRow]:
        """Like `read_stream`, but only (position, version, type, schema, data) per event."""
        return await self._reads.read_stream_rows(stream, from_version, until_position)

    async def read_stream(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[StoredEvent]:
        """A stream's events in version order, optionally only up to a global position."""
        return await self._reads.read_stream(stream, from_version, until_position)

    async def read_all(self, from_position: int = 1, limit: int | None = None) -> list[StoredEvent]:
        """Every stream's events in global order."""
        return await self._reads.read_all(from_position, limit)

    async def stream_version(self, stream: str) -> int:
        """The stream's last version, 0 if it has no events."""
        return await self._reads.stream_version(stream)

    async def streams(self, prefix: str = "") -> list[str]:
        """Names of the streams that have events, sorted, filtered by prefix."""
        return await self._reads.streams(prefix)

    async def open_streams(self, prefix: str, closed_by: Collection[str]) -> list[str]:
        """Streams with this prefix holding no event of a type in `closed_by`, sorted: one
        direct get per stream, and a whole read only of those that do not end closed."""
        return await self._reads.open_streams(prefix, closed_by)

    async def query(self, query: EventQuery) -> list[StoredEvent]:
        """Events matching every filter in `query`, in global order."""
        return await self._reads.query(query)

    async def last_position(self) -> int:
        """The global position of the newest event, 0 for an empty log."""
        return await self._reads.last_position()

    def subscribe(self, from_position: int = 1) -> AsyncIterator[StoredEvent]:
        """Every event from `from_position` on, in global order: the history, then each
        new append (see `EventStore.subscribe`). Events are read by position only (direct
        gets of the contiguous log), so nothing is skipped or repeated at the hand-over; a
        core-NATS subscription on the log's subjects only wakes the reader when any
        process appends, and a poll every second covers a wakeup lost in a reconnect."""
        return self._reads.subscribe(from_position)

    # -- snapshots --------------------------------------------------------------------

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep a snapshot (replacing one of the same stream and version), bound to the
        event at its position (see `EventStore.save_snapshot`)."""
        await self._snapshots.save(snapshot)

    async def load_snapshot(
        self, stream: str, until_position: int | None = None
    ) -> Snapshot | None:
        """The stream's newest snapshot still bound to the log, or the newest at or before
        `until_position` (see `EventStore.load_snapshot`)."""
        return await self._snapshots.load(stream, until_position)

    async def _event_at(self, position: int) -> StoredEvent | None:
        found = await self._reads.read_all(position, 1) if position >= 1 else []
        return found[0] if found and found[0].position == position else None

    # -- audit ------------------------------------------------------------------------

    async def verify_snapshots(self) -> list[SnapshotCheck]:
        """Every stored snapshot, checked against the log as it is now."""
        return await self._snapshots.verify()

    async def verify(self, checkpoints: Mapping[int, str] | None = None) -> VerifyReport:
        """Recompute the hash chain over the whole log, in chunks; with `checkpoints`,
        check the log against them too (see `EventStore.verify`)."""
        return await self._reads.verify(checkpoints)
