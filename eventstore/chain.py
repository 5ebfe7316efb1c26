"""The hash chain that makes the log tamper-evident.

Every stored event carries the hash of its predecessor (`prev_hash`) and its own `hash`,
computed over every field of the envelope, so changing, deleting, inserting or
reordering a stored row breaks the chain at that row. Both backends compute hashes here
and `verify()` walks the log through `ChainVerifier`, so the rules live in one place.

The encoding is versioned, length-delimited and language-neutral (UTF-8 strings, big-endian
integers, IEEE-754 binary64 time; see `event_hash`), so an auditor can recompute it
without this code. An event of shape version (`schema`) 1 is hashed exactly as chain v1
did, so logs written before `schema` existed still verify; any other schema is hashed
under the tag `baton.eventstore.chain.v2` with the schema in the header, so changing an
event's schema, to or from 1, breaks its hash like any other edit.
A keyless chain detects edits that do not rewrite every later hash; to detect a
complete rewrite or a cut tail, keep signed checkpoints of the head outside the store
(`eventstore.anchor`) and hand their (position, hash) pairs to `verify`.

Snapshots are bound to the chain here too: `seal_snapshot` records, beside a snapshot,
the hash of the event at its position and a digest over its content and that hash;
`snapshot_problem` says why a stored snapshot must not be used.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Mapping

import msgspec

from eventstore.errors import InvalidEventError
from eventstore.model import NewEvent, Snapshot, StoredEvent, VerifyReport

__all__ = [
    "GENESIS",
    "ChainVerifier",
    "SnapshotSeal",
    "event_hash",
    "hash_of",
    "seal",
    "seal_snapshot",
    "snapshot_digest",
    "snapshot_problem",
    "verify_chain",
]

GENESIS = "0" * 64
"""The `prev_hash` of the event at position 1."""

_DOMAIN = b"baton.eventstore.chain.v1"
# After the domain tag, a fixed-size header holds every number and every variable field's
# byte length, so the variable fields that follow it cannot be re-split another way.
_HEADER = struct.Struct(">Q q Q q Q Q Q d Q Q Q Q Q")
_DOMAIN_V2 = b"baton.eventstore.chain.v2"
_SCHEMA = struct.Struct(">q")
_SNAPSHOT_DOMAIN = b"baton.eventstore.snapshot.v1"
_SNAPSHOT_HEADER = struct.Struct(">Q q q q Q Q")


def event_hash(
    prev_hash: str,
    position: int,
    stream: str,
    version: int,
    event_id: str,
    type: str,
    data: bytes,
    recorded_at: float,
    correlation_id: str,
    causation_id: str,
    actor: str,
    trace_id: str,
    span_id: str,
    schema: int = 1,
) -> str:
    """The SHA-256 hex digest of one event's envelope, linked to `prev_hash`.

    Bytes hashed: the tag `baton.eventstore.chain.v1`; a big-endian header of
    len(prev_hash), position, len(stream), version, len(event_id), len(type), len(data),
    recorded_at (IEEE-754 binary64), then the lengths of correlation_id, causation_id,
    actor, trace_id, span_id; then those fields' UTF-8 bytes (data as is) in that order.
    When `schema` is not 1 the tag is `baton.eventstore.chain.v2` and the header is
    followed by the schema as a signed big-endian 64-bit integer.
    """
    fields = (
        prev_hash.encode(),
        stream.encode(),
        event_id.encode(),
        type.encode(),
        data,
        correlation_id.encode(),
        causation_id.encode(),
        actor.encode(),
        trace_id.encode(),
        span_id.encode(),
    )
    header = _HEADER.pack(
        len(fields[0]),
        position,
        len(fields[1]),
        version,
        len(fields[2]),
        len(fields[3]),
        len(data),
        recorded_at,
        len(fields[5]),
        len(fields[6]),
        len(fields[7]),
        len(fields[8]),
        len(fields[9]),
    )
    if schema == 1:
        return hashlib.sha256(b"".join((_DOMAIN, header, *fields))).hexdigest()
    return hashlib.sha256(b"".join((_DOMAIN_V2, header, _SCHEMA.pack(schema), *fields))).hexdigest()


def hash_of(event: StoredEvent) -> str:
    """The hash `event`'s fields call for (equal to `event.hash` unless it was changed)."""
    return event_hash(
        event.prev_hash,
        event.position,
        event.stream,
        event.version,
        event.event_id,
        event.type,
        event.data,
        event.recorded_at,
        event.correlation_id,
        event.causation_id,
        event.actor,
        event.trace_id,
        event.span_id,
        event.schema,
    )


