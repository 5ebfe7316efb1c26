"""The read side: reads, queries, subscriptions and the chain audit.

Each read runs whole on the reader thread (query, fetch, building the `StoredEvent`s) and
answers once; in WAL mode it sees only committed data and never waits for the writer.
"""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Collection, Mapping, Sequence
from typing import Any, Final

from eventstore._common import check_limit, check_open, check_query, glob_to_sqlite
from eventstore._subscription import Notifier, catch_up
from eventstore.chain import ChainVerifier
from eventstore.model import EventQuery, EventRow, StoredEvent, VerifyReport
from eventstore.sqlite.schema import FETCH_CHUNK, SELECT, events_of
from eventstore.sqlite.worker import Worker

_VERIFY_CHUNK: Final = 20_000
_SUBSCRIPTION_POLL: Final = 1.0  # seconds; catches appends by other processes
_NAMES: Final = """
    WITH RECURSIVE names(name) AS (
        SELECT MIN(stream) FROM events WHERE stream >= ?1
        UNION ALL
        SELECT (SELECT MIN(stream) FROM events WHERE stream > names.name)
        FROM names
        WHERE names.name IS NOT NULL AND substr(names.name, 1, ?2) = ?1
    )
    SELECT name FROM names WHERE name IS NOT NULL AND substr(name, 1, ?2) = ?1
"""
"""Stream names with the prefix ?1 (of length ?2), sorted. It hops from one name to the
next through the (stream, version) index, so the cost grows with the number of streams,
not of events."""


class LogReader:
    """The log's reads, run on the reader thread `thread`; each method is the `EventStore`
    method of the same name. `notifier` hears of this store's commits; `is_closed` ends
    subscriptions."""

    def __init__(self, thread: Worker, notifier: Notifier, is_closed: Callable[[], bool]) -> None:
        self._thread = thread
        self._notifier = notifier
        self._is_closed = is_closed

    async def _select(self, sql: str, params: Sequence[object] = ()) -> list[StoredEvent]:
        return await self._thread.call(lambda conn: events_of(conn.execute(sql, params)))

    async def _scalar(self, sql: str, params: Sequence[object] = ()) -> Any:
        return await self._thread.call(lambda conn: conn.execute(sql, params).fetchone()[0])

    async def read_stream(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[StoredEvent]:
        if until_position is None:
            return await self._select(
                f"{SELECT} WHERE stream = ? AND version >= ? ORDER BY version",
                (stream, from_version),
            )
        return await self._select(
            f"{SELECT} WHERE stream = ? AND version >= ? AND position <= ? ORDER BY version",
            (stream, from_version, until_position),
        )

    async def read_stream_rows(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[EventRow]:
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
            while chunk := cursor.fetchmany(FETCH_CHUNK):
                found.extend(chunk)
            return found

        return await self._thread.call(rows)

    async def read_all(self, from_position: int = 1, limit: int | None = None) -> list[StoredEvent]:
        check_limit(limit)
        return await self._select(
            f"{SELECT} WHERE position >= ? ORDER BY position LIMIT ?",
            (from_position, -1 if limit is None else limit),
        )

    async def stream_version(self, stream: str) -> int:
        return int(
            await self._scalar(
                "SELECT COALESCE(MAX(version), 0) FROM events WHERE stream = ?", (stream,)
            )
        )

    async def last_position(self) -> int:
        return int(await self._scalar("SELECT COALESCE(MAX(position), 0) FROM events"))

    async def streams(self, prefix: str = "") -> list[str]:
        params = (prefix, len(prefix))
        return await self._thread.call(
            lambda conn: [row[0] for row in conn.execute(_NAMES, params)]
        )

    async def open_streams(self, prefix: str, closed_by: Collection[str]) -> list[str]:
        closing = sorted(set(closed_by))
        if not closing:
            return await self.streams(prefix)
        marks = ", ".join("?" for _ in closing)
        # One statement on the reader thread: per stream, one index seek to its last
        # event (a closed stream usually ends with its closing event, and is done with);
        # only the others are searched for a closing event further back (`+type` keeps
        # that search on the stream's own index rather than on all events of the type).
        sql = f"""{_NAMES} AND (
                SELECT type FROM events WHERE stream = name ORDER BY version DESC LIMIT 1
            ) NOT IN ({marks})
            AND NOT EXISTS (
                SELECT 1 FROM events WHERE stream = name AND +type IN ({marks})
            )
        """
        params = (prefix, len(prefix), *closing, *closing)
        return await self._thread.call(lambda conn: [row[0] for row in conn.execute(sql, params)])

    async def query(self, query: EventQuery) -> list[StoredEvent]:
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
            f"{SELECT} WHERE {' AND '.join(clauses)} ORDER BY position LIMIT ?", params
        )

    def subscribe(self, from_position: int) -> AsyncIterator[StoredEvent]:
        check_open(self._is_closed())
        return catch_up(
            self.read_all,
            self._notifier,
            from_position,
            self._is_closed,
            poll_seconds=_SUBSCRIPTION_POLL,
        )

    async def verify(self, checkpoints: Mapping[int, str] | None = None) -> VerifyReport:
        end = await self.last_position()
        verifier = ChainVerifier(checkpoints)
        after = 0
        while not verifier.settled:
            chunk = await self._select(
                f"{SELECT} WHERE position > ? AND position <= ? ORDER BY position LIMIT ?",
                (after, end, _VERIFY_CHUNK),
            )
            if not chunk:
                break
            verifier.feed(chunk)
            after = chunk[-1].position
        return verifier.finish()
