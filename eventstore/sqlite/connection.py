"""Opening the file: the writer's and the reader's connections, each in WAL mode with
`synchronous=FULL` and a busy timeout, the optional size cap, and the schema check."""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

from eventstore.errors import StorageError
from eventstore.sqlite.schema import ensure_schema
from eventstore.sqlite.sql import DRIVER_ERRORS


def connect(
    path: Path, busy_timeout_ms: int, max_size_bytes: int | None
) -> tuple[sqlite3.Connection, sqlite3.Connection]:
    """Open and configure the writer and reader connections (in a worker thread)."""
    writer: sqlite3.Connection | None = None
    reader: sqlite3.Connection | None = None
    try:
        writer = configured(path, busy_timeout_ms)
        if max_size_bytes is not None:
            page_size = int(writer.execute("PRAGMA page_size").fetchone()[0])
            pages = max(1, -(-max_size_bytes // page_size))
            writer.execute(f"PRAGMA max_page_count = {pages}")
        ensure_schema(writer, path)
        reader = configured(path, busy_timeout_ms)
        reader.execute("PRAGMA query_only = ON")
    except BaseException as e:
        for conn in (reader, writer):
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()
        if isinstance(e, (*DRIVER_ERRORS, OSError)):
            raise StorageError(f"cannot open event store {path}: {e}") from e
        raise
    return writer, reader


def configured(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
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
