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

The modules, one job each:

- `store`: `SqliteEventStore`, the public face, composing the parts below.
- `schema`: the tables, the file's marks, the column order and the row-to-event mapping.
- `connection`: opening and configuring the two connections.
- `sql`: the driver's errors as `StorageError`, and the `BEGIN IMMEDIATE` transaction.
- `worker`: a thread that owns one connection and runs queued work (the reader).
- `writer`: the writer thread (group commit, savepoints) and the SQL of one append.
- `reader`: reads, queries, subscriptions and the chain audit.
- `snapshots`, `projections`: the snapshot table and the projection port.
- `blobs`: the blob port, in a SQLite file of its own beside the log's.
"""

from eventstore.sqlite.projections import SqliteProjections
from eventstore.sqlite.store import SqliteEventStore

__all__ = ["SqliteEventStore", "SqliteProjections"]
