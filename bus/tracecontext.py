"""W3C trace context (`traceparent`) as plain values, so every message and event can carry
its trace from day one without any tracing SDK being configured."""

from __future__ import annotations

import re
import secrets

import msgspec

_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
HEADER = "traceparent"


class TraceContext(msgspec.Struct, frozen=True):
    """One span's place in a trace."""

    trace_id: str
    span_id: str

    def child(self) -> TraceContext:
        """A new span in the same trace."""
        return TraceContext(self.trace_id, new_span_id())

    def header(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-01"


def new_trace_id() -> str:
    return secrets.token_hex(16)


def new_span_id() -> str:
    return secrets.token_hex(8)


def new_trace() -> TraceContext:
    return TraceContext(new_trace_id(), new_span_id())


def parse(header: str | None) -> TraceContext | None:
    """The context in a `traceparent` header, or None when absent or malformed."""
    if not header:
        return None
    match = _TRACEPARENT.match(header.strip())
    if match is None or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
        return None
    return TraceContext(match.group(1), match.group(2))
