"""The append path: one atomic batch publish per append, with the expected sequences that
make the check and the write one step.

Every append names two expectations in its (first) message: `Nats-Expected-Last-Sequence`
(the log's tail, because the next event's `prev_hash` is the tail's hash) and
`Nats-Expected-Last-Subject-Sequence` (the sequence of the stream's last event, 0 for a new
stream: the per-stream optimistic-concurrency check). A batch of more than one event is a
JetStream atomic batch (`Nats-Batch-Id`, `Nats-Batch-Sequence`, `Nats-Batch-Commit`;
nats-server >= 2.12): the server stores all of it or none of it. When the server answers
"wrong last sequence", the writer catches the index up with the log and decides again: a
changed stream is a `ConcurrencyError`, a moved tail (another stream was appended to) is
retried with the fresh tail.

A leader failover (the stream's leader node died: nats-server's followers wait 4-9 s
before they elect another, a bound it does not let us configure) and a reconnect to
another node are ridden out here: an append that found no leader, or whose reply was
lost, is tried again, every `FAILOVER_PAUSE_S`, for up to `FAILOVER_WAIT_S`, and the
caller only sees a slow append. An append still waiting for its reply when the server
announces a new leader is sent again at once: the leader that stepped down (a node
stopped in order) does not answer what it had not stored, and waiting for the reply's
timeout would stall the log for that long. Retrying is safe: the retry names the same expected tail,
so at most one copy lands, and one that did land is found by its event ids. The pause
leaves one line (`failover.FailoverNotes`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Final

import nats.errors
from nats.aio.msg import Msg

from eventstore._common import check_open
from eventstore._subscription import Notifier
from eventstore.chain import seal
from eventstore.errors import (
    ConcurrencyError,
    DuplicateEventError,
    InvalidEventError,
    StorageError,
)
from eventstore.jetstream.failover import FailoverNotes
from eventstore.jetstream.index import LogIndex
from eventstore.jetstream.log import NATS_ERRORS, JetStreamLog, storage_error
from eventstore.jetstream.schema import VERSION_HEADER, body_of
from eventstore.model import NewEvent, StoredEvent

MAX_BATCH: Final = 1000
"""The most events one append may carry: nats-server's limit for one atomic batch."""

FAILOVER_WAIT_S: Final = 20.0
"""How long an append waits for the log's stream to have a leader (and this client a
connection) again: a whole nats-server election (4-9 s) with room for a second one."""
FAILOVER_PAUSE_S: Final = 0.1
"""Between two tries of an append during a failover."""

_WRONG_LAST_SEQUENCE: Final = 10071
_UNAVAILABLE: Final = 503
_MAX_TAIL_RETRIES: Final = 1000