def seal(
    event: NewEvent, *, stream: str, position: int, version: int, recorded_at: float, prev_hash: str
) -> StoredEvent:
    """`event` as stored at `position`, linked to `prev_hash` and carrying its own hash."""
    unsealed = StoredEvent(
        position=position,
        stream=stream,
        version=version,
        event_id=event.event_id,
        type=event.type,
        data=event.data,
        schema=event.schema,
        recorded_at=recorded_at,
        correlation_id=event.correlation_id,
        causation_id=event.causation_id,
        actor=event.actor,
        trace_id=event.trace_id,
        span_id=event.span_id,
        prev_hash=prev_hash,
        hash="",
    )
    return msgspec.structs.replace(unsealed, hash=hash_of(unsealed))


def _recomputes(event: StoredEvent) -> bool:
    try:
        expected = hash_of(event)
    except (TypeError, ValueError, AttributeError, struct.error, OverflowError):
        # A tampered row may hold a value of the wrong type; that is a change, not a crash.
        return False
    return expected == event.hash


class ChainVerifier:
    """Checks a log fed to it in position order, chunk by chunk, in constant memory.

    The first broken link is named at once; the reader keeps feeding so the verifier can
    tell a reordering (the missing predecessor turns up later) from a deletion or an
    insertion. `settled` says when more events can no longer change the report.

    `checkpoints` maps positions to the hashes that signed checkpoints, kept outside the
    store, recorded for them: a different hash there means the log was rewritten (even
    with every later hash recomputed), and a log that ends before the newest checkpoint
    was cut. Events after the newest checkpoint are covered by the chain alone.
    """

    def __init__(self, checkpoints: Mapping[int, str] | None = None) -> None:
        self._checkpoints = dict(checkpoints or {})
        self._newest_checkpoint = max(self._checkpoints, default=0)
        self._matched_checkpoint = 0
        self._expected_position = 1
        self._prev_hash = GENESIS
        self._checked = 0
        self._bad_position: int | None = None
        self._reason = ""
        # While classifying a break: what to look for in the rest of the log.
        self._look_for_position: int | None = None
        self._look_for_hash: str | None = None
        self._fallback_reason = ""
        self._settled = False

    @property
    def settled(self) -> bool:
        """True once further events cannot change the report."""
        return self._settled

    def feed(self, events: Iterable[StoredEvent]) -> None:
        """Check the next events of the log, in position order."""
        for event in events:
            if self._settled:
                return
            if self._bad_position is None:
                self._check(event)
            else:
                self._look_ahead(event)

    def finish(self) -> VerifyReport:
        """The outcome for everything fed so far."""
        if self._bad_position is None:
            head = self._expected_position - 1
            if self._newest_checkpoint > head:
                return VerifyReport(
                    ok=False,
                    checked=self._checked,
                    first_bad_position=head + 1,
                    reason=(
                        f"truncated: the log ends at position {head}, but a signed checkpoint "
                        f"recorded position {self._newest_checkpoint}: the events after "
                        f"position {head} were cut"
                    ),
                )
            return VerifyReport(ok=True, checked=self._checked)
        reason = self._reason or self._fallback_reason
        return VerifyReport(
            ok=False,
            checked=self._checked,
            first_bad_position=self._bad_position,
            reason=reason,
        )

    def _fail(self, position: int, reason: str) -> None:
        self._bad_position = position
        self._reason = reason
        self._settled = True

    def _check(self, event: StoredEvent) -> None:
        expected = self._expected_position
        if event.position != expected:
            if event.position > expected:
                self._bad_position = expected
                self._look_for_position = expected
                self._fallback_reason = (
                    f"deleted or inserted: position {expected} is missing "
                    f"(the next stored position is {event.position})"
                )
            else:
                self._fail(
                    event.position,
                    f"deleted or inserted: position {event.position} appears again "
                    f"after position {expected - 1}",
                )
            return
        if event.prev_hash != self._prev_hash:
            if _recomputes(event) and expected > 1:
                # The row is intact, so its predecessor was rewritten with a fresh hash.
                self._fail(
                    expected - 1,
                    f"changed: the hash stored at position {expected - 1} is not the "
                    f"prev_hash recorded by position {expected}",
                )
                self._checked -= 1
                return
            self._bad_position = expected
            self._look_for_hash = event.prev_hash
            self._fallback_reason = (
                f"deleted or inserted: position {expected} does not follow position "
                f"{expected - 1} (its predecessor is not in the log)"
            )
            return
        if not _recomputes(event):
            self._fail(expected, f"changed: the hash of position {expected} does not recompute")
            return
        signed = self._checkpoints.get(expected)
        if signed is not None:
            if signed != event.hash:
                since = self._matched_checkpoint
                after = f"after position {since} (still as checkpointed) and " if since else ""
                self._fail(
                    expected,
                    f"rewritten: the hash at position {expected} is not the one a signed "
                    f"checkpoint recorded: the log was changed {after}at or before position "
                    f"{expected}, and the hashes after the change were recomputed",
                )
                return
            self._matched_checkpoint = expected
        self._checked += 1
        self._expected_position = expected + 1
        self._prev_hash = event.hash

    def _look_ahead(self, event: StoredEvent) -> None:
        bad = self._bad_position
        if self._look_for_position is not None and event.position == self._look_for_position:
            self._reason = f"reordered: position {bad} appears later, out of order"
            self._settled = True
        elif self._look_for_hash is not None and event.hash == self._look_for_hash:
            self._reason = (
                f"reordered: the predecessor of the event at position {bad} is stored "
                f"later, at position {event.position}"
            )
            self._settled = True


