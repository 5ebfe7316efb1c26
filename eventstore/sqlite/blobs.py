"""The blob port (`BlobStore`) of the SQLite backend: a second SQLite file beside the log's
(`events.db` → `events.blobs.db`), made private (0600) before SQLite opens it, in WAL mode
with `synchronous=FULL`, written and read on threads of its own.

A file of its own, not a table in the log's: a 20 MB put then never holds the log's writer
thread (and every append queued behind it) for its fsync, and the log's file, which every
replay and audit reads, stays the size of its events. The file is made on the first put;
reads before it find nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path
from typing import Any, Final

import private
from eventstore._common import check_open
from eventstore.blobs import (
    DEFAULT_MEDIA_TYPE,
    BlobInfo,
    BlobNotFoundError,
    check_digest,
    checked_get,
    checked_put,
)
from eventstore.errors import StorageError
from eventstore.sqlite.connection import configured
from eventstore.sqlite.sql import DRIVER_ERRORS, transaction
from eventstore.sqlite.worker import Worker

__all__ = ["SqliteBlobs", "blob_path"]

APPLICATION_ID: Final = 0x4254424C  # "BTBL": marks a file as a Baton blob store
SCHEMA_VERSION: Final = 1
_SCHEMA: Final = """
    CREATE TABLE IF NOT EXISTS blobs (
        id         INTEGER PRIMARY KEY,
        digest     TEXT    NOT NULL UNIQUE,
        size       INTEGER NOT NULL,
        media_type TEXT    NOT NULL,
        stored_at  REAL    NOT NULL,
        data       BLOB    NOT NULL
    )
