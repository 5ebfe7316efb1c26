"""The read side: reads, queries, subscriptions and the chain audit, all by direct gets.

With replicas > 1 a follower may answer a direct get and lag behind the leader, so a read
waits until it includes this store's own acknowledged appends (the index knows them), but
may miss another process's newest ones for a moment.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterator, Mapping
from typing import Final

from nats.aio.msg import Msg

from eventstore._common import (
    check_limit,
    check_open,
    check_query,
    check_stream,
    event_rows,
    matcher,
)
from eventstore._subscription import Notifier, catch_up
from eventstore.chain import ChainVerifier
from eventstore.errors import StorageError
from eventstore.jetstream.index import LogIndex
from eventstore.jetstream.log import NATS_ERRORS, JetStreamLog, storage_error
from eventstore.jetstream.lookup import candidates, narrows
from eventstore.jetstream.schema import VERSION_HEADER, decode_stream_token
from eventstore.model import EventQuery, EventRow, StoredEvent, VerifyReport

_SPAN_GAP: Final = 64
"""Wanted positions at most this far apart are read in one request, through the events
between them, rather than in one request each."""
_SPAN_MAX: Final = 1000
"""The most positions one request reads (a direct-get batch)."""


def _spans(wanted: Iterator[int]) -> Iterator[list[int]]:
    """`wanted` (ascending) cut into runs read by one request each, pulled lazily so a
    query that reaches its limit stops early."""
    span: list[int] = []
    for position in wanted:
        if span and (position - span[-1] > _SPAN_GAP or position - span[0] >= _SPAN_MAX):
            yield span
            span = []
        span.append(position)
    if span:
        yield span


class LogReader:
    """The reads of `log`; each method is the `EventStore` method of the same name.
    `index` holds what this store appended, which every read must include; `notifier`
    wakes subscribers and `is_closed` ends them."""

    def __init__(
        self,
        log: JetStreamLog,
        index: LogIndex,
        notifier: Notifier,
        is_closed: Callable[[], bool],
    ) -> None:
        self._log = log
        self._index = index
        self._notifier = notifier
        self._is_closed = is_closed

    def _check_open(self) -> None:
        check_open(self._is_closed())

    async def read_stream_rows(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[EventRow]:
        return event_rows(await self.read_stream(stream, from_version, until_position))

    async def read_stream(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[StoredEvent]:
        self._check_open()
        check_stream(stream)
        known = self._index.positions.get(stream, [])
        from_version = max(from_version, 1)
        # Positions never move, so a known version's position is a safe place to start.
        start = (
            known[from_version - 1]
            if from_version <= len(known)
            else (known[-1] + 1 if known else 1)
        )
        # The last of this store's own known events the answer must include.
        upto = len(known) if until_position is None else bisect.bisect_right(known, until_position)
        target = known[upto - 1] if upto else 0
        deadline = time.monotonic() + self._log.timeout
        while True:
            events = await self._log.collect(
                start, self._log.layout.subject(stream), until_position
            )
            last = events[-1].position if events else start - 1
            if last >= target:
                return [e for e in events if e.version >= from_version]
            await self._lagging(deadline, target)

    def _lagging(self, deadline: float, target: int) -> Awaitable[None]:
        """A replica that is behind answered a read: wait for it to reach `target`."""
        if time.monotonic() > deadline:
            raise StorageError(
                f"JetStream stream {self._log.layout.name} did not show position {target}, "
                "which this store appended, in time"
            )
        return asyncio.sleep(0.005)

    async def read_all(self, from_position: int = 1, limit: int | None = None) -> list[StoredEvent]:
        self._check_open()
        check_limit(limit)
        start = max(from_position, 1)
        if limit == 0:
            return []
        stop = None if limit is None else start + limit - 1
        deadline = time.monotonic() + self._log.timeout
        while True:
            events = await self._log.collect(start, None, stop)
            last = events[-1].position if events else start - 1
            tail = self._index.tail
            target = tail if stop is None else min(tail, stop)
            if last >= target:
                return events
            await self._lagging(deadline, target)

    async def stream_version(self, stream: str) -> int:
        self._check_open()
        check_stream(stream)
        layout = self._log.layout
        msgs = await self._log.last_by_subject(layout.name, layout.subject(stream))
        server = int((msgs.headers or {}).get(VERSION_HEADER, "0")) if msgs else 0
        return max(server, len(self._index.positions.get(stream, [])))

    async def streams(self, prefix: str = "") -> list[str]:
        self._check_open()
        log_prefix = self._log.layout.log_prefix
        try:
            info = await self._log.js.stream_info(
                self._log.layout.name, subjects_filter=f"{log_prefix}>"
            )
        except NATS_ERRORS as error:
            raise storage_error("listing streams", error) from error
        names = {
            decode_stream_token(subject[len(log_prefix) :])
            for subject in (info.state.subjects or {})
        }
        names.update(self._index.positions)
        return sorted(name for name in names if name.startswith(prefix))

    async def open_streams(self, prefix: str, closed_by: Collection[str]) -> list[str]:
        # From the index, once caught up: it keeps the positions of each type's events,
        # so a stream is closed when one of its positions is a closing event's. Nothing is
        # read per stream (a log of many finished runs costs no round trip per run).
        self._check_open()
        await self._index.refresh()
        closing: set[int] = set()
        for kind in closed_by:
            closing.update(self._index.types.get(kind, ()))
        return sorted(
            name
            for name, positions in self._index.positions.items()
            if name.startswith(prefix) and not any(p in closing for p in reversed(positions))
        )

    async def query(self, query: EventQuery) -> list[StoredEvent]:
        self._check_open()
        check_query(query)
        if query.stream is not None:
            check_stream(query.stream)
        if query.limit == 0:
            return []
        matches = matcher(query)
        found: list[StoredEvent] = []
        async for event in self._query_events(query):
            if matches(event):
                found.append(event)
                if query.limit is not None and len(found) >= query.limit:
                    break
        return found

    async def _query_events(self, query: EventQuery) -> AsyncIterator[StoredEvent]:
        """Events in position order, among them every one `query` matches: only the
        positions the index allows when the query has an indexed filter (the index caught
        up first, so the answer is the log's as of now, as a scan's would be), else the log
        from `from_position` on."""
        if not narrows(query):
            subject = None if query.stream is None else self._log.layout.subject(query.stream)
            async for event in self._log.scan(query.from_position, subject, query.to_position):
                yield event
            return
        await self._index.refresh()
        for span in _spans(candidates(self._index, query)):
            for event in await self._read_span(span):
                yield event

    async def _read_span(self, span: list[int]) -> list[StoredEvent]:
        """The events at the ascending positions `span` (all known to the index), read
        through from its first to its last position with direct gets."""
        wanted = set(span)
        last = span[-1]
        position = span[0]
        found: list[StoredEvent] = []
        deadline = time.monotonic() + self._log.timeout
        layout = self._log.layout
        while position <= last:
            msgs = await self._log.direct_batch(
                layout.name, position, f"{layout.log_prefix}>", last - position + 1
            )
            moved = False
            for msg in msgs:
                event = self._log.decode(msg)
                if event.position > last:
                    break
                if event.position in wanted:
                    found.append(event)
                position = event.position + 1
                moved = True
            if not moved:  # a replica behind the index answered
                await self._lagging(deadline, last)
        return found

    async def last_position(self) -> int:
        self._check_open()
        return max(await self._log.server_tail(), self._index.tail)

    def subscribe(self, from_position: int) -> AsyncIterator[StoredEvent]:
        self._check_open()
        return self._follow(from_position)

    async def _follow(self, from_position: int) -> AsyncIterator[StoredEvent]:
        async def wake(_: Msg) -> None:
            self._notifier.notify()

        try:
            sub = await self._log.nc.subscribe(f"{self._log.layout.log_prefix}>", cb=wake)
        except NATS_ERRORS as error:
            raise storage_error("subscribing to the log", error) from error
        try:
            async for event in catch_up(
                self._read_committed,
                self._notifier,
                from_position,
                self._is_closed,
                poll_seconds=1.0,
            ):
                yield event
        finally:
            with contextlib.suppress(*NATS_ERRORS):
                await sub.unsubscribe()

    async def _read_committed(self, position: int, limit: int) -> list[StoredEvent]:
        events = await self.read_all(position, limit)
        if events and events[0].position != position:
            raise StorageError(
                f"the log has a gap: position {events[0].position} after {position - 1}"
            )
        return events

    async def verify(self, checkpoints: Mapping[int, str] | None = None) -> VerifyReport:
        self._check_open()
        layout = self._log.layout
        verifier = ChainVerifier(checkpoints)
        position = 1
        while not verifier.settled:
            msgs = await self._log.direct_batch(layout.name, position, f"{layout.log_prefix}>")
            if not msgs:
                break
            events: list[StoredEvent] = []
            for msg in msgs:
                try:
                    events.append(self._log.decode(msg))
                except StorageError as error:
                    seq = int((msg.headers or {}).get("Nats-Sequence", position))
                    verifier.feed(events)
                    report = verifier.finish()
                    return VerifyReport(
                        ok=False,
                        checked=report.checked,
                        first_bad_position=report.first_bad_position or seq,
                        reason=report.reason or f"changed: {error}",
                    )
            verifier.feed(events)
            position = events[-1].position + 1
        return verifier.finish()
