"""Between domain events and the store's envelopes: stream names, event ids, metadata
(run, cause, actor, trace) on the way in, strict decoding and replay on the way out."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, TypeVar, cast

import msgspec

from bus.errors import MalformedMessage
from bus.tracecontext import new_span_id
from eventstore import EventRow, EventStore, NewEvent, Snapshot, StoredEvent
from orchestrator.core import upcasting
from orchestrator.core.errors import UnknownEvent, UnknownRun
from orchestrator.core.events import (
    BidReceived,
    CancelRequested,
    HumanDecided,
    ResultRejected,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunStarted,
    RunStopped,
    SystemEvent,
    TaskAttemptFailed,
    TaskSucceeded,
    encode,
    run_event_decoder,
    system_event_decoder,
    type_of,
)
from orchestrator.core.state import RunState, resume
from orchestrator.service import agentlog

T = TypeVar("T")
log = logging.getLogger("baton.journal")
ORCHESTRATOR = "orchestrator"
SNAPSHOT_EVERY = 500
"""Fewest events between two snapshots of a run (see `snapshot_interval`)."""
STATE_SCHEMA = 1
"""Shape version of `RunState` in snapshots; a snapshot of another shape is ignored."""
_state_encoder = msgspec.msgpack.Encoder()
_state_decoder = msgspec.msgpack.Decoder(RunState)
SYSTEM_STREAM = "system"
RUN_PREFIX = "run-"
ENDINGS = frozenset(
    type_of(e) for e in (RunCompleted({}, 0.0), RunFailed("", 0.0), RunStopped("", "", {}, 0.0))
)


def run_stream(run_id: str) -> str:
    return f"{RUN_PREFIX}{run_id}"


def run_id_of(stream: str) -> str:
    return stream.removeprefix(RUN_PREFIX)


class Cause(msgspec.Struct, frozen=True):
    """Why a decision was taken: the message or timer that caused it, who sent it, its trace."""

    causation_id: str
    actor: str
    trace_id: str = ""
    span_id: str = ""
    """The span of the message that caused it (its `traceparent`), if it carried one."""


def actor_of(event: RunEvent, cause: Cause) -> str:
    """Who did what the event records: the agent for its own reports, else who asked."""
    if isinstance(event, TaskSucceeded | ResultRejected):
        agent = event.agent_id if isinstance(event, TaskSucceeded) else event.sender
        return agent or ORCHESTRATOR
    if isinstance(event, TaskAttemptFailed) and event.reason == "error":
        return event.agent_id
    if isinstance(event, HumanDecided | CancelRequested):
        return event.actor
    if isinstance(event, BidReceived):
        return event.agent_id
    if isinstance(event, RunStarted):
        return cause.actor
    return ORCHESTRATOR


def run_envelopes(
    run_id: str,
    first_version: int,
    events: Sequence[RunEvent],
    causes: Sequence[Cause],
    span_ids: Sequence[str] = (),
) -> list[NewEvent]:
    """Envelopes for a decision's events, with ids that make a retried append a no-op;
    `span_ids` are the spans of the decisions that produced them, when traced."""
    span_id = new_span_id()
    return [
        NewEvent(
            event_id=event_id(run_id, first_version + i),
            type=type_of(event),
            data=encode(event),
            schema=upcasting.current(type_of(event)),
            correlation_id=run_id,
            causation_id=cause.causation_id,
            actor=actor_of(event, cause),
            trace_id=cause.trace_id,
            span_id=span_ids[i] if i < len(span_ids) and span_ids[i] else span_id,
        )
        for i, (event, cause) in enumerate(zip(events, causes, strict=True))
    ]


def system_envelope(version: int, event: SystemEvent, actor: str) -> NewEvent:
    return NewEvent(
        event_id=f"{SYSTEM_STREAM}@{version}",
        type=type_of(event),
        data=encode(event),
        schema=upcasting.current(type_of(event)),
        actor=actor,
        span_id=new_span_id(),
    )


def _decode(row: EventRow, decoder: msgspec.msgpack.Decoder[T], union: Any) -> T:
    position, _version, type_, schema, data = row
    try:
        if schema == upcasting.current(type_):
            return decoder.decode(data)
        fields = upcasting.upcast(type_, schema, data)
        return cast(T, msgspec.convert(fields, union))
    except (msgspec.DecodeError, msgspec.ValidationError, UnknownEvent) as exc:
        raise UnknownEvent(f"position {position} ({type_}): {exc}") from exc


def _row(stored: StoredEvent) -> EventRow:
    return (stored.position, stored.version, stored.type, stored.schema, stored.data)


def decode_run_event(stored: StoredEvent) -> RunEvent:
    """A stored run event in today's shape (upcast if it was stored in an older one)."""
    return _decode(_row(stored), run_event_decoder, RunEvent)


