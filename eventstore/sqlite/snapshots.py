"""Snapshots in the store's file: the `snapshots` table, written on the writer thread in a
transaction of its own and read on the reader thread."""

from __future__ import annotations

import sqlite3

from eventstore._common import check_snapshot
from eventstore.model import Snapshot
from eventstore.sqlite.sql import transaction
from eventstore.sqlite.worker import Worker
from eventstore.sqlite.writer import LogWriter


class Snapshots:
    """`save_snapshot` and `load_snapshot` of the store, over its two threads."""

    def __init__(self, writer: LogWriter, reader: Worker) -> None:
        self._writer = writer
        self._reader = reader

    async def save(self, snapshot: Snapshot) -> None:
        check_snapshot(snapshot)
        row = (snapshot.stream, snapshot.version, snapshot.position, snapshot.schema, snapshot.data)

        def save(conn: sqlite3.Connection) -> None:
            with transaction(conn):
                conn.execute(
                    "INSERT OR REPLACE INTO snapshots (stream, version, position, schema, data)"
                    " VALUES (?, ?, ?, ?, ?)",
                    row,
                )

        await self._writer.call(save)

    async def load(self, stream: str, until_position: int | None = None) -> Snapshot | None:
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

        return await self._reader.call(load)
