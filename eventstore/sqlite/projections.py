"""The projection port (`ProjectionStore`) in the store's file, so a projection's rows and
its checkpoint change in one transaction with nothing else in between."""

from __future__ import annotations

import sqlite3
from collections.abc import Collection, Mapping

from eventstore.errors import CheckpointConflictError
from eventstore.projection import check_commit, check_projection_name
from eventstore.sqlite.sql import transaction
from eventstore.sqlite.worker import Worker
from eventstore.sqlite.writer import LogWriter

__all__ = ["SqliteProjections"]


class SqliteProjections:
    """The projection port in the store's file: `projection_rows` and
    `projection_checkpoints`, changed together in one transaction on the writer thread."""

    def __init__(self, writer: LogWriter, reader: Worker) -> None:
        self._writer = writer
        self._reader = reader

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
            with transaction(conn):
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

        await self._writer.call(commit)

    async def checkpoint(self, name: str) -> int:
        """The position of the last event the projection applied, 0 if none."""
        check_projection_name(name)
        found = await self._reader.call(
            lambda conn: conn.execute(
                "SELECT position FROM projection_checkpoints WHERE name = ?", (name,)
            ).fetchone()
        )
        return 0 if found is None else int(found[0])

    async def get(self, name: str, key: str) -> bytes | None:
        """One row, `None` if absent."""
        check_projection_name(name)
        found = await self._reader.call(
            lambda conn: conn.execute(
                "SELECT value FROM projection_rows WHERE name = ? AND key = ?", (name, key)
            ).fetchone()
        )
        return None if found is None else bytes(found[0])

    async def items(self, name: str, prefix: str = "") -> list[tuple[str, bytes]]:
        """The rows whose key starts with `prefix`, sorted by key."""
        check_projection_name(name)
        return await self._reader.call(
            lambda conn: [
                (row[0], bytes(row[1]))
                for row in conn.execute(
                    "SELECT key, value FROM projection_rows WHERE name = ?1"
                    " AND substr(key, 1, length(?2)) = ?2 ORDER BY key",
                    (name, prefix),
                )
            ]
        )
