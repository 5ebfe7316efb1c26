"""An in-memory event store with the SQLite backend's exact semantics.

It exists so pure tests (the orchestrator's decide/evolve loop, projections, property
tests) can run thousands of examples without touching a disk, while the shared contract
suite keeps it honest against the durable backend. Nothing survives the process.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

from eventstore._common import check_append, check_limit, check_query, glob_to_regex
from eventstore.chain import GENESIS, event_hash, verify_chain
from eventstore.errors import ConcurrencyError, DuplicateEventError, StorageError
from eventstore.model import EventQuery, NewEvent, StoredEvent, VerifyReport

__all__ = ["MemoryEventStore"]


class MemoryEventStore:
    """An `EventStore` held in lists and dicts; appends are atomic because they never await
    between checking and writing."""

    def __init__(self) -> None:
        self._log: list[StoredEvent] = []
        self._streams: dict[str, list[StoredEvent]] = {}
        self._by_id: dict[str, StoredEvent] = {}
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the event store is closed")

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
        return self._append_now(stream, batch, expected_version)

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
            digest = event_hash(
                prev_hash,
                position + offset,
                stream,
                current + offset,
                event.event_id,
                event.type,
                event.data,
                recorded_at,
                event.correlation_id,
                event.causation_id,
                event.actor,
                event.trace_id,
                event.span_id,
            )
            stored.append(
                StoredEvent(
                    position=position + offset,
                    stream=stream,
                    version=current + offset,
                    event_id=event.event_id,
                    type=event.type,
                    data=event.data,
                    recorded_at=recorded_at,
                    correlation_id=event.correlation_id,
                    causation_id=event.causation_id,
                    actor=event.actor,
                    trace_id=event.trace_id,
                    span_id=event.span_id,
                    prev_hash=prev_hash,
                    hash=digest,
                )
            )
            prev_hash = digest
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

    async def query(self, query: EventQuery) -> list[StoredEvent]:
        """Events matching every filter in `query`, in global order."""
        self._check_open()
        check_query(query)
        source = self._log if query.stream is None else self._streams.get(query.stream, [])
        pattern = None if query.type_glob is None else glob_to_regex(query.type_glob)
        found: list[StoredEvent] = []
        for event in source:
            if query.limit is not None and len(found) >= query.limit:
                break
            if (
                event.position >= query.from_position
                and (query.correlation_id is None or event.correlation_id == query.correlation_id)
                and (query.actor is None or event.actor == query.actor)
                and (pattern is None or pattern.fullmatch(event.type) is not None)
            ):
                found.append(event)
        return found

    async def verify(self) -> VerifyReport:
        """Recompute the hash chain over the whole log."""
        self._check_open()
        return verify_chain(self._log)

    async def close(self) -> None:
        """Drop the log; further calls raise `StorageError`."""
        self._closed = True
        self._log = []
        self._streams = {}
        self._by_id = {}