"""
_INFO: Final = "SELECT digest, size, media_type, stored_at FROM blobs"


def blob_path(log_path: Path) -> Path:
    """The blob file beside the log file `log_path` (`events.db` → `events.blobs.db`)."""
    return log_path.with_name(f"{log_path.stem}.blobs{log_path.suffix or '.db'}")


def _info(row: Any) -> BlobInfo:
    return BlobInfo(digest=row[0], size=row[1], media_type=row[2], stored_at=row[3])


def _open(path: Path, busy_timeout_ms: int) -> sqlite3.Connection:
    conn = configured(path, busy_timeout_ms)
    try:
        app_id = conn.execute("PRAGMA application_id").fetchone()[0]
        tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        if app_id != APPLICATION_ID and (app_id or tables):
            raise StorageError(f"{path} is a SQLite database, but not a Baton blob store")
        if app_id != APPLICATION_ID:
            with transaction(conn):
                conn.execute(_SCHEMA)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        elif conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            raise StorageError(f"{path} is a Baton blob store of another schema")
    except BaseException as e:
        conn.close()
        if isinstance(e, DRIVER_ERRORS):
            raise StorageError(f"cannot open blob store {path}: {e}") from e
        raise
    return conn


class _BlobWriter(Worker):
    role = "blob-writer"
    action = "blob write"


class _BlobReader(Worker):
    role = "blob-reader"
    action = "blob read"


def _put(conn: sqlite3.Connection, info: BlobInfo, data: bytes) -> BlobInfo:
    with transaction(conn):
        found = conn.execute(f"{_INFO} WHERE digest = ?", (info.digest,)).fetchone()
        if found is not None:
            conn.execute(
                "UPDATE blobs SET stored_at = ? WHERE digest = ?", (info.stored_at, info.digest)
            )
            return BlobInfo(
                digest=info.digest, size=found[1], media_type=found[2], stored_at=info.stored_at
            )
        conn.execute(
            "INSERT INTO blobs (digest, size, media_type, stored_at, data) VALUES (?, ?, ?, ?, ?)",
            (info.digest, info.size, info.media_type, info.stored_at, data),
        )
    return info


def _delete(conn: sqlite3.Connection, digest: str, before: float | None) -> bool:
    with transaction(conn):
        if before is None:
            cursor = conn.execute("DELETE FROM blobs WHERE digest = ?", (digest,))
        else:
            cursor = conn.execute(
                "DELETE FROM blobs WHERE digest = ? AND stored_at < ?", (digest, before)
            )
        return cursor.rowcount > 0


class SqliteBlobs:
    """Blobs in the SQLite file `path` (see the module's docs); opened on first use."""

    def __init__(self, path: Path, busy_timeout_ms: int = 5_000) -> None:
        self._path = path
        self._busy_timeout_ms = busy_timeout_ms
        self._closed = False
        self._lock = asyncio.Lock()
        self._writer: Worker | None = None
        self._reader: Worker | None = None

    @property
    def path(self) -> Path:
        """The blob file."""
        return self._path

    def _is_closed(self) -> bool:
        return self._closed

    async def _threads(self, create: bool) -> tuple[Worker, Worker] | None:
        """The writer and reader threads, opening the file first (making it, with
        `create`); `None` if there is no file and `create` is false."""
        check_open(self._closed)
        if self._writer is not None and self._reader is not None:
            return self._writer, self._reader
        async with self._lock:
            check_open(self._closed)
            if self._writer is None or self._reader is None:
                if not create and not self._path.exists():
                    return None
                try:
                    private.make_dir(self._path.parent)
                    private.touch(self._path)  # 0600 before SQLite makes it (0644)
                except OSError as e:
                    raise StorageError(f"cannot open blob store {self._path}: {e}") from e
                path, wait = self._path, self._busy_timeout_ms
                writer = await asyncio.to_thread(_open, path, wait)
                try:
                    reader = await asyncio.to_thread(configured, path, wait)
                except BaseException:
                    writer.close()
                    raise
                self._writer = _BlobWriter(path.name, writer, self._is_closed)
                self._reader = _BlobReader(path.name, reader, self._is_closed)
                self._writer.start()
                self._reader.start()
            return self._writer, self._reader

    async def put(
        self, data: bytes, media_type: str = DEFAULT_MEDIA_TYPE, *, digest: str | None = None
    ) -> BlobInfo:
        """Store `data` once, durably (see `BlobStore.put`)."""
        raw, actual = checked_put(data, media_type, digest)
        threads = await self._threads(create=True)
        assert threads is not None
        info = BlobInfo(digest=actual, size=len(raw), media_type=media_type, stored_at=time.time())
        return await threads[0].call(lambda conn: _put(conn, info, raw))

    async def get(self, digest: str) -> bytes:
        """The blob's bytes, checked against `digest` (see `BlobStore.get`)."""
        check_digest(digest)
        threads = await self._threads(create=False)
        if threads is None:
            raise BlobNotFoundError(digest)
        row = await threads[1].call(
            lambda conn: conn.execute(
                "SELECT data FROM blobs WHERE digest = ?", (digest,)
            ).fetchone()
        )
        if row is None:
            raise BlobNotFoundError(digest)
        return checked_get(digest, bytes(row[0]))

    async def info(self, digest: str) -> BlobInfo | None:
        """What is known of the blob, `None` if it is not stored."""
        check_digest(digest)
        threads = await self._threads(create=False)
        if threads is None:
            return None
        row = await threads[1].call(
            lambda conn: conn.execute(f"{_INFO} WHERE digest = ?", (digest,)).fetchone()
        )
        return None if row is None else _info(row)

    async def list(self) -> list[BlobInfo]:
        """Every stored blob, by digest."""
        threads = await self._threads(create=False)
        if threads is None:
            return []
        rows = await threads[1].call(
            lambda conn: conn.execute(f"{_INFO} ORDER BY digest").fetchall()
        )
        return [_info(row) for row in rows]

    async def delete(self, digest: str, stored_before: float | None = None) -> bool:
        """Remove the blob (see `BlobStore.delete`)."""
        check_digest(digest)
        threads = await self._threads(create=False)
        if threads is None:
            return False
        return await threads[0].call(lambda conn: _delete(conn, digest, stored_before))

    async def close(self) -> None:
        """Stop both threads and close the file; further calls fail."""
        if self._closed:
            return
        async with self._lock:
            self._closed = True
            for worker in (self._writer, self._reader):
                if worker is not None:
                    with contextlib.suppress(Exception):
                        await worker.stop()
