"""Rules every backend shares, so memory, SQLite and JetStream refuse and match exactly alike."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence

from eventstore.chain import SnapshotSeal, snapshot_problem
from eventstore.errors import InvalidEventError, StorageError
from eventstore.model import EventQuery, EventRow, NewEvent, Snapshot, SnapshotCheck, StoredEvent

MAX_STREAM_NAME = 200

log = logging.getLogger("baton.eventstore")

_METADATA = ("correlation_id", "causation_id", "actor", "trace_id", "span_id")


def _encodable(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def closed_error() -> StorageError:
    """What every call on a closed store hears."""
    return StorageError("the event store is closed")


def check_open(closed: bool) -> None:
    """Refuse a call on a closed store."""
    if closed:
        raise closed_error()


def check_stream(stream: object) -> str:
    """Return `stream` if it is a valid stream name, else raise `InvalidEventError`."""
    if not isinstance(stream, str) or not stream:
        raise InvalidEventError(f"stream name must be a non-empty string, got {stream!r}")
    if len(stream) > MAX_STREAM_NAME:
        raise InvalidEventError(f"stream name longer than {MAX_STREAM_NAME} characters")
    # isprintable() is False for every whitespace and control character but the space.
    if " " in stream or not stream.isprintable():
        raise InvalidEventError(f"stream name {stream!r} contains whitespace or control characters")
    return stream


def check_append(stream: object, events: Sequence[object], expected_version: object) -> None:
    """Refuse a malformed append before it reaches storage."""
    check_stream(stream)
    if (
        not isinstance(expected_version, int)
        or isinstance(expected_version, bool)
        or expected_version < 0
    ):
        raise InvalidEventError(
            f"expected_version must be an integer >= 0, got {expected_version!r}"
        )
    seen: set[str] = set()
    for event in events:
        if not isinstance(event, NewEvent):
            raise InvalidEventError(f"expected a NewEvent, got {type(event).__name__}")
        event_id = event.event_id
        try:
            # One join checks every text field is a str; one isascii() that all encode.
            text = "".join((event_id, event.type, *(getattr(event, n) for n in _METADATA)))
        except TypeError:
            raise InvalidEventError(f"event {event_id!r}: every text field must be a str") from None
        if not _encodable(text):
            raise InvalidEventError(f"event {event_id!r}: text that cannot be encoded as UTF-8")
        if not event_id:
            raise InvalidEventError("event_id must be a non-empty string")
        if event_id in seen:
            raise InvalidEventError(f"event_id {event_id!r} appears twice in one batch")
        seen.add(event_id)
        if not event.type:
            raise InvalidEventError(f"event {event_id!r}: type must be a non-empty string")
        if not isinstance(event.data, bytes):
            raise InvalidEventError(f"event {event_id!r}: data must be bytes")
        schema = event.schema
        if type(schema) is not int or not 1 <= schema < 2**63:
            raise InvalidEventError(
                f"event {event_id!r}: schema must be an integer >= 1, got {schema!r}"
            )


def check_query(query: object) -> EventQuery:
    """Return `query` if it is a well-formed `EventQuery`, else raise `InvalidEventError`."""
    if not isinstance(query, EventQuery):
        raise InvalidEventError(f"expected an EventQuery, got {type(query).__name__}")
    check_limit(query.limit)
    if query.text is not None and not isinstance(query.text, str):
        raise InvalidEventError(f"text must be None or a str, got {query.text!r}")
    if query.text is not None and not _encodable(query.text):
        raise InvalidEventError("text cannot be encoded as UTF-8")
    for name in ("since", "until"):
        value = getattr(query, name)
        if value is not None and (
            not isinstance(value, int | float) or isinstance(value, bool) or value != value
        ):
            raise InvalidEventError(f"{name} must be None or a number, got {value!r}")
    for name in ("from_position", "to_position"):
        value = getattr(query, name)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise InvalidEventError(f"{name} must be an integer, got {value!r}")
    return query


def matcher(query: EventQuery) -> Callable[[StoredEvent], bool]:
    """A predicate equal to `query`'s filters but `limit`, for backends that filter in Python."""
    pattern = None if query.type_glob is None else glob_to_regex(query.type_glob)
    text = None if query.text is None else query.text.encode()
    to_position = query.to_position

    def matches(event: StoredEvent) -> bool:
        return (
            event.position >= query.from_position
            and (to_position is None or event.position <= to_position)
            and (query.stream is None or event.stream == query.stream)
            and (query.correlation_id is None or event.correlation_id == query.correlation_id)
            and (query.actor is None or event.actor == query.actor)
            and (pattern is None or pattern.fullmatch(event.type) is not None)
            and (text is None or text in event.data)
            and (query.since is None or event.recorded_at >= query.since)
            and (query.until is None or event.recorded_at < query.until)
        )

    return matches


def event_rows(events: Sequence[StoredEvent]) -> list[EventRow]:
    """`read_stream_rows` for backends that read whole events anyway."""
    return [(e.position, e.version, e.type, e.schema, e.data) for e in events]


def check_snapshot(snapshot: object) -> Snapshot:
    """Return `snapshot` if it is well formed, else raise `InvalidEventError`."""
    if not isinstance(snapshot, Snapshot):
        raise InvalidEventError(f"expected a Snapshot, got {type(snapshot).__name__}")
    check_stream(snapshot.stream)
    for name in ("version", "position", "schema"):
        value = getattr(snapshot, name)
        if type(value) is not int or value < (1 if name == "schema" else 0) or value >= 2**63:
            raise InvalidEventError(f"snapshot {name} must be a non-negative integer: {value!r}")
    if not isinstance(snapshot.data, bytes):
        raise InvalidEventError("snapshot data must be bytes")
    return snapshot


def snapshot_usable(snapshot: Snapshot, seal: SnapshotSeal, event: StoredEvent | None) -> bool:
    """Whether a stored snapshot is bound to the log as it is (`event` is the one stored at
    its position now); one that is not is logged as a warning and must not be used."""
    problem = snapshot_problem(snapshot, seal, event)
    if problem:
        log.warning(
            "snapshot of %s v%d at position %d ignored, the state is rebuilt from events: %s",
            snapshot.stream,
            snapshot.version,
            snapshot.position,
            problem,
        )
    return not problem


def snapshot_check(
    snapshot: Snapshot, seal: SnapshotSeal, event: StoredEvent | None
) -> SnapshotCheck:
    """`snapshot` as `verify_snapshots` reports it."""
    return SnapshotCheck(
        stream=snapshot.stream,
        version=snapshot.version,
        position=snapshot.position,
        problem=snapshot_problem(snapshot, seal, event),
    )


def check_limit(limit: int | None) -> None:
    """Refuse a negative limit; `None` means no limit."""
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise InvalidEventError(f"limit must be None or an integer >= 0, got {limit!r}")


def glob_to_regex(pattern: str) -> re.Pattern[str]:
    """Compile a `*`/`?` glob, matched against the whole string, case-sensitively."""
    parts = []
    for char in pattern:
        if char == "*":
            parts.append(".*")
        elif char == "?":
            parts.append(".")
        else:
            parts.append(re.escape(char))
    return re.compile("".join(parts), re.DOTALL)


def glob_to_sqlite(pattern: str) -> str:
    """Translate a `*`/`?` glob to SQLite GLOB syntax, where `[` would open a set."""
    return pattern.replace("[", "[[]")
