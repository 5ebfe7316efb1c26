"""Typed errors of the event store: every failure a caller can act on has its own class."""

from __future__ import annotations


class EventStoreError(Exception):
    """Root of every error the event store raises."""


class ConcurrencyError(EventStoreError):
    """An append named an expected version that is not the stream's current version."""

    def __init__(self, stream: str, expected: int, actual: int) -> None:
        super().__init__(f"stream {stream!r}: expected version {expected}, but it is at {actual}")
        self.stream = stream
        self.expected = expected
        self.actual = actual


class DuplicateEventError(EventStoreError):
    """A batch mixes event ids already stored with new ones, so it is neither a retry nor new."""

    def __init__(self, stream: str, event_ids: list[str]) -> None:
        super().__init__(
            f"stream {stream!r}: batch partly repeats stored event ids {event_ids[:3]!r}"
        )
        self.stream = stream
        self.event_ids = event_ids


class InvalidEventError(EventStoreError):
    """An event or stream name that the store refuses before touching storage."""


class StorageError(EventStoreError):
    """The backend failed (corrupt file, disk full, read-only directory); nothing was applied."""


class CheckpointConflictError(EventStoreError):
    """A projection commit named a checkpoint that is not the one stored: another runner
    (or an earlier life of this one) has moved it, so this batch must not be applied."""

    def __init__(self, name: str, expected: int, actual: int) -> None:
        super().__init__(
            f"projection {name!r}: expected checkpoint {expected}, but it is at {actual}"
        )
        self.name = name
        self.expected = expected
        self.actual = actual


class AnchorError(EventStoreError):
    """A checkpoint key that cannot be read or made, or an anchor that cannot be written."""
