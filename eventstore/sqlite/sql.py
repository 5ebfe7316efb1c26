"""What every part of the SQLite backend needs from the driver: which errors mean a broken
file, how they become a `StorageError`, and the `BEGIN IMMEDIATE` transaction."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from typing import Final

from eventstore.errors import StorageError

# What the driver raises for a broken file; text that is not UTF-8 (a corrupt or
# hand-edited row) surfaces as UnicodeDecodeError rather than sqlite3.Error.
DRIVER_ERRORS: Final = (sqlite3.Error, UnicodeDecodeError)


def storage_error(action: str, error: BaseException) -> StorageError:
    """`error` (from the driver, or a bug) as the `StorageError` the caller hears."""
    failure = StorageError(f"{action} failed: {error}")
    failure.__cause__ = error
    return failure


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
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