def decode_any(stored: StoredEvent) -> RunEvent | SystemEvent | agentlog.AgentRecord:
    """Any stored Baton event, for audit views."""
    if agentlog.holds_records(stored.stream):
        try:
            return agentlog.decode(stored)
        except MalformedMessage as exc:
            raise UnknownEvent(str(exc)) from exc
    if stored.stream == SYSTEM_STREAM:
        return _decode(_row(stored), system_event_decoder, SystemEvent)
    return decode_run_event(stored)


def event_id(run_id: str, version: int) -> str:
    return f"{run_stream(run_id)}@{version}"


def snapshot_interval(state: RunState) -> int:
    """Events between snapshots of a run: at least `SNAPSHOT_EVERY`, and at least twice
    its tasks, since a snapshot costs O(tasks) to encode: so snapshots cost O(1) per event,
    and replay from the newest one still reads O(tasks) events at most."""
    return max(SNAPSHOT_EVERY, 2 * len(state.tasks))


def snapshot_due(before: RunState, after: RunState) -> bool:
    """Whether folding `before` into `after` passed a multiple of the snapshot interval."""
    every = snapshot_interval(after)
    return after.version // every > before.version // every


def snapshot_of(state: RunState, position: int) -> Snapshot:
    return Snapshot(
        stream=run_stream(state.run_id),
        version=state.version,
        position=position,
        data=_state_encoder.encode(state),
        schema=STATE_SCHEMA,
    )


def snapshot_state(snapshot: Snapshot) -> RunState | None:
    """The run state a snapshot holds; `None` when it is of another shape or does not
    decode (logged), so the caller replays the events instead."""
    if snapshot.schema != STATE_SCHEMA:
        return None
    try:
        return _state_decoder.decode(snapshot.data)
    except msgspec.DecodeError:
        log.warning("snapshot of %s at v%d does not decode", snapshot.stream, snapshot.version)
        return None


async def _from_snapshot(store: EventStore, run_id: str, until: int | None) -> RunState:
    snapshot = await store.load_snapshot(run_stream(run_id), until_position=until)
    state = None if snapshot is None else snapshot_state(snapshot)
    return RunState(run_id) if state is None else state


async def fold_run(store: EventStore, start: RunState, until_position: int | None) -> RunState:
    """`start` carried forward by its run's stored events after it (up to a position)."""
    rows = await store.read_stream_rows(
        run_stream(start.run_id), from_version=start.version + 1, until_position=until_position
    )
    return resume(start, ((row[1], _decode(row, run_event_decoder, RunEvent)) for row in rows))


async def load_run(
    store: EventStore,
    run_id: str,
    until_position: int | None = None,
    *,
    snapshots: bool = True,
) -> RunState:
    """A run's state rebuilt from the log (up to a global position, if given), starting
    from the newest usable snapshot unless `snapshots` is False."""
    start = await _from_snapshot(store, run_id, until_position) if snapshots else RunState(run_id)
    state = await fold_run(store, start, until_position)
    if not state.version:
        raise UnknownRun(run_id)
    return state


async def has_ended(store: EventStore, stream: str) -> bool:
    """Whether a run stream's last event ends the run (read without replaying it)."""
    last = await store.read_stream(stream, from_version=await store.stream_version(stream))
    return bool(last) and last[-1].type in ENDINGS


async def until_ended(
    store: EventStore, run_id: str, served: dict[str, RunState], every_s: float = 0.1
) -> RunState:
    """A run's final state, however many orchestrators decided for it on the way (for
    those sharing the runs): as served here once it ends, else as the log says, looked
    at every `every_s` (bound it with a timeout)."""
    while True:
        state = served.get(run_id)
        if state is not None and state.terminal:
            return state
        if await has_ended(store, run_stream(run_id)):
            return await load_run(store, run_id)
        await asyncio.sleep(every_s)


def running_agents(state: RunState) -> Counter[str]:
    """How many of this run's attempts each agent holds now."""
    return Counter(t.agent_id for t in state.tasks.values() if t.status == "running")


def load_change(before: RunState, after: RunState, events: Sequence[RunEvent]) -> Counter[str]:
    """How `events`, which took `before` to `after`, changed what each agent holds: exact,
    and O(events), since only the tasks they name can have changed."""
    touched = {t for e in events if (t := getattr(e, "task_id", ""))}
    change: Counter[str] = Counter()
    for task_id in touched:
        old, new = before.tasks.get(task_id), after.tasks[task_id]
        if old is not None and old.status == "running":
            change[old.agent_id] -= 1
        if new.status == "running":
            change[new.agent_id] += 1
    return change
