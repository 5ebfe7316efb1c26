"""Between domain events and the store's envelopes: stream names, event ids, metadata
(run, cause, actor, trace) on the way in, strict decoding and replay on the way out."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import msgspec

from bus.tracecontext import new_span_id
from eventstore import EventStore, NewEvent, StoredEvent
from orchestrator.errors import UnknownEvent, UnknownRun
from orchestrator.events import (
    ResultRejected,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunStarted,
    SystemEvent,
    TaskAttemptFailed,
    TaskSucceeded,
    encode,
    run_event_decoder,
    system_event_decoder,
    type_of,
)
from orchestrator.state import RunState, replay

ORCHESTRATOR = "orchestrator"
SYSTEM_STREAM = "system"
RUN_PREFIX = "run-"
ENDINGS = frozenset(type_of(e) for e in (RunCompleted({}, 0.0), RunFailed("", 0.0)))


def run_stream(run_id: str) -> str:
    return f"{RUN_PREFIX}{run_id}"


def run_id_of(stream: str) -> str:
    return stream.removeprefix(RUN_PREFIX)


class Cause(msgspec.Struct, frozen=True):
    """Why a decision was taken: the message or timer that caused it, who sent it, its trace."""

    causation_id: str
    actor: str
    trace_id: str = ""


def actor_of(event: RunEvent, cause: Cause) -> str:
    """Who did what the event records: the agent for its own reports, else who asked."""
    if isinstance(event, TaskSucceeded | ResultRejected):
        return event.agent_id if isinstance(event, TaskSucceeded) else event.sender
    if isinstance(event, TaskAttemptFailed) and event.reason == "error":
        return event.agent_id
    if isinstance(event, RunStarted):
        return cause.actor
    return ORCHESTRATOR


def run_envelopes(
    run_id: str, first_version: int, events: Sequence[RunEvent], causes: Sequence[Cause]
) -> list[NewEvent]:
    """Envelopes for a decision's events, with ids that make a retried append a no-op."""
    stream = run_stream(run_id)
    span_id = new_span_id()
    return [
        NewEvent(
            event_id=f"{stream}@{first_version + i}",
            type=type_of(event),
            data=encode(event),
            correlation_id=run_id,
            causation_id=cause.causation_id,
            actor=actor_of(event, cause),
            trace_id=cause.trace_id,
            span_id=span_id,
        )
        for i, (event, cause) in enumerate(zip(events, causes, strict=True))
    ]


def system_envelope(version: int, event: SystemEvent, actor: str) -> NewEvent:
    return NewEvent(
        event_id=f"{SYSTEM_STREAM}@{version}",
        type=type_of(event),
        data=encode(event),
        actor=actor,
        span_id=new_span_id(),
    )


def decode_run_event(stored: StoredEvent) -> RunEvent:
    try:
        return run_event_decoder.decode(stored.data)
    except msgspec.DecodeError as exc:
        raise UnknownEvent(f"position {stored.position} ({stored.type}): {exc}") from exc


def decode_any(stored: StoredEvent) -> RunEvent | SystemEvent:
    """Any stored Baton event, for audit views."""
    if stored.stream == SYSTEM_STREAM:
        try:
            return system_event_decoder.decode(stored.data)
        except msgspec.DecodeError as exc:
            raise UnknownEvent(f"position {stored.position} ({stored.type}): {exc}") from exc
    return decode_run_event(stored)


async def load_run(store: EventStore, run_id: str, until_position: int | None = None) -> RunState:
    """A run's state rebuilt from its stream alone (up to a global position, if given)."""
    stored = await store.read_stream(run_stream(run_id), until_position=until_position)
    if not stored:
        raise UnknownRun(run_id)
    return replay(run_id, ((s.version, decode_run_event(s)) for s in stored))


async def has_ended(store: EventStore, stream: str) -> bool:
    """Whether a run stream's last event ends the run (read without replaying it)."""
    last = await store.read_stream(stream, from_version=await store.stream_version(stream))
    return bool(last) and last[-1].type in ENDINGS


def running_agents(state: RunState) -> Counter[str]:
    """How many of this run's attempts each agent holds now."""
    return Counter(t.agent_id for t in state.tasks.values() if t.status == "running")
