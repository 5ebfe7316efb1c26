"""The distributed event store: one NATS JetStream stream holds the whole log.

Layout
    * One JetStream stream (default `BATON_EVENTS`, file storage, `replicas` copies, no
      deletes, no purges, atomic batches and direct gets allowed) with one subject per
      event-store stream: `<prefix>.log.<token>`, where `<token>` is the stream name
      percent-encoded so that `.`, `*`, `>`, `%`, whitespace and every non-ASCII character
      become `%XX` (UTF-8 bytes): a stream name is always exactly one subject token.
    * The global position of an event is its JetStream stream sequence; the per-stream
      version is the `Baton-Version` header; the rest of the envelope (with the hash
      chain's `prev_hash` and `hash`, computed by `chain.seal` exactly as the other
      backends do) is the msgpack payload.
    * Snapshots live in a second stream, `<name>_SNAPSHOTS`, one subject per stream and
      version (`<prefix>.snap.<token>.<version>`, one message kept per subject).

Appends
    Every append names two expectations in its (first) message: `Nats-Expected-Last-
    Sequence` (the log's tail, because the next event's `prev_hash` is the tail's hash)
    and `Nats-Expected-Last-Subject-Sequence` (the sequence of the stream's last event,
    0 for a new stream: the per-stream optimistic-concurrency check). A batch of more than
    one event is a JetStream atomic batch (`Nats-Batch-Id`, `Nats-Batch-Sequence`,
    `Nats-Batch-Commit`; nats-server >= 2.12): the server stores all of it or none of it.
    When the server answers "wrong last sequence", this store catches up with the log
    and decides again: a changed stream is a `ConcurrencyError`, a moved tail (another
    stream was appended to) is retried with the fresh tail.

    JetStream deduplicates `Nats-Msg-Id` only within its duplicate window (two minutes
    by default), so idempotency is the store's own: it keeps an index of every stored
    `event_id` (built by reading the log at open and kept current by catching up before
    deciding), and because each append also expects the exact tail it checked against,
    the check and the write are one atomic step even across processes.

Durability
    JetStream does not fsync per message by default (`sync_interval` is about two
    minutes). Run every nats-server that holds this stream with

        jetstream { sync_interval: always }

    (Baton's `EmbeddedNats` does), or an acknowledged append can be lost on an OS crash
    or power loss. In a cluster, `replicas=3` makes the log survive the loss of a node.

Limits (see also the module's notes in `JetStreamEventStore`)
    * One atomic batch holds at most 1000 messages (a server limit), so an append of more
      than `MAX_BATCH` events is refused with `InvalidEventError`.
    * The event-id index and the per-stream position lists are held in memory (a few
      dozen bytes per event) and opening reads the whole log once.
    * Reads use direct gets; with replicas > 1 a follower may answer and lag behind the
      leader, so a read is guaranteed to include this store's own acknowledged appends
      (it waits for them) but may miss another process's newest ones for a moment.
    * Anyone allowed to publish on `<prefix>.log.>` can put a message in the log that
      this store did not write; `verify()` will name it. Restrict those subjects to the
      store's credentials.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, Final
from urllib.parse import quote, unquote

import msgspec
import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import api

from eventstore._common import (
    check_append,
    check_limit,
    check_query,
    check_snapshot,
    check_stream,
    matcher,
)
from eventstore._subscription import Notifier, catch_up
from eventstore.chain import GENESIS, ChainVerifier, seal
from eventstore.errors import (
    ConcurrencyError,
    DuplicateEventError,
    InvalidEventError,
    StorageError,
)
from eventstore.model import EventQuery, EventRow, NewEvent, Snapshot, StoredEvent, VerifyReport

__all__ = ["MAX_BATCH", "JetStreamEventStore", "decode_stream_token", "encode_stream_token"]

MAX_BATCH: Final = 1000
"""The most events one append may carry: nats-server's limit for one atomic batch."""