class LogWriter:
    """Appends to `log`, one at a time (each must know the tail's hash), deciding against
    `index` and keeping it current; `notifier` hears of every append."""

    def __init__(
        self,
        log: JetStreamLog,
        index: LogIndex,
        notifier: Notifier,
        is_closed: Callable[[], bool],
        notes: FailoverNotes,
    ) -> None:
        self._log = log
        self._notes = notes
        self._index = index
        self._notifier = notifier
        self._is_closed = is_closed
        self._append_lock = asyncio.Lock()

    async def append(
        self, stream: str, batch: tuple[NewEvent, ...], expected_version: int
    ) -> list[StoredEvent]:
        """Append a checked, non-empty batch (see `EventStore.append`)."""
        if len(batch) > MAX_BATCH:
            raise InvalidEventError(
                f"an append to JetStream holds at most {MAX_BATCH} events, got {len(batch)}"
            )
        async with self._append_lock:
            check_open(self._is_closed())
            self._notes.reconnected(self._log.nc, self._log.leader)
            return await self._append_locked(stream, batch, expected_version)

    async def _append_locked(
        self, stream: str, batch: tuple[NewEvent, ...], expected_version: int
    ) -> list[StoredEvent]:
        index = self._index
        refreshed = False
        paused_at: float | None = None  # since when the log has had no leader, or no reply
        for _ in range(_MAX_TAIL_RETRIES):
            known = [e.event_id for e in batch if e.event_id in index.ids]
            if known:
                stored = await self._stored_retry(stream, batch, known)
                self._notes.resumed()
                return stored
            positions = index.positions.get(stream, [])
            if len(positions) != expected_version:
                if not refreshed:  # the index may be behind another process's appends
                    await index.refresh()
                    refreshed = True
                    continue
                raise ConcurrencyError(stream, expected_version, len(positions))
            try:
                stored = await self._publish(stream, batch, positions)
            except _TailMoved:
                await index.refresh()
                refreshed = True
                continue
            except _Unknown as unknown:
                if unknown.elected:
                    continue  # the same expected tail: at most one of the two lands
                # No leader, no connection, or the reply was lost: the batch may or may
                # not be stored (or may still land). Catch up if the log can be read, and
                # go round again: either its ids are now in the log (a retry that returns
                # them) or the same expected tail makes exactly one of the tries land.
                paused_at = time.monotonic() if paused_at is None else paused_at
                self._notes.paused()
                if self._is_closed():
                    raise unknown.error from unknown.error.__cause__
                if time.monotonic() - paused_at >= FAILOVER_WAIT_S:
                    raise StorageError(
                        f"{unknown.error} (for {FAILOVER_WAIT_S:g}s); the append's outcome is "
                        "unknown: retry it with the same event ids, which returns the stored "
                        "events if it landed"
                    ) from unknown.error
                await asyncio.sleep(FAILOVER_PAUSE_S)
                try:
                    await index.refresh()
                except StorageError:
                    continue  # not readable either yet: the retry's expected tail is the guard
                refreshed = True
                continue
            self._notes.resumed()
            return stored
        raise StorageError(f"append to {stream!r}: the log's tail kept moving; try again")

    async def _stored_retry(
        self, stream: str, batch: tuple[NewEvent, ...], known: list[str]
    ) -> list[StoredEvent]:
        if len(known) != len(batch):
            raise DuplicateEventError(stream, known)
        wanted = {self._index.ids[i] for i in known}
        found = {
            e.position: e
            for e in await self._log.collect(
                min(wanted), self._log.layout.subject(stream), max(wanted)
            )
            if e.position in wanted
        }
        if len(found) != len(wanted):  # some ids are stored in another stream
            raise DuplicateEventError(stream, known)
        return [found[self._index.ids[e.event_id]] for e in batch]

    async def _publish(
        self, stream: str, batch: tuple[NewEvent, ...], positions: list[int]
    ) -> list[StoredEvent]:
        nc = self._log.nc
        index = self._index
        subject = self._log.layout.subject(stream)
        tail, prev_hash = index.tail, index.tail_hash
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
            payloads.append((body_of(sealed), {VERSION_HEADER: str(sealed.version)}))
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
                await nc.publish(subject, data, headers=headers)
            data, headers = payloads[-1]
            reply = await self._reply(
                nc.request(subject, data, headers=headers, timeout=self._log.timeout), stream
            )
        except nats.errors.MaxPayloadError as error:
            raise storage_error(f"append to {stream!r} (an event is too large)", error) from error
        except NATS_ERRORS as error:
            raise _Unknown(storage_error(f"append to {stream!r}", error)) from error
        ack = _parse_ack(reply, stream)
        if ack != tail + len(batch):
            await index.refresh()
            raise StorageError(
                f"append to {stream!r}: JetStream stored it at {ack}, expected {tail + len(batch)}"
            )
        for entry in stored:
            index.learn(entry)
        self._notifier.notify()
        return stored

    async def _reply(self, request: Coroutine[Any, Any, Msg], stream: str) -> Msg:
        """The append's reply, unless a new leader of the log is announced first."""
        election = self._notes.next_election()
        asking = asyncio.ensure_future(request)
        try:
            await asyncio.wait((asking, election), return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not asking.done():
                asking.cancel()
                await asyncio.wait((asking,))
        if asking.cancelled():
            raise _Unknown(
                StorageError(f"append to {stream!r}: a new leader was elected meanwhile"),
                elected=True,
            )
        return asking.result()


class _TailMoved(Exception):
    """JetStream refused an append because the log or the stream moved on."""


class _Unknown(Exception):
    """The append's outcome is unknown (the reply was lost)."""

    def __init__(self, error: StorageError, *, elected: bool = False) -> None:
        super().__init__(str(error))
        self.error = error
        self.elected = elected
        """It waited for a reply when a new leader was announced (send it again now)."""


def _parse_ack(reply: Msg, stream: str) -> int:
    try:
        answer: dict[str, Any] = json.loads(reply.data)
    except ValueError as error:
        raise StorageError(f"append to {stream!r}: unreadable JetStream reply") from error
    failure = answer.get("error")
    if failure:
        if failure.get("err_code") == _WRONG_LAST_SEQUENCE:
            raise _TailMoved()
        if failure.get("code") == _UNAVAILABLE:  # no leader (an election): try again
            raise _Unknown(StorageError(f"append to {stream!r}: JetStream unavailable: {failure}"))
        raise StorageError(f"append to {stream!r}: JetStream refused it: {failure}")
    return int(answer["seq"])