def verify_chain(
    events: Iterable[StoredEvent], checkpoints: Mapping[int, str] | None = None
) -> VerifyReport:
    """Walk `events` (the whole log, in position order) and report the first break.

    Positions must run 1, 2, 3... without a gap, each `prev_hash` must equal the hash of
    the event before it (`GENESIS` for the first) and each hash must recompute. The
    reason starts with "changed", "deleted or inserted" or "reordered", best judged; with
    `checkpoints` (position -> signed hash) also "rewritten" or "truncated".
    """
    verifier = ChainVerifier(checkpoints)
    verifier.feed(events)
    return verifier.finish()


# -- snapshots bound to the chain ---------------------------------------------------------


class SnapshotSeal(msgspec.Struct, frozen=True):
    """What the store keeps beside a snapshot to bind it to the chain: the hash of the
    event at the snapshot's position, and `snapshot_digest` over the snapshot and that hash.

    The digest is keyless: it catches a snapshot edited in place, moved, or left behind by
    a log rewritten under it, but someone who can write the store can recompute it; an
    audit that refolds the events (`baton audit verify`) catches that too.
    """

    event_hash: str
    digest: str


def snapshot_digest(snapshot: Snapshot, event_hash: str) -> str:
    """The SHA-256 hex digest binding `snapshot` to the event hash at its position.

    Bytes hashed: the tag `baton.eventstore.snapshot.v1`; a big-endian header of
    len(stream), version, position, schema, len(data), len(event_hash); then the stream's
    UTF-8 bytes, the data and the event hash's ASCII bytes.
    """
    stream = snapshot.stream.encode()
    link = event_hash.encode()
    header = _SNAPSHOT_HEADER.pack(
        len(stream),
        snapshot.version,
        snapshot.position,
        snapshot.schema,
        len(snapshot.data),
        len(link),
    )
    return hashlib.sha256(
        b"".join((_SNAPSHOT_DOMAIN, header, stream, snapshot.data, link))
    ).hexdigest()


def _misplaced(snapshot: Snapshot, event: StoredEvent | None) -> str:
    if event is None or event.position != snapshot.position:
        return f"position {snapshot.position} is not in the log"
    if event.stream != snapshot.stream or event.version != snapshot.version:
        return (
            f"position {snapshot.position} holds {event.stream!r} v{event.version}, "
            f"not {snapshot.stream!r} v{snapshot.version}"
        )
    return ""


def seal_snapshot(snapshot: Snapshot, event: StoredEvent | None) -> SnapshotSeal:
    """The seal of `snapshot`, taken at `event` (the stored event at its position);
    `InvalidEventError` if that event is not `snapshot`'s stream at `snapshot`'s version."""
    problem = _misplaced(snapshot, event)
    if problem or event is None:
        raise InvalidEventError(
            f"snapshot of {snapshot.stream!r} v{snapshot.version} does not fit the log: {problem}"
        )
    return SnapshotSeal(event.hash, snapshot_digest(snapshot, event.hash))


def snapshot_problem(snapshot: Snapshot, seal: SnapshotSeal, event: StoredEvent | None) -> str:
    """Why a stored snapshot must not be used, given its seal and the event now stored at
    its position; empty when it is bound to the log as it is."""
    if not seal.digest:
        return "not bound to the chain (it carries no digest)"
    try:
        intact = snapshot_digest(snapshot, seal.event_hash) == seal.digest
    except (TypeError, ValueError, AttributeError, struct.error, OverflowError):
        intact = False  # a tampered row may hold a value of the wrong type
    if not intact:
        return "changed: its content does not match its digest"
    problem = _misplaced(snapshot, event)
    if problem or event is None:
        return problem
    if event.hash != seal.event_hash:
        return (
            f"the event at position {snapshot.position} is not the one it was taken at "
            "(its hash differs): the log was changed under it"
        )
    if not _recomputes(event):
        return f"the event at position {snapshot.position} does not recompute its hash"
    return ""
