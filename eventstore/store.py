"""The ports every backend implements (the log, and the rows its projections keep beside
it); callers depend on these, never on a backend."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from typing import Protocol, runtime_checkable

from eventstore.blobs import BlobStore
from eventstore.model import (
    EventQuery,
    EventRow,
    NewEvent,
    Snapshot,
    SnapshotCheck,
    StoredEvent,
    VerifyReport,
)


@runtime_checkable
class ProjectionStore(Protocol):
    """Where projections keep their rows and checkpoints (the port each backend offers)."""

    async def commit(
        self,
        name: str,
        expected_checkpoint: int,
        new_checkpoint: int,
        upserts: Mapping[str, bytes],
        deletes: Collection[str] = (),
    ) -> None:
        """Write `upserts`, remove `deletes` and set the checkpoint to `new_checkpoint`, all
        in one transaction; raise `CheckpointConflictError` (changing nothing) if the
        stored checkpoint is not `expected_checkpoint`."""
        ...

    async def checkpoint(self, name: str) -> int:
        """The position of the last event the projection applied, 0 if none."""
        ...

    async def get(self, name: str, key: str) -> bytes | None:
        """One row, `None` if absent."""
        ...

    async def items(self, name: str, prefix: str = "") -> list[tuple[str, bytes]]:
        """The rows whose key starts with `prefix`, sorted by key."""
        ...


class EventStore(Protocol):
    """Append-only, globally ordered, hash-chained log of streams."""

    @property
    def blobs(self) -> BlobStore:
        """The content-addressed blobs beside the log (`eventstore.blobs`): where the
        large values its events refer to by digest are kept; closed with the store."""
        ...

    @property
    def projections(self) -> ProjectionStore:
        """Where projections keep their rows and checkpoints beside the log
        (`eventstore.projection`): SQLite in the log's file, JetStream in memory saved
        beside the stream, the memory store in dicts."""
        ...

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> list[StoredEvent]:
        """Append all of `events` to `stream` or none of them.

        `expected_version` is the stream's current last version (0 for a new stream);
        a mismatch raises `ConcurrencyError`. A batch whose event ids are all already
        stored in `stream` is a retry: it returns the stored events and changes nothing.
        Returns only once the events are durable.
        """
        ...

    async def read_stream(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[StoredEvent]:
        """A stream's events in version order, optionally only up to a global position."""
        ...

    async def read_stream_rows(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[EventRow]:
        """Like `read_stream`, but only (position, version, type, schema, data) per event:
        the lean read a replay (decode + fold) needs."""
        ...

    async def read_all(self, from_position: int = 1, limit: int | None = None) -> list[StoredEvent]:
        """Every stream's events in global order."""
        ...

    async def stream_version(self, stream: str) -> int:
        """The stream's last version, 0 if it has no events."""
        ...

    async def streams(self, prefix: str = "") -> list[str]:
        """Names of the streams that have events, sorted, filtered by prefix."""
        ...

    async def open_streams(self, prefix: str, closed_by: Collection[str]) -> list[str]:
        """Names of the streams with this prefix that hold no event of a type in
        `closed_by`, sorted: the ones still open, for an owner whose streams end with one
        of those types (a run's log with its ending). A backend answers it without
        reading the streams that are closed, so the cost follows the open ones, not the
        history."""
        ...

    async def query(self, query: EventQuery) -> list[StoredEvent]:
        """Events matching every filter in `query`, in global order."""
        ...

    async def last_position(self) -> int:
        """The global position of the newest event, 0 for an empty log."""
        ...

    def subscribe(self, from_position: int = 1) -> AsyncIterator[StoredEvent]:
        """Every event from `from_position` on, in global order: first the history, then
        each new append as it commits, with no gap and no duplicate at the hand-over.
        Runs until the consumer stops iterating or the store closes."""
        ...

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep a snapshot (replacing one of the same stream and version), bound to the
        chain: the store records the hash of the event at `snapshot.position` and a digest
        over both (`chain.seal_snapshot`). `InvalidEventError` if that position does not
        hold `snapshot.stream` at `snapshot.version`."""
        ...

    async def load_snapshot(
        self, stream: str, until_position: int | None = None
    ) -> Snapshot | None:
        """The stream's newest snapshot, or the newest at or before `until_position`, among
        those still bound to the log: one that does not verify (`chain.snapshot_problem`)
        is skipped with a logged warning, so the caller rebuilds from events instead."""
        ...

    async def verify_snapshots(self) -> list[SnapshotCheck]:
        """Every stored snapshot, each checked against the log as it is now."""
        ...

    async def verify(self, checkpoints: Mapping[int, str] | None = None) -> VerifyReport:
        """Recompute the hash chain over the whole log; with `checkpoints` (position ->
        hash, from signed checkpoints kept outside the store) also fail when the hash at a
        checkpointed position differs ("rewritten") or the log ends before the newest
        checkpoint ("truncated")."""
        ...

    async def close(self) -> None:
        """Release the backend's resources; further calls fail."""
        ...