VERSION_HEADER: Final = "Baton-Version"
_WRONG_LAST_SEQUENCE: Final = 10071
_READ_CHUNK: Final = 1000
_READ_MAX_BYTES: Final = 8 * 1024 * 1024
_MAX_TAIL_RETRIES: Final = 1000
# Characters kept as they are in a subject token; everything else is %XX-encoded.
_SAFE: Final = "-_~/:=@+,!$&'()[]{}|^;?#"
_NATS_ERRORS: Final = (nats.errors.Error, asyncio.TimeoutError, OSError)


class _Body(msgspec.Struct, array_like=True, frozen=True):
    """The payload of one log message: the envelope except position and version."""

    stream: str
    event_id: str
    type: str
    data: bytes
    schema: int
    recorded_at: float
    correlation_id: str
    causation_id: str
    actor: str
    trace_id: str
    span_id: str
    prev_hash: str
    hash: str


class _SnapshotBody(msgspec.Struct, array_like=True, frozen=True):
    stream: str
    version: int
    position: int
    data: bytes
    schema: int


_BODY_ENCODER: Final = msgspec.msgpack.Encoder()
_BODY_DECODER: Final = msgspec.msgpack.Decoder(_Body)
_SNAPSHOT_DECODER: Final = msgspec.msgpack.Decoder(_SnapshotBody)


def encode_stream_token(stream: str) -> str:
    """One subject token for `stream`: `.`, `*`, `>`, `%`, whitespace and non-ASCII
    characters are percent-encoded (UTF-8), so no name can change the subject's shape."""
    return quote(stream, safe=_SAFE).replace(".", "%2E")


def decode_stream_token(token: str) -> str:
    """The stream name `encode_stream_token` turned into `token`."""
    return unquote(token, errors="strict")


def _storage_error(action: str, error: BaseException) -> StorageError:
    failure = StorageError(f"{action} failed: {error!r}")
    failure.__cause__ = error
    return failure


def _body_of(event: StoredEvent) -> _Body:
    return _Body(
        stream=event.stream,
        event_id=event.event_id,
        type=event.type,
        data=event.data,
        schema=event.schema,
        recorded_at=event.recorded_at,
        correlation_id=event.correlation_id,
        causation_id=event.causation_id,
        actor=event.actor,
        trace_id=event.trace_id,
        span_id=event.span_id,
        prev_hash=event.prev_hash,
        hash=event.hash,
    )


