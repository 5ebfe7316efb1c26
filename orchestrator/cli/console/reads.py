"""What the console shows, read from the event store alone (either backend), with the
same queries and folds the CLI uses: one run's state at its head or at any position
(`baton replay [--until]`), its events with their causes (`baton audit --run`, `--why`),
the approvals that wait (`baton tool pending`, escalated tasks) and audit search
(`baton audit`).

The runs list is `runs_list`'s."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field

import msgspec

from bus.model_capability import model_of
from bus.protocol import ToolCallRecord
from eventstore import EventQuery, EventStore, StoredEvent
from orchestrator.cli import costs, history
from orchestrator.cli.console.errors import BadInput
from orchestrator.core.errors import UnknownRun
from orchestrator.core.events import AgentJoined, RunEvent
from orchestrator.core.state import RunState
from orchestrator.service import agentlog, journal

PAGE_MAX = 200
SECRET_FIELDS = frozenset({"lease_token"})
"""Fields a page never shows: an attempt's lease token fences its ownership."""
EVENTS_MAX = 500
"""At most this many of a run's events on its page (then a link to audit search)."""


async def run_state(store: EventStore, run_id: str, at: str = "") -> tuple[RunState, int]:
    """A run's state, at its head or as of `at` (a global position or a time, as
    `baton replay --until` takes it), and the position it is as of (0: the head)."""
    if at:
        position = await history.position_at(store, run_id, at)
        return await journal.load_run(store, run_id, until_position=position), position
    return await journal.load_run(store, run_id), 0


class EventLine(msgspec.Struct, frozen=True):
    """One event of a run as its page lists it, with the event that caused it (when the
    cause is an event of the log: its id links to it)."""

    position: int
    event_id: str
    stream: str
    type: str
    actor: str
    recorded_at: float
    causation_id: str
    cause_is_event: bool
    summary: str


def _summary(stored: StoredEvent) -> str:
    fields = msgspec.to_builtins(journal.decode_any(stored))
    if isinstance(fields, dict):
        for noise in ("type", "kind", "at", "workflow", "run_id"):
            fields.pop(noise, None)
        for secret in SECRET_FIELDS & fields.keys():
            fields[secret] = "(hidden)"
    text = msgspec.json.encode(fields).decode()
    return text if len(text) <= 160 else text[:159] + "…"


def line_of(stored: StoredEvent) -> EventLine:
    cause = stored.causation_id
    linked = "@" in cause and cause.rpartition("@")[2].isdigit()
    return EventLine(
        stored.position,
        stored.event_id,
        stored.stream,
        stored.type,
        stored.actor,
        stored.recorded_at,
        cause,
        linked,
        _summary(stored),
    )


async def run_events(
    store: EventStore, run_id: str, until: int = 0
) -> tuple[list[EventLine], list[StoredEvent]]:
    """The run's events (its own stream and its agents' records), oldest first, up to
    `until` if given: at most `EVENTS_MAX` (the newest) as lines, and every event of
    its own stream (what its timeline is built from)."""
    if not await store.stream_version(journal.run_stream(run_id)):
        raise UnknownRun(run_id)
    found = await store.query(EventQuery(correlation_id=run_id, to_position=until or None))
    own = journal.run_stream(run_id)
    return [line_of(s) for s in found[-EVENTS_MAX:]], [s for s in found if s.stream == own]


async def run_positions(store: EventStore, run_id: str) -> list[int]:
    """The global positions of the run's own events: the stops of the time-travel slider."""
    rows = await store.read_stream_rows(journal.run_stream(run_id))
    return [row[0] for row in rows]


async def why(store: EventStore, ref: str) -> list[EventLine]:
    """The causation chain of an event, newest first (`baton audit --why`)."""
    return [line_of(s) for s in await history.why(store, ref)]


class Escalated(msgspec.Struct, frozen=True):
    """A task that waits for a person (`baton approve|reject|retry`)."""

    run_id: str
    task_id: str
    workflow: str
    error: str
    attempt: int


class Approvals(msgspec.Struct, frozen=True):
    tasks: list[Escalated]
    calls: list[ToolCallRecord]


async def escalated_in(store: EventStore, run_id: str) -> list[Escalated]:
    """The tasks of one run that wait for a person (none once the run has ended)."""
    state = await journal.load_run(store, run_id)
    if state.terminal:
        return []
    name = state.workflow.name if state.workflow else "?"
    return [
        Escalated(state.run_id, t.task_id, name, t.error, t.attempt)
        for t in state.tasks.values()
        if t.status == "escalated"
    ]


async def waiting_calls(
    store: EventStore, prompted: Iterable[ToolCallRecord] = (), decided: Iterable[str] = ()
) -> list[ToolCallRecord]:
    """Tool calls recorded as awaiting approval with no decision recorded (`baton tool
    pending`), and those the orchestrator just passed on for approval (`prompted`: their
    awaiting record may not have reached the log yet) that the log has no decision for;
    none of those in `decided` (decided here: their record of it may not be in the log
    yet)."""
    records = agentlog.tool_calls(await store.query(EventQuery(type_glob="tool.call")))
    decided = set(decided) | {r.call_id for r in records if r.phase in ("approved", "denied")}
    calls = [r for r in records if r.phase == "awaiting" and r.call_id not in decided]
    known = {r.call_id for r in calls}
    return calls + [r for r in prompted if r.call_id not in decided | known]


