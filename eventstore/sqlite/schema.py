"""The file's layout: the tables of schema 3 (and the upgrades from 1 and 2), the marks that
say a file is a Baton event store, and the order of the events table's columns, which every
query, every insert and the row-to-event mapping share."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, Final

from eventstore.errors import StorageError
from eventstore.model import StoredEvent
from eventstore.sqlite.sql import transaction

APPLICATION_ID: Final = 0x4241544E  # "BATN": marks a file as a Baton event store
SCHEMA_VERSION: Final = 3

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
UPGRADE_V2: Final = (
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
# Schema 3 binds each snapshot to the hash chain (see `chain.seal_snapshot`). Snapshots
# saved before carry no binding and are dropped: they are only shortcuts, and the events
# rebuild the same states.
UPGRADE_V3: Final = (
    "DELETE FROM snapshots",
    "ALTER TABLE snapshots ADD COLUMN event_hash TEXT NOT NULL DEFAULT ''",
    "ALTER TABLE snapshots ADD COLUMN digest TEXT NOT NULL DEFAULT ''",
)
SCHEMA_V1: Final = (
    _EVENTS_V1,
    "CREATE INDEX IF NOT EXISTS events_correlation_id ON events (correlation_id)",
    "CREATE INDEX IF NOT EXISTS events_actor ON events (actor)",
    "CREATE INDEX IF NOT EXISTS events_type ON events (type)",
)

COLUMNS: Final = (
    "position, stream, version, event_id, type, data, schema, recorded_at, correlation_id, "
    "causation_id, actor, trace_id, span_id, prev_hash, hash"
)
"""The events table's columns in the order `to_event` reads and the writer inserts them."""
SELECT: Final = f"SELECT {COLUMNS} FROM events"

FETCH_CHUNK: Final = 10_000  # rows turned into events at a time, bounding peak memory


def to_event(row: Any) -> StoredEvent:
    """One row of `SELECT` as an event."""
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


def events_of(cursor: sqlite3.Cursor) -> list[StoredEvent]:
    """Every row of `cursor` as events, converting chunk by chunk to bound memory."""
    found: list[StoredEvent] = []
    while rows := cursor.fetchmany(FETCH_CHUNK):
        found.extend(map(to_event, rows))
    return found


def _scalar_of(conn: sqlite3.Connection, sql: str) -> Any:
    row = conn.execute(sql).fetchone()
    return None if row is None else row[0]


def ensure_schema(conn: sqlite3.Connection, path: Path) -> None:
    """Create the tables in a new file, upgrade a schema-1 file in place, and refuse a
    file that is not a Baton event store (`StorageError`)."""
    has_table = _scalar_of(
        conn, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'"
    )
    app_id = _scalar_of(conn, "PRAGMA application_id")
    if not has_table:
        tables = _scalar_of(conn, "SELECT count(*) FROM sqlite_master")
        if tables or app_id not in (0, APPLICATION_ID):
            raise StorageError(f"{path} is a SQLite database, but not a Baton event store")
        with transaction(conn):
            for statement in (*SCHEMA_V1, *UPGRADE_V2, *UPGRADE_V3):
                conn.execute(statement)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        return
    version = _scalar_of(conn, "PRAGMA user_version")
    if app_id != APPLICATION_ID or version not in _UPGRADES_FROM:
        raise StorageError(
            f"{path} is not a Baton event store of schema {SCHEMA_VERSION} "
            f"(application_id={app_id}, user_version={version})"
        )
    if version != SCHEMA_VERSION:
        with transaction(conn):
            # read again inside the transaction: another process may have upgraded it
            current = _scalar_of(conn, "PRAGMA user_version")
            for statement in _UPGRADES_FROM.get(current, ()):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


_UPGRADES_FROM: Final = {1: (*UPGRADE_V2, *UPGRADE_V3), 2: UPGRADE_V3, SCHEMA_VERSION: ()}
"""The statements that bring a file of each schema this code can open up to date."""
