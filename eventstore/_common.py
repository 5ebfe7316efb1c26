"""Rules both backends share, so memory and SQLite refuse and match exactly alike."""

from __future__ import annotations

import re
from collections.abc import Sequence

from eventstore.errors import InvalidEventError
from eventstore.model import EventQuery, NewEvent

MAX_STREAM_NAME = 200

_METADATA = ("correlation_id", "causation_id", "actor", "trace_id", "span_id")


def _encodable(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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


def check_query(query: object) -> EventQuery:
    """Return `query` if it is a well-formed `EventQuery`, else raise `InvalidEventError`."""
    if not isinstance(query, EventQuery):
        raise InvalidEventError(f"expected an EventQuery, got {type(query).__name__}")
    check_limit(query.limit)
    return query


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