async def approvals(
    store: EventStore, prompted: Iterable[ToolCallRecord] = (), decided: Iterable[str] = ()
) -> Approvals:
    """What waits for a person now: escalated tasks of runs still open, and tool calls
    waiting for a decision (`waiting_calls`)."""
    tasks: list[Escalated] = []
    for stream in await store.open_streams(journal.RUN_PREFIX, journal.ENDINGS):
        tasks += await escalated_in(store, journal.run_id_of(stream))
    return Approvals(tasks, await waiting_calls(store, prompted, decided))


def caller_of(records: list[ToolCallRecord], call_id: str) -> ToolCallRecord | None:
    """The one waiting call with this id, if there is exactly one."""
    found = [r for r in records if r.call_id == call_id]
    return found[0] if len(found) == 1 else None


class AuditQuery(msgspec.Struct, frozen=True):
    """The `baton audit` filters, validated."""

    run: str = ""
    actor: str = ""
    type_glob: str = ""
    text: str = ""
    since: str = ""
    until: str = ""
    after: int = 0
    limit: int = 100


async def audit(store: EventStore, q: AuditQuery) -> tuple[list[EventLine], int]:
    """A page of matching events, and the position to pass as `after` for the next page
    (0 on the last one)."""
    if not 1 <= q.limit <= 1000:
        raise BadInput("limit", "must be 1 to 1000")
    if q.after < 0:
        raise BadInput("after", "must be a position (0 or more)")
    if q.type_glob and len(q.type_glob) > 100:
        raise BadInput("type", "at most 100 characters")
    if q.run and not await store.stream_version(journal.run_stream(q.run)):
        raise UnknownRun(q.run)
    query = EventQuery(
        correlation_id=q.run or None,
        actor=q.actor or None,
        type_glob=q.type_glob or None,
        text=q.text or None,
        since=history.parse_time(q.since) if q.since else None,
        until=history.parse_time(q.until) if q.until else None,
        from_position=q.after + 1,
        limit=q.limit + 1,
    )
    found = await store.query(query)
    more = len(found) > q.limit
    lines = [line_of(s) for s in found[: q.limit]]
    return lines, (lines[-1].position if more else 0)


async def system_events(store: EventStore, limit: int = 50) -> list[EventLine]:
    """The newest agent joins, losses and refusals (the `system` stream)."""
    version = await store.stream_version(journal.SYSTEM_STREAM)
    found = await store.read_stream(journal.SYSTEM_STREAM, from_version=max(1, version - limit + 1))
    return [line_of(s) for s in reversed(found)]


CHARGING = frozenset(("task.assigned", "task.handed_off", "usage.charged"))
"""The run events its usage per agent, role and model is derived from (`costs.usage`)."""


@dataclass
class Joins:
    """Every agent's joins, with the model each named (`costs.Joined`), read from the
    `system` stream once and then only as it grows (the log is only appended to)."""

    found: list[costs.Joined] = field(default_factory=list)
    read_to: int = 0
    """The global position read up to."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def all(self, store: EventStore) -> list[costs.Joined]:
        async with self.lock:
            query = EventQuery(
                stream=journal.SYSTEM_STREAM,
                type_glob="agent.joined",
                from_position=self.read_to + 1,
            )
            for stored in await store.query(query):
                joined = journal.decode_any(stored)
                if isinstance(joined, AgentJoined):
                    model = model_of(joined.capabilities)
                    self.found.append(costs.Joined(stored.position, joined.agent_id, model))
                self.read_to = stored.position
            return self.found


def charging(stored: Iterable[StoredEvent]) -> list[tuple[int, RunEvent]]:
    """The events among the run's `stored` ones its usage is derived from, decoded, with
    their global positions."""
    return [(s.position, journal.decode_run_event(s)) for s in stored if s.type in CHARGING]


async def usage_of(
    store: EventStore, state: RunState, joins: Joins, events: list[tuple[int, RunEvent]]
) -> list[costs.Usage]:
    """The run's token use per agent, role and model from its `charging` events. The
    models are those of the agents' joins anywhere in the log (`costs.model_at` picks
    the one each attempt ran with), so a past position prices an attempt as the head
    does."""
    step_roles = {task_id: spec.role for task_id, spec in state.graph.items()}
    return costs.usage(events, step_roles, await joins.all(store))


async def run_usage(
    store: EventStore, state: RunState, joins: Joins, until: int = 0
) -> list[costs.Usage]:
    """`usage_of` the run's events up to `until` if given, read from its stream."""
    stored = await store.read_stream(journal.run_stream(state.run_id), until_position=until or None)
    return await usage_of(store, state, joins, charging(stored))
