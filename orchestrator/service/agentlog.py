"""What agents report about their own governed actions (tool calls: request, decision,
outcome), recorded as events beside the run, in one `agents-<run_id>` stream per run.

These records do not change a run's state, so they stay out of the run stream and out of
`decide`; they are audit facts. Each is stored under the message id the agent gave it,
so a redelivered record is a no-op, and the inbox message is acked only once it is
durable. A record must come on its sender's own inbox subject.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable

import msgspec

from bus.codec import encode
from bus.errors import MalformedMessage
from bus.protocol import MemoryWrite, ToolCallRecord
from bus.tracecontext import new_span_id
from eventstore import EventStore, EventStoreError, NewEvent, StoredEvent

log = logging.getLogger("baton.agentlog")
PREFIX = "agents-"
MEMORY_STREAM = "memory"
AgentRecord = ToolCallRecord | MemoryWrite
_decoder: msgspec.msgpack.Decoder[AgentRecord] = msgspec.msgpack.Decoder(AgentRecord)


def stream_of(run_id: str) -> str:
    return f"{PREFIX}{run_id}"


def holds_records(stream: str) -> bool:
    """Whether a stream holds agents' records (tool calls, memory writes)."""
    return stream.startswith(PREFIX) or stream == MEMORY_STREAM


def record_stream(event_id: str) -> tuple[str, str] | None:
    """(stream, run id) of an agent record's event id: a memory write's
    (`memory:<run>:...`, see `memory.write_event_id`) or a tool call's (`<run>:...`, see
    `message_id`); None for an id of neither shape."""
    head, sep, rest = event_id.partition(":")
    if not sep or not head:
        return None
    if head == MEMORY_STREAM:
        run_id = rest.partition(":")[0]
        return (MEMORY_STREAM, run_id) if run_id else None
    return stream_of(head), head


def message_id(record: ToolCallRecord) -> str:
    """The id the agent published the record under (and the event's id)."""
    return f"{record.run_id}:{record.task_id}:{record.attempt}:tool:{record.call_id}:{record.phase}"


def tool_calls(stored: list[StoredEvent]) -> list[ToolCallRecord]:
    """The tool-call records among stored events."""
    records = [decode(e) for e in stored if holds_records(e.stream)]
    return [r for r in records if isinstance(r, ToolCallRecord)]


def decode(stored: StoredEvent) -> AgentRecord:
    try:
        return _decoder.decode(stored.data)
    except msgspec.DecodeError as exc:
        raise MalformedMessage(f"position {stored.position} ({stored.type}): {exc}") from exc


class AgentLog:
    """Appends agents' records to their run's `agents-` stream, one writer per stream."""

    def __init__(
        self, store: EventStore, works_in: Callable[[str, str], bool] = lambda r, a: True
    ) -> None:
        self._store = store
        self._works_in = works_in
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._versions: dict[str, int] = {}

    def forget(self, run_id: str) -> None:
        """The run ended and is no longer served: drop its stream's writer state."""
        stream = stream_of(run_id)
        lock = self._locks.get(stream)
        if lock is None or not lock.locked():
            self._locks.pop(stream, None)
            self._versions.pop(stream, None)

    async def record(self, record: ToolCallRecord, sender: str, trace_id: str = "") -> bool:
        """True once the record is durable (or was already); False if the append failed
        (the message must then not be acked). A record on another agent's subject is
        `MalformedMessage`."""
        if record.agent_id != sender:
            raise MalformedMessage(f"record by {record.agent_id} sent as {sender}")
        if not self._works_in(record.run_id, sender):
            raise MalformedMessage(f"{sender} has no task in run {record.run_id!r}")
        stream = stream_of(record.run_id)
        event = NewEvent(
            event_id=message_id(record),
            type="tool.call",
            data=encode(record),
            correlation_id=record.run_id,
            causation_id=f"{record.task_id}:{record.attempt}",
            actor=sender,
            trace_id=trace_id,
            span_id=new_span_id(),
        )
        async with self._locks[stream]:
            if stream not in self._versions:
                self._versions[stream] = await self._store.stream_version(stream)
            try:
                stored = await self._store.append(stream, [event], self._versions[stream])
            except EventStoreError as exc:
                log.warning("could not record %s: %s", event.event_id, exc)
                self._versions.pop(stream, None)
                return False
            self._versions[stream] = max(self._versions[stream], stored[-1].version)
        return True
