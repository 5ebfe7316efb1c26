"""The envelope the store keeps around every event: domain-agnostic, so the store never
needs to know what an event means, only who caused it, where it belongs and its place in
the global, hash-chained order."""

from __future__ import annotations

import msgspec


class NewEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event on its way into the store; `data` is already encoded by its owner."""

    event_id: str
    type: str
    data: bytes
    schema: int = 1
    """The version of `type`'s shape that `data` has; readers upcast older ones."""
    correlation_id: str = ""
    causation_id: str = ""
    actor: str = ""
    trace_id: str = ""
    span_id: str = ""


class StoredEvent(msgspec.Struct, frozen=True, kw_only=True):
    """An event as stored: with its stream version, global position, time and hash link."""

    position: int
    stream: str
    version: int
    event_id: str
    type: str
    data: bytes
    schema: int
    recorded_at: float
    correlation_id: str
    causation_id: str
    actor: str
    trace_id: str
    span_id: str
    prev_hash: str
    hash: str


class EventQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Filters for audit reads; every field left at its default matches everything."""

    stream: str | None = None
    correlation_id: str | None = None
    actor: str | None = None
    type_glob: str | None = None
    text: str | None = None
    """Substring of the payload bytes (UTF-8 text in msgpack or JSON payloads)."""
    since: float | None = None
    """Only events recorded at or after this Unix time."""
    until: float | None = None
    """Only events recorded before this Unix time."""
    from_position: int = 1
    to_position: int | None = None
    """Only events at or before this global position."""
    limit: int | None = None


EventRow = tuple[int, int, str, int, bytes]
"""What a fold needs of a stored event, as a plain tuple for speed:
(position, version, type, schema, data)."""


class VerifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """Outcome of walking the hash chain: how far it held and where it first broke."""

    ok: bool
    checked: int
    first_bad_position: int | None = None
    reason: str = ""


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """A stream's folded state at one version, so recovery need not replay from zero.

    `data` is the owner's encoding; `position` is the global position of the event at
    `version`, so time travel can pick the latest snapshot before a point. The store binds
    each snapshot to the hash chain when it saves it (see `chain.seal_snapshot`) and hands
    out only snapshots that are still bound to the log as it is.
    """

    stream: str
    version: int
    position: int
    data: bytes
    schema: int = 1


class SnapshotCheck(msgspec.Struct, frozen=True, kw_only=True):
    """One stored snapshot as `verify_snapshots` found it: where it says it belongs and,
    when it must not be used, why (`problem`, empty when it is bound to the log)."""

    stream: str
    version: int
    position: int
    problem: str = ""

    @property
    def ok(self) -> bool:
        """Whether the snapshot is bound to the log as it is now."""
        return not self.problem
