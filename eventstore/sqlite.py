"""The embedded, durable event store: one SQLite file in WAL mode, written by one task.

Every `append` is queued to a single writer task. It takes everything queued, applies
each request inside its own SAVEPOINT within one `BEGIN IMMEDIATE` transaction, commits
once with `synchronous=FULL`, and only then answers the callers (group commit): many
concurrent appenders share one fsync, a failed request is undone alone, and no caller
hears "done" before its events are durable. Reads use a second connection, which in
WAL mode sees only committed data and never waits for the writer.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import aiosqlite

from eventstore._common import check_append, check_limit, check_query, glob_to_sqlite
from eventstore.chain import GENESIS, ChainVerifier, event_hash
from eventstore.errors import (
    ConcurrencyError,
    DuplicateEventError,
    EventStoreError,
    StorageError,
)
from eventstore.model import EventQuery, NewEvent, StoredEvent, VerifyReport

__all__ = ["SqliteEventStore"]

APPLICATION_ID: Final = 0x4241544E  # "BATN": marks a file as a Baton event store
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = (
    """
    CREATE TABLE IF NOT EXISTS events (
        position       INTEGER PRIMARY KEY,
        stream         TEXT    NOT NULL,
        version        INTEGER NOT NULL,
        event_id       TEXT    NOT NULL UNIQUE,
        type           TEXT    NOT NULL,
        data           BLOB    NOT NULL,
        recorded_at    REAL    NOT NULL,
        correlation_id TEXT    NOT NULL,
        causation_id   TEXT    NOT NULL,
        actor          TEXT    NOT NULL,
        trace_id       TEXT    NOT NULL,
        span_id        TEXT    NOT NULL,
        prev_hash      TEXT    NOT NULL,
        hash           TEXT    NOT NULL,
        UNIQUE (stream, version)
    )
    """,
    "CREATE INDEX IF NOT EXISTS events_correlation_id ON events (correlation_id)",
    "CREATE INDEX IF NOT EXISTS events_actor ON events (actor)",
    "CREATE INDEX IF NOT EXISTS events_type ON events (type)",
    f"PRAGMA application_id = {APPLICATION_ID}",
    f"PRAGMA user_version = {SCHEMA_VERSION}",
)

_COLUMNS: Final = (
    "position, stream, version, event_id, type, data, recorded_at, correlation_id, "
    "causation_id, actor, trace_id, span_id, prev_hash, hash"
)
_SELECT: Final = f"SELECT {_COLUMNS} FROM events"
_INSERT: Final = f"INSERT INTO events ({_COLUMNS}) VALUES ({', '.join('?' * 14)})"

_MAX_GROUP_EVENTS: Final = 10_000  # bounds one transaction; a bigger request goes alone
_ID_CHUNK: Final = 500  # event ids per IN (...) lookup, well under SQLite's variable limit
_VERIFY_CHUNK: Final = 5_000
# What the driver raises for a broken file; text that is not UTF-8 (a corrupt or
# hand-edited row) surfaces as UnicodeDecodeError rather than sqlite3.Error.
_DRIVER_ERRORS: Final = (sqlite3.Error, UnicodeDecodeError)


def _to_event(row: Any) -> StoredEvent:
    return StoredEvent(
        position=row[0],
        stream=row[1],
        version=row[2],
        event_id=row[3],
        type=row[4],
        data=row[5],
        recorded_at=row[6],
        correlation_id=row[7],
        causation_id=row[8],
        actor=row[9],
        trace_id=row[10],
        span_id=row[11],
        prev_hash=row[12],
        hash=row[13],
    )


def _storage_error(action: str, error: BaseException) -> StorageError:
    failure = StorageError(f"{action} failed: {error}")
    failure.__cause__ = error
    return failure


@dataclass(slots=True)
class _Request:
    stream: str
    events: tuple[NewEvent, ...]
    expected_version: int
    future: asyncio.Future[list[StoredEvent]]


class _GroupFailed(Exception):
    """The group's transaction is gone; every request in it fails with `error`."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class SqliteEventStore:
    """The default `EventStore`: durable, hash-chained, group-committed, in one SQLite file.

    Create it with `await SqliteEventStore.open(path)` and `await store.close()` it when
    done. One process should own a file at a time; a second writer is still safe (each
    transaction re-reads the chain's tail) but contends for the write lock.
    """

    def __init__(
        self, path: Path, writer: aiosqlite.Connection, reader: aiosqlite.Connection
    ) -> None:
        """Use `open()`; this only wires connections that are already set up."""
        self._path = path
        self._wconn = writer
        self._rconn = reader
        self._queue: asyncio.Queue[_Request | None] = asyncio.Queue()
        self._closed = False
        self._writer = asyncio.get_running_loop().create_task(
            self._write_loop(), name=f"eventstore-writer:{path.name}"
        )

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
        Raises `StorageError` if the file cannot be opened or is not a Baton event store.
        """
        path = Path(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create directory {path.parent}: {e}") from e
        writer: aiosqlite.Connection | None = None
        reader: aiosqlite.Connection | None = None
        try:
            # A failed aiosqlite.connect leaves its thread to stop on its own after we
            # return; probing first keeps a bad path from outliving the call.
            await asyncio.to_thread(_probe, path)
            writer = await aiosqlite.connect(path, isolation_level=None)
            await _configure(writer, busy_timeout_ms)
            if max_size_bytes is not None:
                page_size = await _scalar(writer, "PRAGMA page_size")
                pages = max(1, -(-max_size_bytes // int(page_size)))
                await writer.execute(f"PRAGMA max_page_count = {pages}")
            await _ensure_schema(writer, path)
            reader = await aiosqlite.connect(path, isolation_level=None)
            await _configure(reader, busy_timeout_ms)
            await reader.execute("PRAGMA query_only = ON")
        except BaseException as e:
            # Close whatever was opened: a live connection thread would keep the process up.
            for conn in (reader, writer):
                if conn is not None:
                    with contextlib.suppress(Exception):
                        await conn.close()
            if isinstance(e, (*_DRIVER_ERRORS, OSError)):
                raise StorageError(f"cannot open event store {path}: {e}") from e
            raise
        return cls(path, writer, reader)

    # -- writing -------------------------------------------------------------------------

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> list[StoredEvent]:
        """Append all of `events` to `stream` or none of them (see `EventStore.append`).

        Returns after the transaction holding them has committed with a full fsync.
        """
        batch = tuple(events)
        check_append(stream, batch, expected_version)
        self._check_open()
        if not batch:
            return []
        if self._writer.done():
            raise StorageError("the event store's writer has stopped")
        future: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(stream, batch, expected_version, future))
        return await future

    async def _write_loop(self) -> None:
        pending: list[_Request] = []
        try:
            while True:
                first = await self._queue.get()
                if first is None:
                    return
                pending = [first]
                stop = False
                size = len(first.events)
                while size < _MAX_GROUP_EVENTS and not self._queue.empty():
                    item = self._queue.get_nowait()
                    if item is None:
                        stop = True
                        break
                    pending.append(item)
                    size += len(item.events)
                group = [r for r in pending if not r.future.cancelled()]
                if group:
                    try:
                        await self._commit_group(group)
                    except Exception as e:
                        # A bug, not a storage failure: fail this group, keep serving.
                        for request in group:
                            if not request.future.done():
                                request.future.set_exception(_storage_error("append", e))
                pending = []
                if stop:
                    return
        except asyncio.CancelledError:
            # The event loop is shutting down without close(): release the connections
            # now, or their (non-daemon) threads would keep the process from exiting.
            self._closed = True
            for conn in (self._wconn, self._rconn):
                with contextlib.suppress(Exception):
                    await conn.close()
            raise
        finally:
            # Cancelled with work queued (the loop is shutting down): nobody is left waiting.
            failure = StorageError("the event store's writer has stopped")
            while not self._queue.empty():
                item = self._queue.get_nowait()
                if item is not None:
                    pending.append(item)
            for request in pending:
                if not request.future.done():
                    request.future.set_exception(failure)

    async def _commit_group(self, group: list[_Request]) -> None:
        conn = self._wconn
        outcomes: list[list[StoredEvent] | EventStoreError] = []
        try:
            if conn.in_transaction:  # a failed rollback left one open: start clean
                await conn.execute("ROLLBACK")
            await conn.execute("BEGIN IMMEDIATE")
            try:
                rows = await conn.execute_fetchall(
                    "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
                )
                tail = next(iter(rows), None)
                position, prev_hash = (0, GENESIS) if tail is None else (tail[0], tail[1])
                for request in group:
                    outcome = await self._apply_one(request, position, prev_hash)
                    outcomes.append(outcome)
                    if isinstance(outcome, list) and outcome and outcome[-1].position > position:
                        position, prev_hash = outcome[-1].position, outcome[-1].hash
                await conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    with contextlib.suppress(sqlite3.Error, ValueError):
                        await conn.execute("ROLLBACK")
                raise
        except _GroupFailed as e:
            failure = _storage_error("append", e.error)
            outcomes = [failure] * len(group)
        except _DRIVER_ERRORS as e:
            failure = _storage_error("append", e)
            outcomes = [failure] * len(group)
        for request, outcome in zip(group, outcomes, strict=True):
            if request.future.done():
                continue
            if isinstance(outcome, list):
                request.future.set_result(outcome)
            else:
                request.future.set_exception(outcome)

    async def _apply_one(
        self, request: _Request, position: int, prev_hash: str
    ) -> list[StoredEvent] | EventStoreError:
        """Apply one request inside its own savepoint; undo it alone if it fails."""
        conn = self._wconn
        await conn.execute("SAVEPOINT request")
        try:
            stored = await self._insert(request, position, prev_hash)
        except (ConcurrencyError, DuplicateEventError) as e:
            await conn.execute("ROLLBACK TO request")
            await conn.execute("RELEASE request")
            return e
        except _DRIVER_ERRORS as e:
            # Undo this request; if SQLite already dropped the transaction, the whole
            # group is lost (earlier requests too), so every caller must hear it.
            try:
                await conn.execute("ROLLBACK TO request")
                await conn.execute("RELEASE request")
            except sqlite3.Error as undo_error:
                raise _GroupFailed(e) from undo_error
            if not conn.in_transaction:
                raise _GroupFailed(e) from e
            return _storage_error("append", e)
        await conn.execute("RELEASE request")
        return stored

    async def _insert(self, request: _Request, position: int, prev_hash: str) -> list[StoredEvent]:
        conn = self._wconn
        stream = request.stream
        ids = [event.event_id for event in request.events]
        known: dict[str, StoredEvent] = {}
        for start in range(0, len(ids), _ID_CHUNK):
            chunk = ids[start : start + _ID_CHUNK]
            rows = await conn.execute_fetchall(
                f"{_SELECT} WHERE event_id IN ({', '.join('?' * len(chunk))})", chunk
            )
            for row in rows:
                known[row[3]] = _to_event(row)
        if known:
            if len(known) == len(ids) and all(e.stream == stream for e in known.values()):
                return [known[event_id] for event_id in ids]
            raise DuplicateEventError(stream, [i for i in ids if i in known])
        rows = await conn.execute_fetchall(
            "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?", (stream,)
        )
        current = int(next(iter(rows))[0])
        if current != request.expected_version:
            raise ConcurrencyError(stream, request.expected_version, current)
        recorded_at = time.time()
        stored: list[StoredEvent] = []
        for offset, event in enumerate(request.events, start=1):
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
        await conn.executemany(
            _INSERT,
            [
                (
                    e.position,
                    e.stream,
                    e.version,
                    e.event_id,
                    e.type,
                    e.data,
                    e.recorded_at,
                    e.correlation_id,
                    e.causation_id,
                    e.actor,
                    e.trace_id,
                    e.span_id,
                    e.prev_hash,
                    e.hash,
                )
                for e in stored
            ],
        )
        return stored

    # -- reading -------------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[object] = ()) -> Iterable[Any]:
        self._check_open()
        try:
            return await self._rconn.execute_fetchall(sql, params)
        except _DRIVER_ERRORS as e:
            raise StorageError(f"read failed: {e}") from e

    async def read_stream(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[StoredEvent]:
        """A stream's events in version order, optionally only up to a global position."""
        if until_position is None:
            rows = await self._fetch(
                f"{_SELECT} WHERE stream = ? AND version >= ? ORDER BY version",
                (stream, from_version),
            )
        else:
            rows = await self._fetch(
                f"{_SELECT} WHERE stream = ? AND version >= ? AND position <= ? ORDER BY version",
                (stream, from_version, until_position),
            )
        return [_to_event(row) for row in rows]

    async def read_all(self, from_position: int = 1, limit: int | None = None) -> list[StoredEvent]:
        """Every stream's events in global order."""
        check_limit(limit)
        rows = await self._fetch(
            f"{_SELECT} WHERE position >= ? ORDER BY position LIMIT ?",
            (from_position, -1 if limit is None else limit),
        )
        return [_to_event(row) for row in rows]

    async def stream_version(self, stream: str) -> int:
        """The stream's last version, 0 if it has no events."""
        rows = await self._fetch(
            "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?", (stream,)
        )
        return int(next(iter(rows))[0])

    async def streams(self, prefix: str = "") -> list[str]:
        """Names of the streams that have events, sorted, filtered by prefix."""
        # Hop from one stream name to the next through the (stream, version) index, so
        # the cost grows with the number of streams, not of events.
        rows = await self._fetch(
            """
            WITH RECURSIVE names(name) AS (
                SELECT MIN(stream) FROM events WHERE stream >= ?1
                UNION ALL
                SELECT (SELECT MIN(stream) FROM events WHERE stream > names.name)
                FROM names
                WHERE names.name IS NOT NULL AND substr(names.name, 1, ?2) = ?1
            )
            SELECT name FROM names WHERE name IS NOT NULL AND substr(name, 1, ?2) = ?1
            """,
            (prefix, len(prefix)),
        )
        return [row[0] for row in rows]

    async def query(self, query: EventQuery) -> list[StoredEvent]:
        """Events matching every filter in `query`, in global order."""
        check_query(query)
        clauses = ["position >= ?"]
        params: list[object] = [query.from_position]
        for column, value in (
            ("stream", query.stream),
            ("correlation_id", query.correlation_id),
            ("actor", query.actor),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        if query.type_glob is not None:
            clauses.append("type GLOB ?")
            params.append(glob_to_sqlite(query.type_glob))
        params.append(-1 if query.limit is None else query.limit)
        rows = await self._fetch(
            f"{_SELECT} WHERE {' AND '.join(clauses)} ORDER BY position LIMIT ?", params
        )
        return [_to_event(row) for row in rows]

    async def verify(self) -> VerifyReport:
        """Recompute the hash chain over the log as it stands now, reading it in chunks."""
        rows = await self._fetch("SELECT COALESCE(MAX(position), 0) FROM events")
        end = int(next(iter(rows))[0])
        verifier = ChainVerifier()
        after = 0
        while not verifier.settled:
            chunk = list(
                await self._fetch(
                    f"{_SELECT} WHERE position > ? AND position <= ? ORDER BY position LIMIT ?",
                    (after, end, _VERIFY_CHUNK),
                )
            )
            if not chunk:
                break
            verifier.feed(_to_event(row) for row in chunk)
            after = chunk[-1][0]
        return verifier.finish()

    # -- lifecycle -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the event store is closed")

    async def close(self) -> None:
        """Finish the appends already queued, stop the writer and close both connections."""
        if self._closed:
            return
        self._closed = True
        self._queue.put_nowait(None)
        with contextlib.suppress(Exception):
            await self._writer
        for conn in (self._wconn, self._rconn):
            with contextlib.suppress(Exception):
                await conn.close()


def _probe(path: Path) -> None:
    sqlite3.connect(path).close()


async def _scalar(conn: aiosqlite.Connection, sql: str) -> Any:
    rows = await conn.execute_fetchall(sql)
    row = next(iter(rows), None)
    return None if row is None else row[0]


async def _configure(conn: aiosqlite.Connection, busy_timeout_ms: int) -> None:
    # busy_timeout first, so the statements after it wait for another process's lock.
    await conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
    mode = await _scalar(conn, "PRAGMA journal_mode = WAL")
    if str(mode).lower() != "wal":
        raise StorageError(f"cannot switch the journal to WAL (it is {mode!r})")
    await conn.execute("PRAGMA synchronous = FULL")


async def _ensure_schema(conn: aiosqlite.Connection, path: Path) -> None:
    has_table = await _scalar(
        conn, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'"
    )
    app_id = await _scalar(conn, "PRAGMA application_id")
    if not has_table:
        tables = await _scalar(conn, "SELECT count(*) FROM sqlite_master")
        if tables or app_id not in (0, APPLICATION_ID):
            raise StorageError(f"{path} is a SQLite database, but not a Baton event store")
        await conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA:
                await conn.execute(statement)
            await conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    await conn.execute("ROLLBACK")
            raise
        return
    version = await _scalar(conn, "PRAGMA user_version")
    if app_id != APPLICATION_ID or version != SCHEMA_VERSION:
        raise StorageError(
            f"{path} is not a Baton event store of schema {SCHEMA_VERSION} "
            f"(application_id={app_id}, user_version={version})"
        )
