"""An in-memory event store with the SQLite backend's exact semantics.

It exists so pure tests (the orchestrator's decide/evolve loop, projections, property
tests) can run thousands of examples without touching a disk, while the shared contract
suite keeps it honest against the durable backend. Nothing survives the process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence

from eventstore._common import (
    check_append,
    check_limit,
    check_open,
    check_query,
    check_snapshot,
    event_rows,
    matcher,
    snapshot_check,
    snapshot_usable,
)
from eventstore._subscription import Notifier, catch_up
from eventstore.blobs import (
    DEFAULT_MEDIA_TYPE,
    BlobInfo,
    BlobNotFoundError,
    check_digest,
    checked_get,
    checked_put,
)
from eventstore.chain import GENESIS, SnapshotSeal, seal, seal_snapshot, verify_chain
from eventstore.errors import (
    ConcurrencyError,
    DuplicateEventError,
)
from eventstore.model import (
    EventQuery,
    EventRow,
    NewEvent,
    Snapshot,
    SnapshotCheck,
    StoredEvent,
    VerifyReport,
)
from eventstore.projection import HeldRows, check_commit, check_projection_name

__all__ = ["MemoryEventStore"]


class MemoryEventStore:
    """An `EventStore` held in lists and dicts; appends are atomic because they never await
    between checking and writing."""

    def __init__(self) -> None:
        self._log: list[StoredEvent] = []
        self._streams: dict[str, list[StoredEvent]] = {}
        self._by_id: dict[str, StoredEvent] = {}
        self._snapshots: dict[str, dict[int, tuple[Snapshot, SnapshotSeal]]] = {}
        self._closed = False
        self._notifier = Notifier()
        self.projections = MemoryProjections(self)
        """The projection port (`ProjectionStore`), kept beside the log."""
        self.blobs = MemoryBlobs(lambda: self._closed)
        """The blob port (`BlobStore`), kept beside the log."""

    def _check_open(self) -> None:
        check_open(self._closed)

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> list[StoredEvent]:
        """Append all of `events` to `stream` or none of them (see `EventStore.append`)."""
        batch = tuple(events)
        check_append(stream, batch, expected_version)
        self._check_open()
        if not batch:
            return []
        # Yield once, as a real backend would, so concurrent callers interleave here.
        await asyncio.sleep(0)
        self._check_open()
        stored = self._append_now(stream, batch, expected_version)
        self._notifier.notify()
        return stored

    def _append_now(
        self, stream: str, batch: tuple[NewEvent, ...], expected_version: int
    ) -> list[StoredEvent]:
        known = [self._by_id[e.event_id] for e in batch if e.event_id in self._by_id]
        if known:
            if len(known) == len(batch) and all(s.stream == stream for s in known):
                return known
            raise DuplicateEventError(stream, [s.event_id for s in known])
        existing = self._streams.get(stream, [])
        current = len(existing)
        if current != expected_version:
            raise ConcurrencyError(stream, expected_version, current)
        prev_hash = self._log[-1].hash if self._log else GENESIS
        position = len(self._log)
        recorded_at = time.time()
        stored: list[StoredEvent] = []
        for offset, event in enumerate(batch, start=1):
            sealed = seal(
                event,
                stream=stream,
                position=position + offset,
                version=current + offset,
                recorded_at=recorded_at,
                prev_hash=prev_hash,
            )
            stored.append(sealed)
            prev_hash = sealed.hash
        self._log.extend(stored)
        self._streams.setdefault(stream, []).extend(stored)
        for s in stored:
            self._by_id[s.event_id] = s
        return stored

    async def read_stream(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[StoredEvent]:
        """A stream's events in version order, optionally only up to a global position."""
        self._check_open()
        events = self._streams.get(stream, [])[max(from_version, 1) - 1 :]
        if until_position is not None:
            events = [e for e in events if e.position <= until_position]
        return list(events)

    async def read_stream_rows(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[EventRow]:
        """Like `read_stream`, but only (position, version, type, schema, data) per event."""
        return event_rows(await self.read_stream(stream, from_version, until_position))

    async def read_all(self, from_position: int = 1, limit: int | None = None) -> list[StoredEvent]:
        """Every stream's events in global order."""
        self._check_open()
        check_limit(limit)
        start = max(from_position, 1) - 1
        end = None if limit is None else start + limit
        return self._log[start:end]

    async def stream_version(self, stream: str) -> int:
        """The stream's last version, 0 if it has no events."""
        self._check_open()
        return len(self._streams.get(stream, []))

    async def streams(self, prefix: str = "") -> list[str]:
        """Names of the streams that have events, sorted, filtered by prefix."""
        self._check_open()
        return sorted(name for name in self._streams if name.startswith(prefix))

    async def open_streams(self, prefix: str, closed_by: Collection[str]) -> list[str]:
        """Streams with this prefix holding no event of a type in `closed_by`, sorted."""
        self._check_open()
        closing = frozenset(closed_by)
        return sorted(
            name
            for name, events in self._streams.items()
            if name.startswith(prefix)
            and events[-1].type not in closing  # the usual closed stream ends with one
            and not any(e.type in closing for e in events)
        )

    async def query(self, query: EventQuery) -> list[StoredEvent]:
        """Events matching every filter in `query`, in global order."""
        self._check_open()
        check_query(query)
        source = self._log if query.stream is None else self._streams.get(query.stream, [])
        matches = matcher(query)
        found: list[StoredEvent] = []
        for event in source:
            if query.limit is not None and len(found) >= query.limit:
                break
            if matches(event):
                found.append(event)
        return found

    async def last_position(self) -> int:
        """The global position of the newest event, 0 for an empty log."""
        self._check_open()
        return len(self._log)

    def subscribe(self, from_position: int = 1) -> AsyncIterator[StoredEvent]:
        """History from `from_position`, then live appends (see `EventStore.subscribe`)."""
        self._check_open()
        return catch_up(
            lambda position, limit: self.read_all(position, limit),
            self._notifier,
            from_position,
            lambda: self._closed,
        )

    def _event_at(self, position: int) -> StoredEvent | None:
        return self._log[position - 1] if 1 <= position <= len(self._log) else None

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep a snapshot (replacing one of the same stream and version), bound to the
        event at its position (see `EventStore.save_snapshot`)."""
        check_snapshot(snapshot)
        self._check_open()
        sealed = seal_snapshot(snapshot, self._event_at(snapshot.position))
        self._snapshots.setdefault(snapshot.stream, {})[snapshot.version] = (snapshot, sealed)

    async def load_snapshot(
        self, stream: str, until_position: int | None = None
    ) -> Snapshot | None:
        """The stream's newest snapshot still bound to the log, or the newest at or before
        `until_position` (see `EventStore.load_snapshot`)."""
        self._check_open()
        kept = self._snapshots.get(stream, {})
        for version in sorted(kept, reverse=True):
            snapshot, sealed = kept[version]
            if until_position is not None and snapshot.position > until_position:
                continue
            if snapshot_usable(snapshot, sealed, self._event_at(snapshot.position)):
                return snapshot
        return None

    async def verify_snapshots(self) -> list[SnapshotCheck]:
        """Every stored snapshot, checked against the log as it is now."""
        self._check_open()
        return [
            snapshot_check(snapshot, sealed, self._event_at(snapshot.position))
            for stream in sorted(self._snapshots)
            for _, (snapshot, sealed) in sorted(self._snapshots[stream].items())
        ]

    async def verify(self, checkpoints: Mapping[int, str] | None = None) -> VerifyReport:
        """Recompute the hash chain over the whole log (see `EventStore.verify`)."""
        self._check_open()
        return verify_chain(self._log, checkpoints)

    async def close(self) -> None:
        """Drop the log; further calls raise `StorageError`; subscriptions end."""
        self._closed = True
        self._log = []
        self._streams = {}
        self._by_id = {}
        self._snapshots = {}
        self.projections.clear()
        self._notifier.notify()


class MemoryProjections:
    """The projection port in dicts: a commit replaces rows and checkpoint in one step."""

    def __init__(self, store: MemoryEventStore) -> None:
        self._store = store
        self._held = HeldRows()

    def clear(self) -> None:
        self._held = HeldRows()

    async def commit(
        self,
        name: str,
        expected_checkpoint: int,
        new_checkpoint: int,
        upserts: Mapping[str, bytes],
        deletes: Collection[str] = (),
    ) -> None:
        """Apply `upserts` and `deletes` and move the checkpoint, all at once or not at all."""
        check_commit(name, expected_checkpoint, new_checkpoint, upserts, deletes)
        self._store._check_open()
        await asyncio.sleep(0)
        self._store._check_open()
        self._held.apply(name, expected_checkpoint, new_checkpoint, upserts, deletes)

    async def checkpoint(self, name: str) -> int:
        """The last position the projection has applied, 0 if none."""
        check_projection_name(name)
        self._store._check_open()
        return self._held.checkpoint(name)

    async def get(self, name: str, key: str) -> bytes | None:
        """One row of the projection's output, `None` if absent."""
        check_projection_name(name)
        self._store._check_open()
        return self._held.get(name, key)

    async def items(self, name: str, prefix: str = "") -> list[tuple[str, bytes]]:
        """The projection's rows whose key starts with `prefix`, sorted by key."""
        check_projection_name(name)
        self._store._check_open()
        return self._held.items(name, prefix)


class MemoryBlobs:
    """The blob port (`BlobStore`) in a dict, with the durable backends' rules."""

    def __init__(self, is_closed: Callable[[], bool]) -> None:
        self._blobs: dict[str, tuple[BlobInfo, bytes]] = {}
        self._is_closed = is_closed

    async def put(
        self, data: bytes, media_type: str = DEFAULT_MEDIA_TYPE, *, digest: str | None = None
    ) -> BlobInfo:
        raw, actual = checked_put(data, media_type, digest)
        check_open(self._is_closed())
        found = self._blobs.get(actual)
        info = BlobInfo(
            digest=actual,
            size=len(raw),
            media_type=found[0].media_type if found else media_type,
            stored_at=time.time(),
        )
        self._blobs[actual] = (info, found[1] if found else raw)
        return info

    async def get(self, digest: str) -> bytes:
        check_digest(digest)
        check_open(self._is_closed())
        found = self._blobs.get(digest)
        if found is None:
            raise BlobNotFoundError(digest)
        return checked_get(digest, found[1])

    async def info(self, digest: str) -> BlobInfo | None:
        check_digest(digest)
        check_open(self._is_closed())
        found = self._blobs.get(digest)
        return None if found is None else found[0]

    async def list(self) -> list[BlobInfo]:
        check_open(self._is_closed())
        return [self._blobs[d][0] for d in sorted(self._blobs)]

    async def delete(self, digest: str, stored_before: float | None = None) -> bool:
        check_digest(digest)
        check_open(self._is_closed())
        found = self._blobs.get(digest)
        if found is None or (stored_before is not None and found[0].stored_at >= stored_before):
            return False
        del self._blobs[digest]
        return True

    async def close(self) -> None:
        """Nothing to release: the blobs go with the store."""