class JetStreamEventStore:
    """An `EventStore` kept in one NATS JetStream stream (see the module docs).

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
    ) -> None:
        self._nc = nc
        self._js = nc.jetstream(timeout=timeout)
        self._owns_connection = owns_connection
        self._name = stream_name
        self._snap_name = f"{stream_name}_SNAPSHOTS"
        self._prefix = subject_prefix
        self._log_prefix = f"{subject_prefix}.log."
        self._snap_prefix = f"{subject_prefix}.snap."
        self._timeout = timeout
        self._replicas = 1
        self._closed = False
        self._append_lock = asyncio.Lock()
        self._refresh_lock = asyncio.Lock()
        # What this store knows of the log: a prefix of it, up to `_tail`.
        self._tail = 0
        self._tail_hash = GENESIS
        self._ids: dict[str, int] = {}
        self._positions: dict[str, list[int]] = {}
        self._snapshots_ready = False
        self._notifier = Notifier()

    # -- opening and closing ----------------------------------------------------------

    @classmethod
    async def open(
        cls,
        url_or_client: str | NATS,
        stream_name: str = "BATON_EVENTS",
        replicas: int = 1,
        *,
        subject_prefix: str = "baton",
        timeout: float = 5.0,
    ) -> JetStreamEventStore:
        """Connect (or use the given connected client), create the stream if missing and
        read the log once to build the event-id index.

        A client passed in stays the caller's: `close()` leaves it open. The server must
        run JetStream with `sync_interval: always` for acknowledged appends to be durable.
        """
        if not stream_name or any(c in stream_name for c in ".*> \t\r\n/\\"):
            raise InvalidEventError(f"invalid JetStream stream name {stream_name!r}")
        if not subject_prefix or any(c in subject_prefix for c in "*> \t\r\n"):
            raise InvalidEventError(f"invalid subject prefix {subject_prefix!r}")
        if replicas < 1:
            raise InvalidEventError(f"replicas must be >= 1, got {replicas!r}")
        owns = isinstance(url_or_client, str)
        try:
            if isinstance(url_or_client, str):
                nc = await nats.connect(
                    url_or_client,
                    connect_timeout=max(1, int(timeout)),
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=0.5,
                )
            else:
                nc = url_or_client
        except _NATS_ERRORS as error:
            raise _storage_error(f"connecting to {url_or_client!r}", error) from error
        store = cls(
            nc,
            owns_connection=owns,
            stream_name=stream_name,
            subject_prefix=subject_prefix,
            timeout=timeout,
        )
        store._replicas = replicas
        try:
            await store._ensure_stream()
            await store._refresh()
        except BaseException:
            await store.close()
            raise
        return store

    async def _ensure_stream(self) -> None:
        config = api.StreamConfig(
            name=self._name,
            subjects=[f"{self._log_prefix}>"],
            storage=api.StorageType.FILE,
            num_replicas=self._replicas,
            retention=api.RetentionPolicy.LIMITS,
            discard=api.DiscardPolicy.NEW,
            deny_delete=True,
            deny_purge=True,
            allow_direct=True,
            allow_atomic=True,
        )
        try:
            info = await self._js.stream_info(self._name)
        except nats.js.errors.NotFoundError:
            info = None
        except _NATS_ERRORS as error:
            raise _storage_error("looking up the JetStream stream", error) from error
        try:
            if info is None:
                await self._js.add_stream(config)
            elif not (info.config.allow_atomic and info.config.allow_direct):
                updated = info.config.evolve(allow_atomic=True, allow_direct=True)
                await self._js.update_stream(updated)
        except _NATS_ERRORS as error:
            raise _storage_error("creating the JetStream stream", error) from error

    async def _ensure_snapshot_stream(self) -> None:
        if self._snapshots_ready:
            return
        config = api.StreamConfig(
            name=self._snap_name,
            subjects=[f"{self._snap_prefix}>"],
            storage=api.StorageType.FILE,
            num_replicas=self._replicas,
            max_msgs_per_subject=1,
            allow_direct=True,
        )
        try:
            await self._js.stream_info(self._snap_name)
        except nats.js.errors.NotFoundError:
            await self._js.add_stream(config)
        self._snapshots_ready = True

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the event store is closed")

    async def close(self) -> None:
        """Stop subscriptions and, if the store opened the connection, close it."""
        if self._closed:
            return
        self._closed = True
        self._notifier.notify()
        self._ids = {}
        self._positions = {}
        if self._owns_connection:
            with contextlib.suppress(*_NATS_ERRORS):
                await asyncio.wait_for(self._nc.close(), self._timeout)

    # -- the log as messages ----------------------------------------------------------

    def _subject(self, stream: str) -> str:
        return self._log_prefix + encode_stream_token(stream)

    def _decode(self, msg: Msg) -> StoredEvent:
        headers = msg.headers or {}
        try:
            position = int(headers["Nats-Sequence"])
            version = int(headers[VERSION_HEADER])
            body = _BODY_DECODER.decode(msg.data)
        except (KeyError, ValueError, msgspec.DecodeError) as error:
            where = headers.get("Nats-Sequence", "?")
            raise StorageError(
                f"message {where} of JetStream stream {self._name} is not a Baton event: {error}"
            ) from error
        return StoredEvent(
            position=position,
            stream=body.stream,
            version=version,
            event_id=body.event_id,
            type=body.type,
            data=body.data,
            schema=body.schema,
            recorded_at=body.recorded_at,
            correlation_id=body.correlation_id,
            causation_id=body.causation_id,
            actor=body.actor,
            trace_id=body.trace_id,
            span_id=body.span_id,
            prev_hash=body.prev_hash,
            hash=body.hash,
        )

    async def _direct_batch(
        self, stream_name: str, start: int, subject: str, batch: int = _READ_CHUNK
    ) -> list[Msg]:
        """Up to `batch` stored messages on `subject` (wildcards allowed) from sequence
        `start` on, in one direct-get request."""
        inbox = self._nc.new_inbox()
        request = {
            "seq": max(start, 1),
            "batch": batch,
            "next_by_subj": subject,
            "max_bytes": _READ_MAX_BYTES,
        }
        found: list[Msg] = []
        try:
            sub = await self._nc.subscribe(inbox)
            try:
                await self._nc.publish(
                    f"$JS.API.DIRECT.GET.{stream_name}", json.dumps(request).encode(), reply=inbox
                )
                while True:
                    msg = await sub.next_msg(timeout=self._timeout)
                    status = msg.headers.get("Status") if msg.headers else None
                    if status is None:
                        found.append(msg)
                    elif status in ("204", "404"):  # end of batch / nothing there
                        return found
                    else:
                        description = (msg.headers or {}).get("Description", "")
                        raise StorageError(f"direct get on {stream_name}: {status} {description}")
            finally:
                with contextlib.suppress(*_NATS_ERRORS):
                    await sub.unsubscribe()
        except _NATS_ERRORS as error:
            raise _storage_error(f"reading JetStream stream {stream_name}", error) from error

    async def _scan(
        self, start: int, subject: str | None = None, stop: int | None = None
    ) -> AsyncIterator[StoredEvent]:
        """The log's events on `subject` (default: all) with positions from `start` to
        `stop` (default: the end), in order, read in chunks."""
        subject = subject or f"{self._log_prefix}>"
        position = max(start, 1)
        while stop is None or position <= stop:
            msgs = await self._direct_batch(self._name, position, subject)
            if not msgs:
                return
            for msg in msgs:
                event = self._decode(msg)
                if stop is not None and event.position > stop:
                    return
                yield event
                position = event.position + 1

    async def _collect(
        self, start: int, subject: str | None = None, stop: int | None = None
    ) -> list[StoredEvent]:
        return [event async for event in self._scan(start, subject, stop)]

    def _learn(self, event: StoredEvent) -> None:
        if event.position != self._tail + 1:
            raise StorageError(
                f"JetStream stream {self._name} has a gap: position {event.position} "
                f"follows {self._tail}"
            )
        self._tail = event.position
        self._tail_hash = event.hash
        self._ids[event.event_id] = event.position
        self._positions.setdefault(event.stream, []).append(event.position)

    async def _refresh(self) -> None:
        """Catch the index up with the log."""
        async with self._refresh_lock:
            async for event in self._scan(self._tail + 1):
                self._learn(event)

    async def _server_tail(self) -> int:
        try:
            info = await self._js.stream_info(self._name)
        except _NATS_ERRORS as error:
            raise _storage_error("reading the JetStream stream's state", error) from error
        return int(info.state.last_seq)

    # -- appends ----------------------------------------------------------------------

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> list[StoredEvent]:
        """Append all of `events` to `stream` or none of them (see `EventStore.append`)."""
        batch = tuple(events)
        check_append(stream, batch, expected_version)
        self._check_open()
        if not batch:
            return []
        if len(batch) > MAX_BATCH:
            raise InvalidEventError(
                f"an append to JetStream holds at most {MAX_BATCH} events, got {len(batch)}"
            )
        async with self._append_lock:
            self._check_open()
            return await self._append_locked(stream, batch, expected_version)

    async def _append_locked(
        self, stream: str, batch: tuple[NewEvent, ...], expected_version: int
    ) -> list[StoredEvent]:
        refreshed = False
        unknown_outcomes = 0
        for _ in range(_MAX_TAIL_RETRIES):
            known = [e.event_id for e in batch if e.event_id in self._ids]
            if known:
                return await self._stored_retry(stream, batch, known)
            positions = self._positions.get(stream, [])
            if len(positions) != expected_version:
                if not refreshed:  # the index may be behind another process's appends
                    await self._refresh()
                    refreshed = True
                    continue
                raise ConcurrencyError(stream, expected_version, len(positions))
            try:
                return await self._publish(stream, batch, positions)
            except _TailMoved:
                await self._refresh()
                refreshed = True
            except _Unknown as unknown:
                # The reply was lost: the batch may or may not be stored (or may still land).
                # Catch up and go round again: either its ids are now in the log (a retry
                # that returns them) or the same expected tail makes exactly one of the
                # two attempts land.
                unknown_outcomes += 1
                try:
                    if unknown_outcomes > 2:
                        raise unknown.error
                    await self._refresh()
                except StorageError as error:
                    raise StorageError(
                        f"{error}; the append's outcome is unknown: retry it with the same "
                        "event ids, which returns the stored events if it landed"
                    ) from error
                refreshed = True
        raise StorageError(f"append to {stream!r}: the log's tail kept moving; try again")

    async def _stored_retry(
        self, stream: str, batch: tuple[NewEvent, ...], known: list[str]
    ) -> list[StoredEvent]:
        if len(known) != len(batch):
            raise DuplicateEventError(stream, known)
        wanted = {self._ids[i] for i in known}
        found = {
            e.position: e
            for e in await self._collect(min(wanted), self._subject(stream), max(wanted))
            if e.position in wanted
        }
        if len(found) != len(wanted):  # some ids are stored in another stream
            raise DuplicateEventError(stream, known)
        return [found[self._ids[e.event_id]] for e in batch]

    async def _publish(
        self, stream: str, batch: tuple[NewEvent, ...], positions: list[int]
    ) -> list[StoredEvent]:
        subject = self._subject(stream)
        tail, prev_hash = self._tail, self._tail_hash
        version = len(positions)
        recorded_at = time.time()
        stored: list[StoredEvent] = []
        payloads: list[tuple[bytes, dict[str, str]]] = []
        for offset, event in enumerate(batch, start=1):
            sealed = seal(
                event,
                stream=stream,
                position=tail + offset,
                version=version + offset,
                recorded_at=recorded_at,
                prev_hash=prev_hash,
            )
            payloads.append(
                (_BODY_ENCODER.encode(_body_of(sealed)), {VERSION_HEADER: str(sealed.version)})
            )
            stored.append(sealed)
            prev_hash = sealed.hash
        first = payloads[0][1]
        first["Nats-Expected-Last-Sequence"] = str(tail)
        first["Nats-Expected-Last-Subject-Sequence"] = str(positions[-1] if positions else 0)
        if len(payloads) > 1:
            batch_id = uuid.uuid4().hex
            for number, (_, headers) in enumerate(payloads, start=1):
                headers["Nats-Batch-Id"] = batch_id
                headers["Nats-Batch-Sequence"] = str(number)
            payloads[-1][1]["Nats-Batch-Commit"] = "1"
        try:
            for data, headers in payloads[:-1]:
                await self._nc.publish(subject, data, headers=headers)
            data, headers = payloads[-1]
            reply = await self._nc.request(subject, data, headers=headers, timeout=self._timeout)
        except nats.errors.MaxPayloadError as error:
            raise _storage_error(f"append to {stream!r} (an event is too large)", error) from error
        except _NATS_ERRORS as error:
            raise _Unknown(_storage_error(f"append to {stream!r}", error)) from error
        ack = _parse_ack(reply, stream)
        if ack != tail + len(batch):
            await self._refresh()
            raise StorageError(
                f"append to {stream!r}: JetStream stored it at {ack}, expected {tail + len(batch)}"
            )
        for entry in stored:
            self._learn(entry)
        self._notifier.notify()
        return stored

    # -- reads ------------------------------------------------------------------------

    async def read_stream_rows(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[EventRow]:
        """Like `read_stream`, but only (position, version, type, schema, data) per event."""
        events = await self.read_stream(stream, from_version, until_position)
        return [(e.position, e.version, e.type, e.schema, e.data) for e in events]

    async def read_stream(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[StoredEvent]:
        """A stream's events in version order, optionally only up to a global position."""
        self._check_open()
        check_stream(stream)
        known = self._positions.get(stream, [])
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
        deadline = time.monotonic() + self._timeout
        while True:
            events = await self._collect(start, self._subject(stream), until_position)
            last = events[-1].position if events else start - 1
            if last >= target:
                return [e for e in events if e.version >= from_version]
            await self._lagging(deadline, target)

    def _lagging(self, deadline: float, target: int) -> Awaitable[None]:
        """A replica that is behind answered a read: wait for it to reach `target`."""
        if time.monotonic() > deadline:
            raise StorageError(
                f"JetStream stream {self._name} did not show position {target}, "
                "which this store appended, in time"
            )
        return asyncio.sleep(0.005)

    async def read_all(self, from_position: int = 1, limit: int | None = None) -> list[StoredEvent]:
        """Every stream's events in global order."""
        self._check_open()
        check_limit(limit)
        start = max(from_position, 1)
        if limit == 0:
            return []
        stop = None if limit is None else start + limit - 1
        deadline = time.monotonic() + self._timeout
        while True:
            events = await self._collect(start, None, stop)
            last = events[-1].position if events else start - 1
            target = self._tail if stop is None else min(self._tail, stop)
            if last >= target:
                return events
            await self._lagging(deadline, target)

    async def stream_version(self, stream: str) -> int:
        """The stream's last version, 0 if it has no events."""
        self._check_open()
        check_stream(stream)
        msgs = await self._last_by_subject(self._name, self._subject(stream))
        server = int((msgs.headers or {}).get(VERSION_HEADER, "0")) if msgs else 0
        return max(server, len(self._positions.get(stream, [])))

    async def _last_by_subject(self, stream_name: str, subject: str) -> Msg | None:
        try:
            msg = await self._nc.request(
                f"$JS.API.DIRECT.GET.{stream_name}.{subject}", b"", timeout=self._timeout
            )
        except nats.errors.NoRespondersError:
            return None
        except _NATS_ERRORS as error:
            raise _storage_error(f"reading JetStream stream {stream_name}", error) from error
        status = msg.headers.get("Status") if msg.headers else None
        if status == "404":
            return None
        if status is not None:
            raise StorageError(f"direct get on {stream_name}: {status}")
        return msg

    async def streams(self, prefix: str = "") -> list[str]:
        """Names of the streams that have events, sorted, filtered by prefix."""
        self._check_open()
        try:
            info = await self._js.stream_info(self._name, subjects_filter=f"{self._log_prefix}>")
        except _NATS_ERRORS as error:
            raise _storage_error("listing streams", error) from error
        names = {
            decode_stream_token(subject[len(self._log_prefix) :])
            for subject in (info.state.subjects or {})
        }
        names.update(self._positions)
        return sorted(name for name in names if name.startswith(prefix))

    async def query(self, query: EventQuery) -> list[StoredEvent]:
        """Events matching every filter in `query`, in global order."""
        self._check_open()
        check_query(query)
        if query.limit == 0:
            return []
        subject = None
        if query.stream is not None:
            subject = self._subject(check_stream(query.stream))
        matches = matcher(query)
        found: list[StoredEvent] = []
        async for event in self._scan(query.from_position, subject, query.to_position):
            if matches(event):
                found.append(event)
                if query.limit is not None and len(found) >= query.limit:
                    break
        return found

    async def last_position(self) -> int:
        """The global position of the newest event, 0 for an empty log."""
        self._check_open()
        return max(await self._server_tail(), self._tail)

    def subscribe(self, from_position: int = 1) -> AsyncIterator[StoredEvent]:
        """Every event from `from_position` on, in global order: the history, then each
        new append (see `EventStore.subscribe`). Events are read by position only (direct
        gets of the contiguous log), so nothing is skipped or repeated at the hand-over; a
        core-NATS subscription on the log's subjects only wakes the reader when any
        process appends, and a poll every second covers a wakeup lost in a reconnect."""
        self._check_open()
        return self._follow(from_position)

    async def _follow(self, from_position: int) -> AsyncIterator[StoredEvent]:
        async def wake(_: Msg) -> None:
            self._notifier.notify()

        try:
            sub = await self._nc.subscribe(f"{self._log_prefix}>", cb=wake)
        except _NATS_ERRORS as error:
            raise _storage_error("subscribing to the log", error) from error
        try:
            async for event in catch_up(
                self._read_committed,
                self._notifier,
                from_position,
                lambda: self._closed,
                poll_seconds=1.0,
            ):
                yield event
        finally:
            with contextlib.suppress(*_NATS_ERRORS):
                await sub.unsubscribe()

    async def _read_committed(self, position: int, limit: int) -> list[StoredEvent]:
        events = await self.read_all(position, limit)
        if events and events[0].position != position:
            raise StorageError(
                f"the log has a gap: position {events[0].position} after {position - 1}"
            )
        return events

    # -- snapshots --------------------------------------------------------------------

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep a snapshot (replacing one of the same stream and version)."""
        check_snapshot(snapshot)
        self._check_open()
        subject = f"{self._snap_prefix}{encode_stream_token(snapshot.stream)}.{snapshot.version}"
        body = _SnapshotBody(
            stream=snapshot.stream,
            version=snapshot.version,
            position=snapshot.position,
            data=snapshot.data,
            schema=snapshot.schema,
        )
        try:
            await self._ensure_snapshot_stream()
            await self._js.publish(subject, _BODY_ENCODER.encode(body), stream=self._snap_name)
        except _NATS_ERRORS as error:
            raise _storage_error("saving a snapshot", error) from error

    async def load_snapshot(
        self, stream: str, until_position: int | None = None
    ) -> Snapshot | None:
        """The stream's newest snapshot, or the newest at or before `until_position`."""
        self._check_open()
        check_stream(stream)
        prefix = f"{self._snap_prefix}{encode_stream_token(stream)}."
        try:
            info = await self._js.stream_info(self._snap_name, subjects_filter=f"{prefix}*")
        except nats.js.errors.NotFoundError:
            return None
        except _NATS_ERRORS as error:
            raise _storage_error("listing snapshots", error) from error
        versions = sorted(
            (int(s[len(prefix) :]) for s in (info.state.subjects or {})), reverse=True
        )
        for version in versions:
            msg = await self._last_by_subject(self._snap_name, f"{prefix}{version}")
            if msg is None:
                continue
            body = _SNAPSHOT_DECODER.decode(msg.data)
            if until_position is None or body.position <= until_position:
                return Snapshot(
                    stream=body.stream,
                    version=body.version,
                    position=body.position,
                    data=body.data,
                    schema=body.schema,
                )
        return None

    # -- audit ------------------------------------------------------------------------

    async def verify(self) -> VerifyReport:
        """Recompute the hash chain over the whole log, in chunks."""
        self._check_open()
        verifier = ChainVerifier()
        position = 1
        while not verifier.settled:
            msgs = await self._direct_batch(self._name, position, f"{self._log_prefix}>")
            if not msgs:
                break
            events: list[StoredEvent] = []
            for msg in msgs:
                try:
                    events.append(self._decode(msg))
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


class _TailMoved(Exception):
    """JetStream refused an append because the log or the stream moved on."""


class _Unknown(Exception):
    """The append's outcome is unknown (the reply was lost)."""

    def __init__(self, error: StorageError) -> None:
        super().__init__(str(error))
        self.error = error


def _parse_ack(reply: Msg, stream: str) -> int:
    try:
        answer: dict[str, Any] = json.loads(reply.data)
    except ValueError as error:
        raise StorageError(f"append to {stream!r}: unreadable JetStream reply") from error
    failure = answer.get("error")
    if failure:
        if failure.get("err_code") == _WRONG_LAST_SEQUENCE:
            raise _TailMoved()
        raise StorageError(f"append to {stream!r}: JetStream refused it: {failure}")
    return int(answer["seq"])
