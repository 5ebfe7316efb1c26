"""The append path: the writer thread, its group commit, and the SQL of one append.

Every `append` is queued to the writer thread. It takes everything queued, applies each
request inside its own SAVEPOINT within one `BEGIN IMMEDIATE` transaction, commits once
with `synchronous=FULL`, and only then answers the callers (group commit): many
concurrent appenders share one fsync, a failed request is undone alone, and no caller hears
"done" before its events are durable. Other writes (snapshots, projection commits) run
between groups, each in its own transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import time
from collections.abc import Callable
from hashlib import sha256
from typing import Final, TypeVar

from eventstore._subscription import Notifier
from eventstore.chain import _DOMAIN, _DOMAIN_V2, _HEADER, GENESIS
from eventstore.chain import _SCHEMA as _SCHEMA_INT
from eventstore.errors import ConcurrencyError, DuplicateEventError, EventStoreError
from eventstore.model import NewEvent, StoredEvent
from eventstore.sqlite.schema import COLUMNS, SELECT, events_of
from eventstore.sqlite.sql import DRIVER_ERRORS, storage_error
from eventstore.sqlite.worker import Job, Outcome, Request, Worker, post

T = TypeVar("T")

_MAX_GROUP_EVENTS: Final = 10_000  # bounds one transaction; a bigger request goes alone
_ID_CHUNK: Final = 500  # event ids per IN (...) lookup, well under SQLite's variable limit


class _GroupFailed(Exception):
    """The group's transaction is gone; every request in it fails with `error`."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class LogWriter(Worker):
    """The writer thread: consecutive appends share one transaction and one fsync, each in
    its own savepoint; any other job runs alone between groups. `notifier` hears of every
    commit that wrote events."""

    role = "writer"
    action = "write"

    def __init__(
        self,
        file_name: str,
        conn: sqlite3.Connection,
        is_closed: Callable[[], bool],
        notifier: Notifier,
    ) -> None:
        super().__init__(file_name, conn, is_closed)
        self._notifier = notifier

    def append(
        self, stream: str, batch: tuple[NewEvent, ...], expected_version: int
    ) -> asyncio.Future[list[StoredEvent]]:
        """Queue a checked, non-empty append; its future settles after its group commits."""
        self.check_alive()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[StoredEvent]] = loop.create_future()
        self.queue.put(Request(stream, batch, expected_version, loop, future))
        return future

    async def call(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run `run(conn)` on the writer thread, between group commits."""
        self.check()
        future = self.submit(run)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The job may be running already: let its effect settle (done or not done)
            # before the cancellation completes, so a cancelled caller that restarts
            # reads a state no late write can change behind its back.
            await asyncio.wait([future])
            raise

    def serve(self) -> None:
        """The thread: group consecutive appends into one commit, run jobs alone."""
        source = self.queue
        stopping: Job | None = None
        while stopping is None:
            items = [source.get()]
            size = len(items[0].events) if isinstance(items[0], Request) else 0
            while size < _MAX_GROUP_EVENTS:
                try:
                    item = source.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                size += len(item.events) if isinstance(item, Request) else 0
            group: list[Request] = []
            for item in items:
                if isinstance(item, Request):
                    group.append(item)
                    continue
                if group:
                    self._commit_group(group)
                    group = []
                if item.stop:
                    stopping = item
                else:
                    self.run_job(item)
            if group:
                self._commit_group(group)
        self.finish(stopping)

    def _commit_group(self, group: list[Request]) -> None:
        live = [r for r in group if not r.future.cancelled()]
        outcomes: list[list[StoredEvent] | EventStoreError]
        try:
            outcomes = self._transact(live) if live else []
        except Exception as e:  # a bug, not a storage failure: fail this group, keep serving
            outcomes = [storage_error("append", e)] * len(live)
        by_loop: dict[asyncio.AbstractEventLoop, list[Outcome]] = {}
        for request, outcome in zip(live, outcomes, strict=True):
            settled = (
                (request.future, outcome, None)
                if isinstance(outcome, list)
                else (request.future, None, outcome)
            )
            by_loop.setdefault(request.loop, []).append(settled)
        for loop, settled_all in by_loop.items():
            post(loop, settled_all)

    def _transact(self, group: list[Request]) -> list[list[StoredEvent] | EventStoreError]:
        """One transaction for the whole group; answers only after COMMIT."""
        conn = self.conn
        outcomes: list[list[StoredEvent] | EventStoreError] = []
        wrote = False
        try:
            if conn.in_transaction:  # a failed rollback left one open: start clean
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            try:
                tail = conn.execute(
                    "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
                ).fetchone()
                position, prev_hash = (0, GENESIS) if tail is None else (tail[0], tail[1])
                for request in group:
                    outcome = self._apply_one(conn, request, position, prev_hash)
                    outcomes.append(outcome)
                    if isinstance(outcome, list) and outcome and outcome[-1].position > position:
                        position, prev_hash = outcome[-1].position, outcome[-1].hash
                        wrote = True
                # Nothing written (retries, conflicts): end without the cost of a commit.
                conn.execute("COMMIT" if wrote else "ROLLBACK")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("ROLLBACK")
                raise
        except _GroupFailed as e:
            return [storage_error("append", e.error)] * len(group)
        except DRIVER_ERRORS as e:
            return [storage_error("append", e)] * len(group)
        if wrote:
            self._notifier.notify()
        return outcomes

    def _apply_one(
        self,
        conn: sqlite3.Connection,
        request: Request,
        position: int,
        prev_hash: str,
    ) -> list[StoredEvent] | EventStoreError:
        """Apply one request inside its own savepoint; undo it alone if it fails."""
        conn.execute("SAVEPOINT request")
        try:
            stored = _insert(conn, request, position, prev_hash)
        except (ConcurrencyError, DuplicateEventError) as e:
            conn.execute("ROLLBACK TO request")
            conn.execute("RELEASE request")
            return e
        except DRIVER_ERRORS as e:
            # Undo this request; if SQLite already dropped the transaction, the whole
            # group is lost (earlier requests too), so every caller must hear it.
            try:
                conn.execute("ROLLBACK TO request")
                conn.execute("RELEASE request")
            except sqlite3.Error as undo_error:
                raise _GroupFailed(e) from undo_error
            if not conn.in_transaction:
                raise _GroupFailed(e) from e
            return storage_error("append", e)
        conn.execute("RELEASE request")
        return stored


# -- the SQL of one append -------------------------------------------------------------


def _insert_sql(rows: int) -> str:
    """One INSERT of `rows` rows: far fewer VM steps (and GIL hand-offs) than executemany."""
    return f"INSERT INTO events ({COLUMNS}) VALUES " + ", ".join([_ROW] * rows)


_ROW: Final = f"({', '.join('?' * 15)})"
_INSERT_ROWS: Final = 100  # rows per INSERT: 1,500 variables, far under SQLite's 32,766
_INSERT_FULL: Final = _insert_sql(_INSERT_ROWS)


def _known(conn: sqlite3.Connection, ids: list[str]) -> dict[str, StoredEvent]:
    """The stored events among `ids`."""
    known: dict[str, StoredEvent] = {}
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        cursor = conn.execute(f"{SELECT} WHERE event_id IN ({', '.join('?' * len(chunk))})", chunk)
        known.update((e.event_id, e) for e in events_of(cursor))
    return known


def _retry_or_duplicate(conn: sqlite3.Connection, request: Request) -> list[StoredEvent] | None:
    """The stored events if `request` is a retry of a stored batch, `None` if none of its
    ids is stored; raises `DuplicateEventError` for a batch that is partly stored."""
    ids = [event.event_id for event in request.events]
    known = _known(conn, ids)
    if not known:
        return None
    stream = request.stream
    if len(known) == len(ids) and all(e.stream == stream for e in known.values()):
        return [known[event_id] for event_id in ids]
    raise DuplicateEventError(stream, [i for i in ids if i in known])


def _insert(
    conn: sqlite3.Connection, request: Request, position: int, prev_hash: str
) -> list[StoredEvent]:
    """Insert `request` after `position` (inside a savepoint the caller undoes on error).

    The common case costs one version lookup and the inserts: the unique `event_id`
    index is the idempotency check, and only a violation of it (or a version mismatch,
    which a retry may also carry) looks the ids up to tell a retry from a duplicate.
    """
    stream = request.stream
    current = int(
        conn.execute(
            "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?", (stream,)
        ).fetchone()[0]
    )
    if current != request.expected_version:
        retried = _retry_or_duplicate(conn, request)
        if retried is not None:
            return retried
        raise ConcurrencyError(stream, request.expected_version, current)
    recorded_at = time.time()
    stored: list[StoredEvent] = []
    values: list[object] = []
    add = values.extend
    stream_bytes = stream.encode()
    pack = _HEADER.pack
    for offset, event in enumerate(request.events, start=1):
        at = position + offset
        version = current + offset
        # event_hash(), inlined: the writer thread is the store's bottleneck.
        fields = (
            prev_hash.encode(),
            stream_bytes,
            event.event_id.encode(),
            event.type.encode(),
            event.data,
            event.correlation_id.encode(),
            event.causation_id.encode(),
            event.actor.encode(),
            event.trace_id.encode(),
            event.span_id.encode(),
        )
        header = pack(
            len(fields[0]),
            at,
            len(stream_bytes),
            version,
            len(fields[2]),
            len(fields[3]),
            len(fields[4]),
            recorded_at,
            len(fields[5]),
            len(fields[6]),
            len(fields[7]),
            len(fields[8]),
            len(fields[9]),
        )
        if event.schema == 1:
            digest = sha256(b"".join((_DOMAIN, header, *fields))).hexdigest()
        else:
            digest = sha256(
                b"".join((_DOMAIN_V2, header, _SCHEMA_INT.pack(event.schema), *fields))
            ).hexdigest()
        stored.append(
            StoredEvent(
                position=at,
                stream=stream,
                version=version,
                event_id=event.event_id,
                type=event.type,
                data=event.data,
                schema=event.schema,
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
        add(
            (
                at,
                stream,
                version,
                event.event_id,
                event.type,
                event.data,
                event.schema,
                recorded_at,
                event.correlation_id,
                event.causation_id,
                event.actor,
                event.trace_id,
                event.span_id,
                prev_hash,
                digest,
            )
        )
        prev_hash = digest
    step = 15 * _INSERT_ROWS
    try:
        for start in range(0, len(values), step):
            chunk = values[start : start + step]
            rows = len(chunk) // 15
            conn.execute(_INSERT_FULL if rows == _INSERT_ROWS else _insert_sql(rows), chunk)
    except sqlite3.IntegrityError:
        # A stored event_id (the only unique key a matching version can collide on).
        conn.execute("ROLLBACK TO request")
        retried = _retry_or_duplicate(conn, request)
        if retried is not None:
            return retried
        raise
    return stored
