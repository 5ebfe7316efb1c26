"""Schema evolution: every event type has a current shape version; events stored in an
older shape are upcast on read, step by step, before strict decoding. The log is never
rewritten.

To change an event's shape: bump its entry in `CURRENT`, and register an upcaster from
the previous version that turns the old builtins dict into the new one. The golden logs
under tests/golden/ must keep replaying.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from orchestrator.core.errors import UnknownEvent

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]

CURRENT: Mapping[str, int] = {}
"""Event types whose current shape is not version 1; every other type is at 1."""

UPCASTERS: Mapping[tuple[str, int], Upcaster] = {}
"""(type, version) → the function that turns that version's shape into the next one."""


def current(event_type: str) -> int:
    """The shape version today's code writes and decodes for `event_type`."""
    return CURRENT.get(event_type, 1)


def upcast(event_type: str, schema: int, data: bytes) -> dict[str, Any]:
    """The builtins of `data`, raised from `schema` to the type's current version."""
    target = current(event_type)
    if schema > target:
        raise UnknownEvent(f"{event_type} v{schema} is newer than this code (v{target})")
    fields: dict[str, Any] = msgspec.msgpack.decode(data)
    for version in range(schema, target):
        step = UPCASTERS.get((event_type, version))
        if step is None:
            raise UnknownEvent(f"no upcaster for {event_type} from v{version}")
        fields = step(fields)
    return fields
