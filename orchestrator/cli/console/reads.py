"""What the console shows, read from the event store alone (either backend), with the
same queries and folds the CLI uses: the runs list (`baton status --all`, paged and
filtered), one run's state at its head or at any position (`baton replay [--until]`),
its events with their causes (`baton audit --run`, `--why`), the approvals that wait
(`baton tool pending`, escalated tasks) and audit search (`baton audit`).

The runs list reads the run summaries (`orchestrator.service.run_summaries`), a projection
of the log kept beside it; a row the projection has not caught up with yet is folded from
the log, so a page is always what the log says now."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from bus.model_capability import model_of
from bus.protocol import ToolCallRecord
from eventstore import EventQuery, EventStore, EventStoreError, ProjectionStore, StoredEvent
from orchestrator.cli import costs, history
from orchestrator.cli.console.errors import BadInput
from orchestrator.core.errors import UnknownRun
from orchestrator.core.events import AgentJoined
from orchestrator.core.state import RunState
from orchestrator.service import agentlog, journal, run_summaries
from orchestrator.service.run_summaries import RunSummary

RUN_STATUSES = ("new", "running", "completed", "failed", "stopped")
StatusFilter = Literal["", "new", "running", "completed", "failed", "stopped"]
PAGE_MAX = 200
SECRET_FIELDS = frozenset({"lease_token"})
"""Fields a page never shows: an attempt's lease token fences its ownership."""
EVENTS_MAX = 500
"""At most this many of a run's events on its page (then a link to audit search)."""


LAG_MAX = 5000
"""Past this many events behind the log (the projection is being rebuilt), the runs list
folds its rows from the log rather than look for the runs those events moved."""
HELD = 64


@dataclass
class Projected:
    """The run summaries projection's rows, decoded, as of its checkpoint `at`, with their
    run ids sorted; and `moved`, the runs events after `at` moved (their rows are folded
    from the log instead)."""

    at: int = 0
    rows: dict[str, RunSummary] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    moved: frozenset[str] = frozenset()

    def current(self, run_id: str) -> RunSummary | None:
        return None if run_id in self.moved else self.rows.get(run_id)

    def newest_first(self, before: str) -> tuple[Iterable[str], int]:
        """The run ids older than `before` ('' none), newest first, and how many."""
        upto = bisect.bisect_left(self.ids, before) if before else len(self.ids)
        new = (i for i in self.moved if i not in self.rows and (not before or i < before))
        unseen = sorted(new, reverse=True)
        older = (self.ids[n] for n in range(upto - 1, -1, -1))
        return heapq.merge(older, unseen, reverse=True), upto + len(unseen)


