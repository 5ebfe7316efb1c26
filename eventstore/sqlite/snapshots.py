"""Snapshots in the store's file: the `snapshots` table, written on the writer thread in a
transaction of its own (which also reads the event the snapshot is bound to) and read and
checked against the log on the reader thread."""

from __future__ import annotations

import functools
import sqlite3
from typing import Any, Final

from eventstore._common import check_snapshot, snapshot_check, snapshot_usable
from eventstore.chain import SnapshotSeal, seal_snapshot
from eventstore.model import Snapshot, SnapshotCheck, StoredEvent
from eventstore.sqlite.schema import SELECT, to_event
from eventstore.sqlite.sql import transaction
from eventstore.sqlite.worker import Worker
from eventstore.sqlite.writer import LogWriter

_COLUMNS: Final = "stream, version, position, schema, data, event_hash, digest"
_CHUNK: Final = 64  # snapshots checked at a time by `verify`, bounding memory


def _event_at(conn: sqlite3.Connection, position: int) -> StoredEvent | None:
    row = conn.execute(f"{SELECT} WHERE position = ?", (position,)).fetchone()
    return None if row is None else to_event(row)


def _check_page(conn: sqlite3.Connection, after: tuple[str, int]) -> list[SnapshotCheck]:
    """The next `_CHUNK` snapshots after (stream, version) `after`, each checked."""
    rows = conn.execute(
        f"SELECT {_COLUMNS} FROM snapshots WHERE (stream, version) > (?, ?)"
        " ORDER BY stream, version LIMIT ?",
        (*after, _CHUNK),
    ).fetchall()
    checks = []
    for row in rows:
        snapshot, sealed = _stored(row)
        checks.append(snapshot_check(snapshot, sealed, _event_at(conn, snapshot.position)))
    return checks


def _stored(row: Any) -> tuple[Snapshot, SnapshotSeal]:
    snapshot = Snapshot(stream=row[0], version=row[1], position=row[2], schema=row[3], data=row[4])
    return snapshot, SnapshotSeal(row[5], row[6])


class Snapshots:
    """`save_snapshot`, `load_snapshot` and `verify_snapshots` of the store, over its two
    threads."""

    def __init__(self, writer: LogWriter, reader: Worker) -> None:
        self._writer = writer
        self._reader = reader

    async def save(self, snapshot: Snapshot) -> None:
        check_snapshot(snapshot)

        def save(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                sealed = seal_snapshot(snapshot, _event_at(conn, snapshot.position))
                conn.execute(
                    f"INSERT OR REPLACE INTO snapshots ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        snapshot.stream,
                        snapshot.version,
                        snapshot.position,
                        snapshot.schema,
                        snapshot.data,
                        sealed.event_hash,
                        sealed.digest,
                    ),
                )

        await self._writer.call(save)

    async def load(self, stream: str, until_position: int | None = None) -> Snapshot | None:
        sql = f"SELECT {_COLUMNS} FROM snapshots WHERE stream = ?"
        params: tuple[object, ...] = (stream,)
        if until_position is not None:
            sql += " AND position <= ?"
            params = (stream, until_position)
        sql += " ORDER BY version DESC"

        def load(conn: sqlite3.Connection) -> Snapshot | None:
            # newest first; the first one still bound to the log wins (usually the first)
            for row in conn.execute(sql, params):
                snapshot, sealed = _stored(row)
                if snapshot_usable(snapshot, sealed, _event_at(conn, snapshot.position)):
                    return snapshot
            return None

        return await self._reader.call(load)

    async def verify(self) -> list[SnapshotCheck]:
        checks: list[SnapshotCheck] = []
        after: tuple[str, int] = ("", -1)
        while True:
            chunk = await self._reader.call(functools.partial(_check_page, after=after))
            checks += chunk
            if len(chunk) < _CHUNK:
                return checks
            after = (chunk[-1].stream, chunk[-1].version)
