"""The embedded, durable event store: one SQLite file in WAL mode, written by one thread.

The store drives SQLite through the standard `sqlite3` module on two dedicated threads,
each with its own connection, and crosses from the event loop to a thread once per call.

- Writing: every `append` is queued to the writer thread. It takes everything queued,
  applies each request inside its own SAVEPOINT within one `BEGIN IMMEDIATE`
  transaction, commits once with `synchronous=FULL`, and only then answers the callers
  (group commit): many concurrent appenders share one fsync, a failed request is undone
  alone, and no caller hears "done" before its events are durable. Snapshots and
  projection commits go through the same thread, each in its own transaction.
- Reading: each read runs whole on the reader thread (query, fetch, building the
  `StoredEvent`s) and answers once; in WAL mode it sees only committed data and never
  waits for the writer.

Both threads are daemons, so a store that is never closed cannot keep the process alive;
`close()` finishes queued work, closes both connections and joins both threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import sqlite3
import threading
import time
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from pathlib import Path
from typing import Any, Final, TypeVar

from eventstore._common import (
    check_append,
    check_limit,
    check_query,
    check_snapshot,
    glob_to_sqlite,
)
from eventstore._subscription import Notifier, catch_up
from eventstore.chain import _DOMAIN, _DOMAIN_V2, _HEADER, GENESIS, ChainVerifier
from eventstore.chain import _SCHEMA as _SCHEMA_INT
from eventstore.errors import (
    CheckpointConflictError,
    ConcurrencyError,
    DuplicateEventError,
    EventStoreError,
    StorageError,
)
from eventstore.model import EventQuery, EventRow, NewEvent, Snapshot, StoredEvent, VerifyReport
from eventstore.projection import check_commit, check_projection_name

__all__ = ["SqliteEventStore", "SqliteProjections"]

T = TypeVar("T")

APPLICATION_ID: Final = 0x4241544E  # "BATN": marks a file as a Baton event store
SCHEMA_VERSION: Final = 2

_EVENTS_V1: Final = """
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
"""
# Schema 2 adds the event's shape version, snapshots and projections; a schema-1 file is
# upgraded in place (its events keep schema 1, whose hashes are unchanged).
_UPGRADE_V2: Final = (
    "ALTER TABLE events ADD COLUMN schema INTEGER NOT NULL DEFAULT 1",
    """
    CREATE TABLE snapshots (
        stream   TEXT    NOT NULL,
        version  INTEGER NOT NULL,
        position INTEGER NOT NULL,
        schema   INTEGER NOT NULL,
        data     BLOB    NOT NULL,
        PRIMARY KEY (stream, version)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE projection_rows (
        name  TEXT NOT NULL,
        key   TEXT NOT NULL,
        value BLOB NOT NULL,
        PRIMARY KEY (name, key)
    ) WITHOUT ROWID
    """,
    """
    CREATE TABLE projection_checkpoints (
        name     TEXT    NOT NULL PRIMARY KEY,
        position INTEGER NOT NULL
    ) WITHOUT ROWID
    """,
)
_SCHEMA_V1: Final = (
    _EVENTS_V1,
    "CREATE INDEX IF NOT EXISTS events_correlation_id ON events (correlation_id)",
    "CREATE INDEX IF NOT EXISTS events_actor ON events (actor)",
    "CREATE INDEX IF NOT EXISTS events_type ON events (type)",
)

_COLUMNS: Final = (
    "position, stream, version, event_id, type, data, schema, recorded_at, correlation_id, "
    "causation_id, actor, trace_id, span_id, prev_hash, hash"
)
_SELECT: Final = f"SELECT {_COLUMNS} FROM events"

_MAX_GROUP_EVENTS: Final = 10_000  # bounds one transaction; a bigger request goes alone
_ID_CHUNK: Final = 500  # event ids per IN (...) lookup, well under SQLite's variable limit
_FETCH_CHUNK: Final = 10_000  # rows turned into events at a time, bounding peak memory
_VERIFY_CHUNK: Final = 20_000
_SUBSCRIPTION_POLL: Final = 1.0  # seconds; catches appends by other processes
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
        schema=row[6],
        recorded_at=row[7],
        correlation_id=row[8],
        causation_id=row[9],
        actor=row[10],
        trace_id=row[11],
        span_id=row[12],
        prev_hash=row[13],
        hash=row[14],
    )


def _events(cursor: sqlite3.Cursor) -> list[StoredEvent]:
    """Every row of `cursor` as events, converting chunk by chunk to bound memory."""
    events: list[StoredEvent] = []
    while rows := cursor.fetchmany(_FETCH_CHUNK):
        events.extend(map(_to_event, rows))
    return events


def _storage_error(action: str, error: BaseException) -> StorageError:
    failure = StorageError(f"{action} failed: {error}")
    failure.__cause__ = error
    return failure


def _settle(outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
    for future, result, error in outcomes:
        if future.done():
            continue
        if error is None:
            future.set_result(result)
        else:
            future.set_exception(error)


def _post(
    loop: asyncio.AbstractEventLoop,
    outcomes: list[tuple[asyncio.Future[Any], Any, BaseException | None]],
) -> None:
    """Hand outcomes back to the loop that waits for them; a closed loop has no waiter."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(_settle, outcomes)


@dataclass(slots=True)
class _Request:
    stream: str
    events: tuple[NewEvent, ...]
    expected_version: int
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[list[StoredEvent]]


@dataclass(slots=True)
class _Job:
    """Any other work for a thread: `run(conn)` in one hop."""

    run: Callable[[sqlite3.Connection], Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Any]
    stop: bool = field(default=False)


class _GroupFailed(Exception):
    """The group's transaction is gone; every request in it fails with `error`."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(str(error))
        self.error = error


class _Thread:
    """A daemon thread that owns one connection and runs queued work on it."""

    def __init__(self, name: str, conn: sqlite3.Connection, serve: Callable[[], None]) -> None:
        self.conn = conn
        self.queue: queue.SimpleQueue[_Request | _Job] = queue.SimpleQueue()
        self.thread = threading.Thread(target=serve, name=name, daemon=True)

    def submit(self, run: Callable[[sqlite3.Connection], T], *, stop: bool = False) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self.queue.put(_Job(run, loop, future, stop))
        return future


class SqliteEventStore:
    """The default `EventStore`: durable, hash-chained, group-committed, in one SQLite file.

    Create it with `await SqliteEventStore.open(path)` and `await store.close()` it when
    done. One process should own a file at a time; a second writer is still safe (each
    transaction re-reads the chain's tail) but contends for the write lock, and its
    appends reach this store's subscribers within a second.
    """

    def __init__(self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection) -> None:
        """Use `open()`; this only wires connections that are already set up."""
        self._path = path
        self._closed = False
        self._notifier = Notifier()
        self._writer = _Thread(f"eventstore-writer:{path.name}", writer, self._serve_writes)
        self._reader = _Thread(f"eventstore-reader:{path.name}", reader, self._serve_reads)
        self._writer.thread.start()
        self._reader.thread.start()
        self.projections = SqliteProjections(self)
        """The projection port (`ProjectionStore`), in the same file as the log."""

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
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create directory {path.parent}: {e}") from e
        writer, reader = await asyncio.to_thread(_connect, path, busy_timeout_ms, max_size_bytes)
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
        if not self._writer.thread.is_alive():
            raise StorageError("the event store's writer has stopped")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[StoredEvent]] = loop.create_future()
        self._writer.queue.put(_Request(stream, batch, expected_version, loop, future))
        return await future

    async def _write(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run `run(conn)` on the writer thread, between group commits."""
        self._check_open()
        if not self._writer.thread.is_alive():
            raise StorageError("the event store's writer has stopped")
        future: asyncio.Future[T] = self._writer.submit(run)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            # The job may be running already: let its effect settle (done or not done)
            # before the cancellation completes, so a cancelled caller that restarts
            # reads a state no late write can change behind its back.
            await asyncio.wait([future])
            raise

    def _serve_writes(self) -> None:
        """The writer thread: group consecutive appends into one commit, run jobs alone."""
        source = self._writer.queue
        stopping: _Job | None = None
        while stopping is None:
            items = [source.get()]
            size = len(items[0].events) if isinstance(items[0], _Request) else 0
            while size < _MAX_GROUP_EVENTS:
                try:
                    item = source.get_nowait()
                except queue.Empty:
                    break
                items.append(item)
                size += len(item.events) if isinstance(item, _Request) else 0
            group: list[_Request] = []
            for item in items:
                if isinstance(item, _Request):
                    group.append(item)
                    continue
                if group:
                    self._commit_group(group)
                    group = []
                if item.stop:
                    stopping = item
                else:
                    self._run_job(item, write=True)
            if group:
                self._commit_group(group)
        # Anything queued after close() began gets a clear answer, then the thread ends.
        while True:
            try:
                item = source.get_nowait()
            except queue.Empty:
                break
            _post(item.loop, [(item.future, None, StorageError("the event store is closed"))])
        with contextlib.suppress(sqlite3.Error):
            self._writer.conn.close()
        _post(stopping.loop, [(stopping.future, None, None)])

    def _run_job(self, job: _Job, *, write: bool) -> None:
        if job.future.cancelled():
            return
        conn = self._writer.conn if write else self._reader.conn
        try:
            result = job.run(conn)
        except EventStoreError as e:
            _post(job.loop, [(job.future, None, e)])
        except _DRIVER_ERRORS as e:
            _post(job.loop, [(job.future, None, _storage_error("write" if write else "read", e))])
        except Exception as e:  # a bug, not a storage failure: answer, keep serving
            _post(job.loop, [(job.future, None, _storage_error("store call", e))])
        else:
            _post(job.loop, [(job.future, result, None)])

    def _commit_group(self, group: list[_Request]) -> None:
        live = [r for r in group if not r.future.cancelled()]
        outcomes: list[list[StoredEvent] | EventStoreError]
        try:
            outcomes = self._transact(live) if live else []
        except Exception as e:  # a bug, not a storage failure: fail this group, keep serving
            outcomes = [_storage_error("append", e)] * len(live)
        by_loop: dict[
            asyncio.AbstractEventLoop,
            list[tuple[asyncio.Future[Any], Any, BaseException | None]],
        ] = {}
        for request, outcome in zip(live, outcomes, strict=True):
            settled = (
                (request.future, outcome, None)
                if isinstance(outcome, list)
                else (request.future, None, outcome)
            )
            by_loop.setdefault(request.loop, []).append(settled)
        for loop, settled_all in by_loop.items():
            _post(loop, settled_all)

    def _transact(self, group: list[_Request]) -> list[list[StoredEvent] | EventStoreError]:
        """One transaction for the whole group; answers only after COMMIT."""
        conn = self._writer.conn
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
            return [_storage_error("append", e.error)] * len(group)
        except _DRIVER_ERRORS as e:
            return [_storage_error("append", e)] * len(group)
        if wrote:
            self._notifier.notify()
        return outcomes

    def _apply_one(
        self,
        conn: sqlite3.Connection,
        request: _Request,
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
        except _DRIVER_ERRORS as e:
            # Undo this request; if SQLite already dropped the transaction, the whole
            # group is lost (earlier requests too), so every caller must hear it.
            try:
                conn.execute("ROLLBACK TO request")
                conn.execute("RELEASE request")
            except sqlite3.Error as undo_error:
                raise _GroupFailed(e) from undo_error
            if not conn.in_transaction:
                raise _GroupFailed(e) from e
            return _storage_error("append", e)
        conn.execute("RELEASE request")
        return stored

    # -- reading -------------------------------------------------------------------------

    async def _read(self, run: Callable[[sqlite3.Connection], T]) -> T:
        """Run `run(conn)` on the reader thread, in one hop."""
        self._check_open()
        if not self._reader.thread.is_alive():
            raise StorageError("the event store's reader has stopped")
        result: T = await self._reader.submit(run)
        return result

    def _serve_reads(self) -> None:
        source = self._reader.queue
        while True:
            item = source.get()
            if isinstance(item, _Job) and item.stop:
                break
            assert isinstance(item, _Job)
            self._run_job(item, write=False)
        while True:
            try:
                late = source.get_nowait()
            except queue.Empty:
                break
            _post(late.loop, [(late.future, None, StorageError("the event store is closed"))])
        with contextlib.suppress(sqlite3.Error):
            self._reader.conn.close()
        _post(item.loop, [(item.future, None, None)])

    async def _select(self, sql: str, params: Sequence[object] = ()) -> list[StoredEvent]:
        return await self._read(lambda conn: _events(conn.execute(sql, params)))

    async def _scalar(self, sql: str, params: Sequence[object] = ()) -> Any:
        return await self._read(lambda conn: conn.execute(sql, params).fetchone()[0])

    async def read_stream(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[StoredEvent]:
        """A stream's events in version order, optionally only up to a global position."""
        if until_position is None:
            return await self._select(
                f"{_SELECT} WHERE stream = ? AND version >= ? ORDER BY version",
                (stream, from_version),
            )
        return await self._select(
            f"{_SELECT} WHERE stream = ? AND version >= ? AND position <= ? ORDER BY version",
            (stream, from_version, until_position),
        )

    async def read_stream_rows(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[EventRow]:
        """Like `read_stream`, but only (position, version, type, schema, data) per event,
        as plain tuples: the lean read a replay (decode + fold) needs, several times
        faster than building full `StoredEvent`s."""
        sql = (
            "SELECT position, version, type, schema, data FROM events"
            " WHERE stream = ? AND version >= ?"
        )
        params: tuple[object, ...] = (stream, from_version)
        if until_position is not None:
            sql += " AND position <= ?"
            params = (stream, from_version, until_position)
        sql += " ORDER BY version"

        def rows(conn: sqlite3.Connection) -> list[EventRow]:
            found: list[EventRow] = []
            cursor = conn.execute(sql, params)
            while chunk := cursor.fetchmany(_FETCH_CHUNK):
                found.extend(chunk)
            return found

        return await self._read(rows)

    async def read_all(self, from_position: int = 1, limit: int | None = None) -> list[StoredEvent]:
        """Every stream's events in global order."""
        check_limit(limit)
        return await self._select(
            f"{_SELECT} WHERE position >= ? ORDER BY position LIMIT ?",
            (from_position, -1 if limit is None else limit),
        )

    async def stream_version(self, stream: str) -> int:
        """The stream's last version, 0 if it has no events."""
        return int(
            await self._scalar(
                "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?", (stream,)
            )
        )

    async def last_position(self) -> int:
        """The global position of the newest event, 0 for an empty log."""
        return int(await self._scalar("SELECT COALESCE(MAX(position), 0) FROM events"))

    async def streams(self, prefix: str = "") -> list[str]:
        """Names of the streams that have events, sorted, filtered by prefix."""
        # Hop from one stream name to the next through the (stream, version) index, so
        # the cost grows with the number of streams, not of events.
        sql = """
            WITH RECURSIVE names(name) AS (
                SELECT MIN(stream) FROM events WHERE stream >= ?1
                UNION ALL
                SELECT (SELECT MIN(stream) FROM events WHERE stream > names.name)
                FROM names
                WHERE names.name IS NOT NULL AND substr(names.name, 1, ?2) = ?1
            )
            SELECT name FROM names WHERE name IS NOT NULL AND substr(name, 1, ?2) = ?1
        """
        params = (prefix, len(prefix))
        return await self._read(lambda conn: [row[0] for row in conn.execute(sql, params)])

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
        if query.text is not None:
            clauses.append("instr(data, ?) > 0")
            params.append(query.text.encode())
        if query.since is not None:
            clauses.append("recorded_at >= ?")
            params.append(float(query.since))
        if query.until is not None:
            clauses.append("recorded_at < ?")
            params.append(float(query.until))
        if query.to_position is not None:
            clauses.append("position <= ?")
            params.append(query.to_position)
        params.append(-1 if query.limit is None else query.limit)
        return await self._select(
            f"{_SELECT} WHERE {' AND '.join(clauses)} ORDER BY position LIMIT ?", params
        )

    def subscribe(self, from_position: int = 1) -> AsyncIterator[StoredEvent]:
        """History from `from_position`, then live appends (see `EventStore.subscribe`)."""
        self._check_open()
        return catch_up(
            lambda position, limit: self.read_all(position, limit),
            self._notifier,
            from_position,
            lambda: self._closed,
            poll_seconds=_SUBSCRIPTION_POLL,
        )

    async def verify(self) -> VerifyReport:
        """Recompute the hash chain over the log as it stands now, reading it in chunks."""
        end = await self.last_position()
        verifier = ChainVerifier()
        after = 0
        while not verifier.settled:
            chunk = await self._select(
                f"{_SELECT} WHERE position > ? AND position <= ? ORDER BY position LIMIT ?",
                (after, end, _VERIFY_CHUNK),
            )
            if not chunk:
                break
            verifier.feed(chunk)
            after = chunk[-1].position
        return verifier.finish()

    # -- snapshots -----------------------------------------------------------------------

    async def save_snapshot(self, snapshot: Snapshot) -> None:
        """Keep a snapshot (replacing one of the same stream and version), durably."""
        check_snapshot(snapshot)
        row = (snapshot.stream, snapshot.version, snapshot.position, snapshot.schema, snapshot.data)

        def save(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO snapshots (stream, version, position, schema, data)"
                    " VALUES (?, ?, ?, ?, ?)",
                    row,
                )

        await self._write(save)

    async def load_snapshot(
        self, stream: str, until_position: int | None = None
    ) -> Snapshot | None:
        """The stream's newest snapshot, or the newest at or before `until_position`."""
        sql = "SELECT stream, version, position, schema, data FROM snapshots WHERE stream = ?"
        params: tuple[object, ...] = (stream,)
        if until_position is not None:
            sql += " AND position <= ?"
            params = (stream, until_position)
        sql += " ORDER BY version DESC LIMIT 1"

        def load(conn: sqlite3.Connection) -> Snapshot | None:
            row = conn.execute(sql, params).fetchone()
            if row is None:
                return None
            return Snapshot(
                stream=row[0], version=row[1], position=row[2], schema=row[3], data=row[4]
            )

        return await self._read(load)

    # -- lifecycle -----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the event store is closed")

    async def close(self) -> None:
        """Finish the appends already queued, stop both threads and close the connections;
        subscriptions end."""
        if self._closed:
            return
        self._closed = True
        self._notifier.notify()
        for worker in (self._writer, self._reader):
            if worker.thread.is_alive():
                with contextlib.suppress(Exception):
                    await worker.submit(lambda conn: None, stop=True)
            worker.thread.join(timeout=5)


class SqliteProjections:
    """The projection port in the store's file: `projection_rows` and
    `projection_checkpoints`, changed together in one transaction on the writer thread."""

    def __init__(self, store: SqliteEventStore) -> None:
        self._store = store

    async def commit(
        self,
        name: str,
        expected_checkpoint: int,
        new_checkpoint: int,
        upserts: Mapping[str, bytes],
        deletes: Collection[str] = (),
    ) -> None:
        """Write the rows and move the checkpoint in one durable transaction (see
        `ProjectionStore.commit`)."""
        check_commit(name, expected_checkpoint, new_checkpoint, upserts, deletes)
        rows = [(name, key, value) for key, value in upserts.items()]
        gone = [(name, key) for key in deletes]

        def commit(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                found = conn.execute(
                    "SELECT position FROM projection_checkpoints WHERE name = ?", (name,)
                ).fetchone()
                actual = 0 if found is None else int(found[0])
                if actual != expected_checkpoint:
                    raise CheckpointConflictError(name, expected_checkpoint, actual)
                conn.executemany(
                    "INSERT OR REPLACE INTO projection_rows (name, key, value) VALUES (?, ?, ?)",
                    rows,
                )
                conn.executemany("DELETE FROM projection_rows WHERE name = ? AND key = ?", gone)
                conn.execute(
                    "INSERT OR REPLACE INTO projection_checkpoints (name, position) VALUES (?, ?)",
                    (name, new_checkpoint),
                )

        await self._store._write(commit)

    async def checkpoint(self, name: str) -> int:
        """The position of the last event the projection applied, 0 if none."""
        check_projection_name(name)
        found = await self._store._read(
            lambda conn: conn.execute(
                "SELECT position FROM projection_checkpoints WHERE name = ?", (name,)
            ).fetchone()
        )
        return 0 if found is None else int(found[0])

    async def get(self, name: str, key: str) -> bytes | None:
        """One row, `None` if absent."""
        check_projection_name(name)
        found = await self._store._read(
            lambda conn: conn.execute(
                "SELECT value FROM projection_rows WHERE name = ? AND key = ?", (name, key)
            ).fetchone()
        )
        return None if found is None else bytes(found[0])

    async def items(self, name: str, prefix: str = "") -> list[tuple[str, bytes]]:
        """The rows whose key starts with `prefix`, sorted by key."""
        check_projection_name(name)
        return await self._store._read(
            lambda conn: [
                (row[0], bytes(row[1]))
                for row in conn.execute(
                    "SELECT key, value FROM projection_rows WHERE name = ?1"
                    " AND substr(key, 1, length(?2)) = ?2 ORDER BY key",
                    (name, prefix),
                )
            ]
        )


@contextlib.contextmanager
def _transaction(conn: sqlite3.Connection) -> Any:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any error."""
    if conn.in_transaction:
        conn.execute("ROLLBACK")
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        raise


def _insert_sql(rows: int) -> str:
    """One INSERT of `rows` rows: far fewer VM steps (and GIL hand-offs) than executemany."""
    return f"INSERT INTO events ({_COLUMNS}) VALUES " + ", ".join([_ROW] * rows)


_ROW: Final = f"({', '.join('?' * 15)})"
_INSERT_ROWS: Final = 100  # rows per INSERT: 1,500 variables, far under SQLite's 32,766
_INSERT_FULL: Final = _insert_sql(_INSERT_ROWS)


def _known(conn: sqlite3.Connection, ids: list[str]) -> dict[str, StoredEvent]:
    """The stored events among `ids`."""
    known: dict[str, StoredEvent] = {}
    for start in range(0, len(ids), _ID_CHUNK):
        chunk = ids[start : start + _ID_CHUNK]
        cursor = conn.execute(f"{_SELECT} WHERE event_id IN ({', '.join('?' * len(chunk))})", chunk)
        known.update((e.event_id, e) for e in _events(cursor))
    return known


def _retry_or_duplicate(conn: sqlite3.Connection, request: _Request) -> list[StoredEvent] | None:
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
    conn: sqlite3.Connection, request: _Request, position: int, prev_hash: str
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


def _connect(
    path: Path, busy_timeout_ms: int, max_size_bytes: int | None
) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """Open and configure the writer and reader connections (in a worker thread)."""
    writer: sqlite3.Connection | None = None
    reader: sqlite3.Connection | None = None
    try:
        writer = _configured(path, busy_timeout_ms)
        if max_size_bytes is not None:
            page_size = int(writer.execute("PRAGMA page_size").fetchone()[0])
            pages = max(1, -(-max_size_bytes // page_size))
            writer.execute(f"PRAGMA max_page_count = {pages}")
        _ensure_schema(writer, path)
        reader = _configured(path, busy_timeout_ms)
        reader.execute("PRAGMA query_only = ON")
    except BaseException as e:
        for conn in (reader, writer):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        if isinstance(e, (*_DRIVER_ERRORS, OSError)):
            raise StorageError(f"cannot open event store {path}: {e}") from e
        raise
    return writer, reader


def _configured(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # busy_timeout first, so the statements after it wait for another process's lock.
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"cannot switch the journal to WAL (it is {mode!r})")
        conn.execute("PRAGMA synchronous = FULL")
    except BaseException:
        conn.close()
        raise
    return conn


def _scalar_of(conn: sqlite3.Connection, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def _ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    has_table = _scalar_of(
        conn, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'"
    )
    app_id = _scalar_of(conn, "PRAGMA application_id")
    if not has_table:
        tables = _scalar_of(conn, "SELECT count(*) FROM sqlite_master")
        if tables or app_id not in (0, APPLICATION_ID):
            raise StorageError(f"{path} is a SQLite database, but not a Baton event store")
        with _transaction(conn):
            for statement in (*_SCHEMA_V1, *_UPGRADE_V2):
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return
    version = _scalar_of(conn, "PRAGMA user_version")
    if app_id != APPLICATION_ID or version not in (1, SCHEMA_VERSION):
        raise StorageError(
            f"{path} is not a Baton event store of schema {SCHEMA_VERSION} "
            f"(application_id={app_id}, user_version={version})"
        )
    if version == 1:
        with _transaction(conn):
            if _scalar_of(conn, "PRAGMA user_version") == 1:  # nobody upgraded it meanwhile
                for statement in _UPGRADE_V2:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