@dataclass
class Summaries:
    """The runs' rows: from the run summaries projection in `port` where it is current,
    else folded from the log (the states of runs still going are kept, `HELD` of them,
    and folded on from where they were; the rows of ended runs are kept, `limit`).

    The projection's rows are decoded once and kept (`kept`); as its checkpoint moves on,
    only the rows of the runs the events in between moved are read again, so a page of a
    log with a hundred thousand runs does not decode a hundred thousand rows."""

    port: ProjectionStore | None = None
    name: str = run_summaries.NAME
    limit: int = 20000
    ended: OrderedDict[str, RunSummary] = field(default_factory=OrderedDict)
    states: OrderedDict[str, RunState] = field(default_factory=OrderedDict)
    folding: dict[str, asyncio.Future[RunSummary]] = field(default_factory=dict)
    folded: int = 0
    """Rows folded from the log so far (not read from the projection)."""
    lag_max: int = LAG_MAX
    kept: Projected = field(default_factory=Projected)
    reading: asyncio.Lock = field(default_factory=asyncio.Lock)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while no page is being put together and no row folded (`quiet` waits for it)."""
    pages: int = 0

    def __post_init__(self) -> None:
        self.idle.set()

    async def quiet(self) -> None:
        """Return once no page is being put together: the projection's seeding yields to
        pages (on a log it has not projected yet, the first page's rows are folded)."""
        await self.idle.wait()

    @contextlib.contextmanager
    def paging(self) -> Iterator[None]:
        """While a page is put together (`quiet` waits)."""
        self.pages += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.pages -= 1
            self._settle()

    def _settle(self) -> None:
        if not self.pages and not self.folding:
            self.idle.set()

    async def projected(self, store: EventStore) -> Projected | None:
        """The projection's rows and the runs moved since its checkpoint; `None` while
        it has none or is far behind (being rebuilt), or its rows cannot be read."""
        if self.port is None:
            return None
        try:
            async with self.reading:
                checkpoint = await self.port.checkpoint(self.name)
                if not checkpoint:
                    return None
                kept = await self._catch_up(store, self.port, checkpoint)
            last = await store.last_position()
            moved: frozenset[str] = frozenset()
            if last > checkpoint:
                newer = await store.query(
                    EventQuery(from_position=checkpoint + 1, limit=self.lag_max + 1)
                )
                if len(newer) > self.lag_max:
                    return None
                moved = frozenset(_runs_of(newer))
        except (EventStoreError, msgspec.DecodeError):  # the log can still be folded
            self.kept = Projected()
            return None
        return Projected(kept.at, kept.rows, kept.ids, moved)

    async def _catch_up(
        self, store: EventStore, port: ProjectionStore, checkpoint: int
    ) -> Projected:
        """`kept` brought to `checkpoint`: the rows of the runs moved in between read
        again, or every row when that is more than `lag_max` events (or the first time)."""
        kept = self.kept
        if kept.at == checkpoint:
            return kept
        if kept.at and kept.at < checkpoint <= kept.at + self.lag_max:
            between = await store.query(
                EventQuery(from_position=kept.at + 1, to_position=checkpoint)
            )
            rows, ids = dict(kept.rows), kept.ids
            for run_id in _runs_of(between):
                raw = await port.get(self.name, run_id)
                if raw is None:
                    continue
                if run_id not in rows:
                    ids = [*ids[: (at := bisect.bisect_left(ids, run_id))], run_id, *ids[at:]]
                rows[run_id] = run_summaries.decode(raw)
            self.kept = Projected(checkpoint, rows, ids)
        else:
            decoded = {k: run_summaries.decode(v) for k, v in await port.items(self.name)}
            self.kept = Projected(checkpoint, decoded, sorted(decoded))
        return self.kept

    async def row(self, store: EventStore, run_id: str) -> RunSummary:
        """A run's row as the log has it now, folded (see `projected` for the fast way)."""
        kept = self.ended.get(run_id)
        if kept is not None:
            self.ended.move_to_end(run_id)
            return kept
        folding = self.folding.get(run_id)
        if folding is None:  # one fold per run at a time, however many pages ask
            folding = asyncio.ensure_future(self._fold(store, run_id))
            self.folding[run_id] = folding
            self.idle.clear()
            folding.add_done_callback(lambda _: self._folded(run_id))
        return await asyncio.shield(folding)

    def _folded(self, run_id: str) -> None:
        self.folding.pop(run_id, None)
        self._settle()

    async def _fold(self, store: EventStore, run_id: str) -> RunSummary:
        before = self.states.pop(run_id, None)
        if before is None:
            state = await journal.load_run(store, run_id)
        else:
            state = await journal.fold_run(store, before, None)
        made = run_summaries.summary_of(state)
        self.folded += 1
        if made.ended:
            self.ended[run_id] = made
            while len(self.ended) > self.limit:
                self.ended.popitem(last=False)
        else:
            self.states[run_id] = state
            while len(self.states) > HELD:
                self.states.popitem(last=False)
        return made


def _runs_of(events: Iterable[StoredEvent]) -> set[str]:
    return {journal.run_id_of(e.stream) for e in events if e.stream.startswith(journal.RUN_PREFIX)}


class RunFilter(msgspec.Struct, frozen=True):
    """The runs list's filters; every field at its default matches every run."""

    status: StatusFilter = ""
    workflow: str = ""
    text: str = ""
    """A substring of the run id or of the workflow's name."""
    since: float = 0.0
    """Only runs started at or after this Unix time."""
    until: float = 0.0
    """Only runs started before this Unix time (0: no bound)."""

    def matches(self, row: RunSummary) -> bool:
        return (
            (not self.status or row.status == self.status)
            and (not self.workflow or row.workflow == self.workflow)
            and (not self.text or self.text in row.run_id or self.text in row.workflow)
            and row.started_at >= self.since
            and (not self.until or row.started_at < self.until)
        )


class RunsPage(msgspec.Struct, frozen=True):
    rows: list[RunSummary]
    next_before: str
    """The cursor of the next (older) page: pass it as `before`; '' on the last page."""
    scanned: int


async def runs_page(
    store: EventStore,
    summaries: Summaries,
    wanted: RunFilter,
    before: str = "",
    size: int = 50,
) -> RunsPage:
    """Newest runs first (run ids begin with their start time), `size` of those that
    match, older than the run `before`: the projection's rows, kept in memory, and the
    rows of the runs it has not reached, folded. Without a current projection, every run
    is folded (runs still open found with `open_streams` for a `running` or `new` filter,
    without reading the ended ones)."""
    if not 1 <= size <= PAGE_MAX:
        raise BadInput("size", f"must be 1 to {PAGE_MAX}")
    with summaries.paging():
        return await _runs_page(store, summaries, wanted, before, size)


async def _runs_page(
    store: EventStore, summaries: Summaries, wanted: RunFilter, before: str, size: int
) -> RunsPage:
    projected = await summaries.projected(store)
    ids: Iterable[str]
    if projected is None:
        if wanted.status in ("running", "new"):
            names = await store.open_streams(journal.RUN_PREFIX, journal.ENDINGS)
        else:
            names = await store.streams(journal.RUN_PREFIX)
        listed = sorted((journal.run_id_of(n) for n in names), reverse=True)
        if before:
            listed = [i for i in listed if i < before]
        ids, count = listed, len(listed)
    else:  # every run has a row, or has moved since the projection's checkpoint
        ids, count = projected.newest_first(before)
    rows: list[RunSummary] = []
    for scanned, run_id in enumerate(ids, start=1):
        row = (projected and projected.current(run_id)) or await summaries.row(store, run_id)
        if wanted.matches(row):
            rows.append(row)
            if len(rows) == size:
                return RunsPage(rows, run_id if scanned < count else "", scanned)
    return RunsPage(rows, "", count)


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


async def run_usage(
    store: EventStore, state: RunState, joins: Joins, until: int = 0
) -> list[costs.Usage]:
    """The run's token use per agent, role and model, up to `until` if given. The
    models are those of the agents' joins anywhere in the log (`costs.model_at` picks
    the one each attempt ran with), so a past position prices an attempt as the head
    does."""
    stored = await store.read_stream(journal.run_stream(state.run_id), until_position=until or None)
    events = [(s.position, journal.decode_run_event(s)) for s in stored if s.type in CHARGING]
    step_roles = {task_id: spec.role for task_id, spec in state.graph.items()}
    return costs.usage(events, step_roles, await joins.all(store))
