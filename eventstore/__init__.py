"""Baton's event store: the append-only, hash-chained log that is the single source of truth.

Every state change of a run is an event appended here with an expected stream version;
the orchestrator rebuilds its state by replaying streams, auditors walk the global order
and `verify()` proves no stored event was changed, dropped or moved; checked against the
signed checkpoints `eventstore.anchor` keeps outside the store, it also catches a cut tail
and a chain rewritten with its hashes recomputed. Snapshots are bound to the chain and
used only while they still fit it. Callers depend on the
`EventStore` protocol; `SqliteEventStore` is the durable embedded backend and
`MemoryEventStore` the in-memory one for pure tests. Each keeps large values beside the
log as content-addressed blobs (`store.blobs`, see `eventstore.blobs`). This package
imports nothing else from the project.
"""

from eventstore.blobs import (
    BlobInfo,
    BlobMismatchError,
    BlobNotFoundError,
    BlobStore,
    digest_of,
)
from eventstore.chain import GENESIS, verify_chain
from eventstore.errors import (
    AnchorError,
    CheckpointConflictError,
    ConcurrencyError,
    DuplicateEventError,
    EventStoreError,
    InvalidEventError,
    StorageError,
)
from eventstore.jetstream import JetStreamEventStore
from eventstore.memory import MemoryEventStore
from eventstore.model import (
    EventQuery,
    EventRow,
    NewEvent,
    Snapshot,
    SnapshotCheck,
    StoredEvent,
    VerifyReport,
)
from eventstore.projection import Projection, ProjectionStore, ProjectionView, Projector
from eventstore.sqlite import SqliteEventStore
from eventstore.store import EventStore

__all__ = [
    "GENESIS",
    "AnchorError",
    "BlobInfo",
    "BlobMismatchError",
    "BlobNotFoundError",
    "BlobStore",
    "CheckpointConflictError",
    "ConcurrencyError",
    "DuplicateEventError",
    "EventQuery",
    "EventRow",
    "EventStore",
    "EventStoreError",
    "InvalidEventError",
    "JetStreamEventStore",
    "MemoryEventStore",
    "NewEvent",
    "Projection",
    "ProjectionStore",
    "ProjectionView",
    "Projector",
    "Snapshot",
    "SnapshotCheck",
    "SqliteEventStore",
    "StorageError",
    "StoredEvent",
    "VerifyReport",
    "digest_of",
    "verify_chain",
]
