"""The orchestrator's imperative shell: reads commands off the bus, asks the pure core,
appends the events with the expected version, and only then performs the effects.

It keeps nothing that is not in the event store: on start it replays every run, re-derives
the effects still owed, and consumes whatever agents left in the durable inbox meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from msgspec.structs import replace
from opentelemetry.trace import Span

from bus import subjects, tracecontext
from bus.codec import MAX_MESSAGE_BYTES, Decoder, encode
from bus.connection import Bus, Incoming, Subscription
from bus.contracts import Contracts
from bus.errors import BusError, MalformedMessage, RequestFailed
from bus.protocol import (
    AssignAcks,
    AssignBatch,
    Assignment,
    AssignReply,
    Bid,
    ErrorReply,
    Heartbeat,
    InboxMessage,
    MemoryWrite,
    Progress,
    ProgressBatch,
    ReportAck,
    ReportBatch,
    TaskResult,
    ToolCallRecord,
)
from bus.telemetry import Telemetry
from bus.tracecontext import TraceContext, new_span_id, new_trace_id
from eventstore import EventStore, EventStoreError, StoredEvent
from eventstore.anchor import Checkpointer
from orchestrator.core import contract_net, human
from orchestrator.core.commands import (
    CancelRun,
    Command,
    Context,
    DeliveryFailed,
    HumanDecision,
    ReportFailure,
    ReportResult,
    Resume,
    StartRun,
    SubmitBid,
    Tick,
)
from orchestrator.core.decide import decide_into, load_delta, on_run_clock
from orchestrator.core.effects import (
    Effect,
    PublishCallForProposals,
    PublishProgress,
    SendAssignment,
    SendControl,
    effects,
    pending_effects,
)
from orchestrator.core.errors import (
    ControlRefused,
    OrchestratorError,
    RunNotRecorded,
    UnknownRun,
    WorkflowError,
)
from orchestrator.core.events import (
    AgentJoined,
    AgentLost,
    AgentRefused,
    MessageRejected,
    RunEvent,
    SystemEvent,
)
from orchestrator.core.state import Folding, RunState
from orchestrator.core.workflow import WorkflowSpec, validate
from orchestrator.service import journal, live_api
from orchestrator.service.agentlog import AgentLog
from orchestrator.service.api import (
    ControlAccepted,
    RunAccepted,
    RunControlRequest,
    StartRunRequest,
)
from orchestrator.service.intake import Delivery, Intake, Recorded, report_id
from orchestrator.service.journal import ORCHESTRATOR, Cause
from orchestrator.service.memory import Embedder, MemoryService
from orchestrator.service.registry import Registry
from orchestrator.service.telemetry import OrchestratorTelemetry
from orchestrator.service.tokens import LeaseTokens

log = logging.getLogger("baton.orchestrator")
T = TypeVar("T")

_inbox_decoder: Decoder[InboxMessage] = Decoder(InboxMessage)
_heartbeat_decoder: Decoder[Heartbeat] = Decoder(Heartbeat)
_reply_decoder: Decoder[AssignReply] = Decoder(AssignReply)
_start_decoder: Decoder[StartRunRequest] = Decoder(StartRunRequest)
_control_decoder: Decoder[RunControlRequest] = Decoder(RunControlRequest)
_bid_decoder: Decoder[Bid] = Decoder(Bid)


def _first_cause(state: RunState, command: Command, cause: Cause) -> Cause:
    """What caused a decision's first event: what came in, or, for a report, the
    assignment of the attempt it answers (so `baton audit --why` can walk it back)."""
    task_id, attempt = "", 0
    match command:
        case ReportResult():
            task_id, attempt = command.result.task_id, command.result.attempt
        case ReportFailure():
            task_id, attempt = command.failure.task_id, command.failure.attempt
        case DeliveryFailed():
            task_id, attempt = command.task_id, command.attempt
    task = state.tasks.get(task_id)
    if task is not None and task.attempt == attempt and task.assigned_event:
        return Cause(journal.event_id(state.run_id, task.assigned_event), cause.actor)
    return cause


def _causes(first: Cause, run_id: str, version: int, count: int, trace: str) -> list[Cause]:
    """Causes for a decision's `count` events, the first at `version`: the first event's
    is `first`; the rest (assignments, endings) are caused by that first event."""
    then = Cause(journal.event_id(run_id, version), ORCHESTRATOR, trace)
    return [Cause(first.causation_id, first.actor, trace)] + [then] * (count - 1)


def _loaded(ctx: Context, delta: dict[str, int]) -> Context:
    """`ctx` with the load this batch's decisions so far gave each agent."""
    agents = [
        replace(a, load=a.load + delta[a.agent_id]) if delta.get(a.agent_id) else a
        for a in ctx.agents
    ]
    return Context(ctx.now, ctx.wall, agents, ctx.new_token, ctx.random, ctx.boot)


_RETRY_S = 0.5
"""A durable report whose events could not be stored comes back after this long."""
_RECORDED = encode(ReportAck())
_NOT_RECORDED = encode(ErrorReply("NotRecorded", "the event store refused the append"))


async def _answer(delivery: Delivery, recorded: bool) -> None:
    """Acknowledge a durable report once recorded (else have it redelivered soon); answer
    a fast one either way, so its agent knows at once whether to send it durably."""
    msg, durable = delivery
    if durable:
        await (msg.ack() if recorded else msg.nak(_RETRY_S))
    else:
        await msg.reply(_RECORDED if recorded else _NOT_RECORDED)


@dataclass(frozen=True)
class _Decision:
    """A batch of commands decided: the events, the state after them, their append."""

    run_id: str
    before: RunState
    state: RunState
    events: list[RunEvent]
    append: asyncio.Future[list[StoredEvent]]
    span_ids: list[str]
    """The decision span of each event (telemetry)."""
    appending_since: float


@dataclass(frozen=True)
class Dispatch:
    """An assignment on its way, with its dispatch span (ended once the agent answers)."""

    assignment: Assignment
    span: Span


def _chunks(items: list[T], message: Callable[[list[T]], Any]) -> list[list[T]]:
    """`items` cut into runs whose `message` stays well under the size limit."""
    if len(items) == 1 or len(encode(message(items))) <= MAX_MESSAGE_BYTES // 2:
        return [items]
    chunks: list[list[T]] = [[]]
    size = 0
    for item in items:
        n = len(encode(message([item])))
        if chunks[-1] and size + n > MAX_MESSAGE_BYTES // 2:
            chunks.append([])
            size = 0
        chunks[-1].append(item)
        size += n
    return chunks


def host_boot() -> str:
    """This boot of the host (Linux's boot id), which the monotonic clock counts from;
    '' where it cannot be read (then recorded times are taken to be on this clock)."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(3)


class Orchestrator:
    """One orchestrator service over one bus connection and one event store."""

    def __init__(
        self,
        bus: Bus,
        store: EventStore,
        *,
        agent_ttl: float = 2.0,
        tick_s: float = 0.2,
        fetch_batch: int = 512,
        durable: str = "orchestrator",
        assign_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
        telemetry: Telemetry | None = None,
        contracts: Contracts | None = None,
        boot: str | None = None,
        checkpoints: Checkpointer | None = None,
    ) -> None:
        self._bus = bus
        self._checkpoints = checkpoints
        """Asked for a checkpoint of the log when a run ends (see `eventstore.anchor`)."""
        self._boot = host_boot() if boot is None else boot
        self._contracts = contracts
        self._agentlog = AgentLog(store, self._works_in)
        self.memory = MemoryService(
            store,
            bus,
            contracts=contracts,
            role_of=self._role_of,
            works_in=self._works_in,
            embedder=Embedder.from_env(),
        )
        self._refused: set[tuple[str, str, str]] = set()
        self._store = store
        self._registry = Registry(agent_ttl)
        self._tick_s = tick_s
        self._fetch_batch = fetch_batch
        self._durable = durable
        self._assign_timeout = assign_timeout
        self._clock = clock
        self._wall = wall
        self._rng = random.Random()
        self._tokens = LeaseTokens()
        self._runs: dict[str, RunState] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        """Held while a run is reloaded after a failed append; no decision meanwhile."""
        self._ahead: dict[str, RunState] = {}
        """Per run, the state once the appends in flight are durable (newest decided)."""
        self._appending: defaultdict[str, set[asyncio.Future[list[StoredEvent]]]] = defaultdict(set)
        self._finished: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._system_lock = asyncio.Lock()
        self._system_version = 0
        self._started = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._intake: Intake | None = None
        self._recorded = Recorded()
        self._window = asyncio.Semaphore(8)
        self._subscriptions: list[Subscription] = []
        self._obs = OrchestratorTelemetry(
            telemetry or Telemetry("baton-orchestrator", enabled=False),
            self._registry,
            self._runs,
            clock,
        )

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Recover every run from the store, then serve the inbox, heartbeats and the API."""
        self._started = self._clock()
        self._system_version = await self._store.stream_version(journal.SYSTEM_STREAM)
        await self._bus.ensure_inbox()
        self._intake = Intake(await self._bus.inbox_consumer(self._durable), self._fetch_batch)
        self._subscriptions = [
            await self._bus.subscribe(subjects.REPORT_ALL, self._intake.offer_fast, inline=True),
            await self._bus.subscribe(subjects.HEARTBEAT_ALL, self._on_heartbeat),
            await self._bus.subscribe(subjects.API_START_RUN, self._on_start_request),
            await self._bus.subscribe(subjects.API_RUN_CONTROL, self._on_control_request),
            await self._bus.subscribe(subjects.BIDS_ALL, self._on_bid),
        ]
        self._subscriptions += await live_api.serve(self._bus, self, self._wall)
        await self._recover()
        await self.memory.start()
        self._spawn(self._intake.fetch_durable())
        self._spawn(self._inbox_loop())
        self._spawn(self._tick_loop())

    async def stop(self) -> None:
        """Stop serving: no more inbox, heartbeats, API or timers; the log keeps the rest."""
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions = []
        await self.memory.stop()
        if self._intake is not None:
            self._intake.close()
        # A cancel can be swallowed (nats-py's fetch may turn one that lands as its wait
        # ends into a timeout and loop on): cancel again until every task has ended.
        while pending := [t for t in self._tasks if not t.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1.0)

    async def _recover(self) -> None:
        for stream in await self._store.streams(journal.RUN_PREFIX):
            if await journal.has_ended(self._store, stream):
                continue
            run_id = journal.run_id_of(stream)
            state = await journal.load_run(self._store, run_id)
            self._runs[run_id] = state
            self._registry.set_inflight(run_id, journal.running_agents(state))
            # on another boot its times are moved onto this clock first (ClockRebased)
            await self._execute(run_id, [(Resume(), Cause(f"resume:{run_id}", ORCHESTRATOR))])
            self._perform(self._runs[run_id], pending_effects(self._runs[run_id]))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- queries ---------------------------------------------------------------------

    def run(self, run_id: str) -> RunState:
        """A run this orchestrator is serving or has served since it started."""
        try:
            return self._runs[run_id]
        except KeyError:
            raise UnknownRun(run_id) from None

    def agents(self) -> list[Heartbeat]:
        return self._registry.heartbeats()

    def runs(self) -> list[RunState]:
        """Every run this orchestrator serves or has served since it started."""
        return list(self._runs.values())

    def agent_status(self) -> list[tuple[Heartbeat, int, float]]:
        """Each known agent's last heartbeat, the load routing counts for it, and the
        heartbeat's age in seconds."""
        ages = {agent_id: age for agent_id, _, age in self._registry.ages(self._clock())}
        return [
            (hb, self._registry.load(hb.agent_id), ages.get(hb.agent_id, 0.0))
            for hb in self._registry.heartbeats()
        ]

    async def wait_for_agents(self, roles: Counter[str], timeout: float) -> None:
        """Until at least `roles[r]` live agents serve each role r (or TimeoutError)."""
        async with asyncio.timeout(timeout):
            while True:
                live = Counter(a.role for a in self._registry.live(self._clock()))
                if all(live[r] >= n for r, n in roles.items()):
                    return
                await asyncio.sleep(0.05)

    async def wait(self, run_id: str, timeout: float | None = None) -> RunState:
        """The run's final state, once it is completed or failed."""
        self.run(run_id)
        async with asyncio.timeout(timeout):
            await self._finished[run_id].wait()
        return self._runs[run_id]

    # -- commands --------------------------------------------------------------------

    async def start_run(
        self,
        workflow: WorkflowSpec,
        input: dict[str, Any] | None = None,
        *,
        run_id: str = "",
        requested_by: str = "cli",
    ) -> str:
        """Validate and record a new run; returns its id once `RunStarted` is durable."""
        validate(workflow)
        chosen = bool(run_id)
        run_id = subjects.token(run_id or new_run_id())
        command = StartRun(
            run_id, workflow, {**workflow.input, **(input or {})}, new_trace_id(), requested_by
        )
        # A generated id needs no look-up: the append expects an empty stream anyway.
        exists = chosen and await self._store.stream_version(journal.run_stream(run_id))
        if run_id in self._runs or exists:
            raise WorkflowError("run_id", f"run {run_id} already exists")
        self._runs[run_id] = RunState(run_id)
        if not await self._execute(run_id, [(command, Cause(f"start:{run_id}", requested_by))]):
            del self._runs[run_id]
            raise RunNotRecorded(run_id)
        return run_id

    async def control(self, request: RunControlRequest) -> RunState:
        """Record a person's decision (approve/reject/retry/cancel); `ControlRefused` says
        why one cannot apply, and then nothing changed."""
        self.run(request.run_id)  # UnknownRun before anything else
        command: HumanDecision | CancelRun
        if request.action == "cancel":
            command = CancelRun(request.task_id, request.actor, request.note)
        else:
            command = HumanDecision(
                request.task_id, request.action, request.actor, request.note, request.output
            )
        cause = Cause(f"api:{request.action}:{request.run_id}:{request.task_id}", request.actor)
        await self._unblocked(request.run_id)
        # checked and decided with no await between, against the newest state (appends
        # still in flight included), so what is refused is exactly what the core refuses
        state = self._ahead.get(request.run_id) or self.run(request.run_id)
        refused = human.refusal(state, command)
        decision = None if refused else self._decide(request.run_id, [(command, cause)])
        if decision is None:
            raise ControlRefused(refused or "nothing to change")
        if not await self._commit(decision):
            raise RunNotRecorded(request.run_id)
        return self.run(request.run_id)

    def _context(self) -> Context:
        now = self._clock()
        return Context(
            now=now,
            wall=self._wall(),
            agents=self._registry.live(now),
            new_token=self._tokens,
            random=self._rng.random,
            boot=self._boot,
        )

    async def _execute(self, run_id: str, items: Sequence[tuple[Command, Cause]]) -> bool:
        """Decide each command in turn, append all resulting events at once, then act.

        False when the append failed: the in-memory state is reloaded from the store and
        the caller must not acknowledge what caused the commands.
        """
        await self._unblocked(run_id)
        decision = self._decide(run_id, items)
        return await self._commit(decision) if decision is not None else True

    async def _unblocked(self, run_id: str) -> None:
        """Wait while the run is being reloaded after a failed append."""
        lock = self._locks[run_id]
        if lock.locked():
            async with lock:
                pass

    def _decide(self, run_id: str, items: Sequence[tuple[Command, Cause]]) -> _Decision | None:
        """Decide `items` against the run's newest state: the durable one, or the one that
        appends still in flight will make durable. Synchronous, so decisions on one run
        never interleave, and the next batch can be decided while this one is appended
        (pipelining: the store commits them in order, often in one fsync)."""
        before = self._ahead.get(run_id) or self._runs[run_id]
        folding = Folding(before)  # one copy of the run for the whole batch
        events: list[RunEvent] = []
        causes: list[Cause] = []
        span_ids: list[str] = []
        delta: dict[str, int] = {}
        base = self._context()
        for command, cause in items:
            began = time.time_ns()
            state = folding.state  # changed in place by the decision: read it before
            first, version = _first_cause(state, command, cause), state.version + 1
            ctx = _loaded(base, delta) if delta else base
            decided = decide_into(folding, command, ctx)
            if decided:
                trace = cause.trace_id or folding.state.trace_id
                causes += _causes(first, run_id, version, len(decided), trace)
                span_id = self._obs.decided(state, command, cause, decided, began)
                span_ids += [span_id] * len(decided)
                events += decided
                load_delta(decided, delta)
        state = folding.state
        if not events:
            return None
        self._ahead[run_id] = state
        self._registry.add_inflight(run_id, journal.load_change(before, state, events))
        envelopes = journal.run_envelopes(run_id, before.version + 1, events, causes, span_ids)
        append = asyncio.ensure_future(
            self._store.append(journal.run_stream(run_id), envelopes, before.version)
        )
        self._appending[run_id].add(append)
        append.add_done_callback(self._appending[run_id].discard)
        return _Decision(run_id, before, state, events, append, span_ids, time.perf_counter())

    async def _commit(self, d: _Decision) -> bool:
        """Once the decision's append is durable, act on it; on failure, reload the run."""
        try:
            stored = await d.append
        except EventStoreError:
            log.exception("append to run %s failed; reloading it from the store", d.run_id)
            await self._reload(d.run_id)
            return False
        self._obs.appended("run", time.perf_counter() - d.appending_since)
        if d.state.version > self._runs[d.run_id].version:
            self._runs[d.run_id] = d.state
        self._obs.recorded(d.before, d.state, d.events, d.span_ids)
        self._perform(d.state, effects(d.state, d.events))
        if journal.snapshot_due(d.before, d.state):
            self._spawn(self._snapshot(d.state, stored[-1].position))
        if d.state.terminal:
            self._finished[d.run_id].set()
            if self._checkpoints is not None:
                self._checkpoints.request()
        return True

    async def _reload(self, run_id: str) -> None:
        """After a failed append: let the appends decided after it settle (they fail too,
        their expected version being gone), then start again from what the store holds."""
        async with self._locks[run_id]:
            await asyncio.gather(*self._appending[run_id], return_exceptions=True)
            self._ahead.pop(run_id, None)
            with contextlib.suppress(EventStoreError):
                if await self._store.stream_version(journal.run_stream(run_id)):
                    self._runs[run_id] = await journal.load_run(self._store, run_id)
                else:
                    self._runs[run_id] = RunState(run_id)
            self._registry.set_inflight(run_id, journal.running_agents(self._runs[run_id]))

    async def _snapshot(self, state: RunState, position: int) -> None:
        try:
            await self._store.save_snapshot(journal.snapshot_of(state, position))
        except EventStoreError as exc:
            log.warning("snapshot of run %s failed (replay still works): %s", state.run_id, exc)

    # -- effects ---------------------------------------------------------------------

    def _perform(self, state: RunState, todo: Sequence[Effect]) -> None:
        """Send each agent the assignments of this decision in one request (they await
        replies); publish the rest from one task, the progress lines as one message."""
        trace = TraceContext(state.trace_id or new_trace_id(), new_span_id())
        notes: list[tuple[str, bytes, TraceContext | None]] = []
        lines: list[Progress] = []
        assignments: dict[str, list[Dispatch]] = defaultdict(list)
        for effect in todo:
            if isinstance(effect, SendAssignment):
                span, context = self._obs.dispatch_span(effect, trace)
                sent = replace(effect.assignment, traceparent=context.header())
                assignments[effect.agent_id].append(Dispatch(sent, span))
            elif isinstance(effect, SendControl):
                notes.append((subjects.control(effect.agent_id), encode(effect.control), None))
            elif isinstance(effect, PublishCallForProposals):
                notes.append((subjects.cfp(effect.call.role), encode(effect.call), trace))
            elif isinstance(effect, PublishProgress):
                lines.append(effect.progress)
        for part in _chunks(lines, ProgressBatch) if lines else []:
            notes.append((subjects.progress(state.run_id), encode(ProgressBatch(part)), trace))
        for agent_id, batch in assignments.items():
            for chunk in _chunks(batch, lambda ds: AssignBatch([d.assignment for d in ds])):
                self._spawn(self._send_assignments(state.run_id, agent_id, chunk, trace.child()))
        if notes:
            self._spawn(self._publish(notes))

    async def _publish(self, notes: list[tuple[str, bytes, TraceContext | None]]) -> None:
        for subject, data, trace in notes:
            try:
                await self._bus.publish(subject, data, trace)
            except BusError as exc:
                log.warning("publish to %s failed: %s", subject, exc)

    async def _send_assignments(
        self, run_id: str, agent_id: str, batch: list[Dispatch], trace: TraceContext
    ) -> None:
        """One request for `batch`; each assignment the agent did not take (or all, when
        the request failed) is recorded as undeliverable, which retries it. Each carries
        its dispatch span's context, which the agent's attempt span is a child of."""
        message: Assignment | AssignBatch
        if len(batch) == 1:
            message = batch[0].assignment
            trace = tracecontext.parse(message.traceparent) or trace
        else:
            message = AssignBatch([d.assignment for d in batch])
        errors: list[str]
        try:
            reply = await self._bus.request(
                subjects.assign(agent_id), encode(message), self._assign_timeout, trace
            )
            answer = _reply_decoder.decode(reply)
            if isinstance(answer, ErrorReply):
                errors = [answer.error] * len(batch)
            else:
                acks = answer.acks if isinstance(answer, AssignAcks) else [answer]
                if len(acks) != len(batch):
                    raise MalformedMessage(f"{len(acks)} answers to {len(batch)} assignments")
                errors = ["" if ack.accepted else ack.reason or "refused" for ack in acks]
        except (RequestFailed, MalformedMessage) as exc:
            errors = [str(exc)] * len(batch)
        failed: list[tuple[Command, Cause]] = []
        for d, error in zip(batch, errors, strict=True):
            self._obs.dispatched(d.span, error)
            if error:
                a = d.assignment
                cause = Cause(
                    f"{a.task_id}:{a.attempt}:undeliverable", ORCHESTRATOR, trace.trace_id
                )
                failed.append((DeliveryFailed(a.task_id, a.attempt, error), cause))
        if failed:
            await self._execute(run_id, failed)

    # -- inbound ---------------------------------------------------------------------

    async def _inbox_loop(self) -> None:
        assert self._intake is not None
        while True:
            await self._handle_inbox(await self._intake.next_batch())

    async def _handle_inbox(self, batch: list[Delivery]) -> None:
        """Decide every report in `batch` (each run's at once), skipping those already
        recorded; once a run's events are durable, acknowledge its durable messages and
        answer its fast ones (an agent sends a report durably if it gets no answer)."""
        by_run: dict[str, list[tuple[Command, Cause]]] = defaultdict(list)
        ids: dict[str, list[str]] = defaultdict(list)
        acks: dict[str, list[Delivery]] = defaultdict(list)
        taken: set[str] = set()
        for msg, durable in batch:
            try:
                sender_of = subjects.inbox_sender if durable else subjects.report_sender
                run_id, sender = sender_of(msg.subject)
                decoded = _inbox_decoder.decode(msg.data)
                items = decoded.reports if isinstance(decoded, ReportBatch) else [decoded]
                for item in items:
                    if item.run_id != run_id:
                        raise MalformedMessage(f"run {item.run_id} sent on {msg.subject}")
                if run_id not in self._runs:
                    raise MalformedMessage(f"no run {run_id}")
                if isinstance(decoded, ToolCallRecord | MemoryWrite) and not durable:
                    raise MalformedMessage("tool and memory records go to the durable inbox")
            except BusError as exc:
                await self._reject(msg.subject, str(exc), len(msg.data))
                if durable:
                    await msg.term()
                else:
                    await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
                continue
            if isinstance(decoded, ToolCallRecord | MemoryWrite):
                await self._record_agent(msg, decoded, sender)
                continue
            reports = decoded.reports if isinstance(decoded, ReportBatch) else [decoded]
            acks[run_id].append(Delivery(msg, durable))
            traces = decoded.traceparents if isinstance(decoded, ReportBatch) else []
            for n, report in enumerate(reports):
                trace = tracecontext.parse(traces[n] if n < len(traces) else "") or msg.trace
                trace_id, span_id = (trace.trace_id, trace.span_id) if trace else ("", "")
                rid = report_id(report, sender)
                if rid in taken or rid in self._recorded:
                    continue
                taken.add(rid)
                command: Command
                if isinstance(report, TaskResult):
                    refs = self.memory.shared_by(report) if report.handoff_to else ()
                    command, kind = ReportResult(report, sender, refs), "result"
                else:
                    command, kind = ReportFailure(report, sender), "failure"
                cause = Cause(
                    f"{report.task_id}:{report.attempt}:{kind}", sender, trace_id, span_id
                )
                by_run[run_id].append((command, cause))
                ids[run_id].append(rid)
        for run_id in by_run.keys() | acks.keys():
            await self._window.acquire()  # bounds the batches decided but not yet durable
            await self._unblocked(run_id)  # returns at once (no yield) unless reloading
            decision = self._decide(run_id, by_run.get(run_id, []))
            self._spawn(self._conclude(run_id, decision, ids[run_id], acks[run_id]))

    async def _conclude(
        self, run_id: str, decision: _Decision | None, ids: list[str], answer: list[Delivery]
    ) -> None:
        """Answer a batch's reports once what they caused is durable. A batch that caused
        nothing (its reports were already decided) waits for the appends in flight, since
        those hold what its reports caused."""
        try:
            if decision is not None:
                recorded = await self._commit(decision)
            else:
                pending = await asyncio.gather(*self._appending[run_id], return_exceptions=True)
                recorded = not any(isinstance(p, BaseException) for p in pending)
        finally:
            self._window.release()
        if recorded:
            self._recorded.update(ids)
        for delivery in answer:  # each is one quick publish: no task per answer
            try:
                await _answer(delivery, recorded)
            except Exception as exc:  # the agent resends or the inbox redelivers
                log.warning("could not answer on %s: %s", delivery.incoming.subject, exc)

    async def _record_agent(
        self, msg: Incoming, record: ToolCallRecord | MemoryWrite, sender: str
    ) -> None:
        """An agent's tool record or memory write: acked once durable, termed if forged
        or outside its contract (and audited as a rejected message)."""
        trace_id = msg.trace.trace_id if msg.trace else ""
        try:
            if isinstance(record, MemoryWrite):
                durable = await self.memory.write(record, sender, trace_id)
            else:
                durable = await self._agentlog.record(record, sender, trace_id)
        except MalformedMessage as exc:
            await self._reject(msg.subject, str(exc), len(msg.data))
            await msg.term()
            return
        if durable:
            await msg.ack()

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(self._tick_s)
            now = self._clock()
            for agent_id, silent in self._registry.lapsed(now):
                await self._record_system(AgentLost(agent_id, silent, self._wall()), ORCHESTRATOR)
            warm = now - self._started > self._registry.ttl
            cause = Cause("tick", ORCHESTRATOR)
            for run_id, state in list(self._runs.items()):
                if state.status == "running":
                    await self._execute(run_id, [(Tick(check_leases=warm), cause)])

    async def _on_heartbeat(self, msg: Incoming) -> None:
        try:
            hb = _heartbeat_decoder.decode(msg.data)
            if subjects.heartbeat(hb.agent_id) != msg.subject:
                raise MalformedMessage(f"heartbeat for {hb.agent_id} sent on {msg.subject}")
        except BusError as exc:
            await self._reject(msg.subject, str(exc), len(msg.data))
            return
        contracts = self._contracts
        why = ""
        if contracts is not None:
            why = contracts.verdict(hb.role, hb.contract_digest, hb.capacity)
        if why:
            await self._refuse(hb, why)
            return
        if self._registry.observe(hb, self._clock()):
            joined = AgentJoined(hb.agent_id, hb.role, hb.capabilities, hb.capacity, self._wall())
            await self._record_system(joined, hb.agent_id)

    async def _on_start_request(self, msg: Incoming) -> None:
        try:
            request = _start_decoder.decode(msg.data)
            run_id = await self.start_run(
                request.workflow,
                request.input,
                run_id=request.run_id,
                requested_by=request.requested_by,
            )
        except (BusError, WorkflowError) as exc:
            await self._reject(msg.subject, str(exc), len(msg.data))
            await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
            return
        await msg.reply(encode(RunAccepted(run_id)))

    async def _on_bid(self, msg: Incoming) -> None:
        """A contract-net bid: handed to the core, or refused and audited."""
        try:
            run_id, sender = subjects.bid_sender(msg.subject)
            bid = _bid_decoder.decode(msg.data)
            if bid.run_id != run_id or run_id not in self._runs:
                raise MalformedMessage(f"bid for run {bid.run_id} sent on {msg.subject}")
        except BusError as exc:
            await self._reject(msg.subject, str(exc), len(msg.data))
            return
        command = SubmitBid(bid, sender)
        state = self._runs[run_id]
        refused = contract_net.refusal(state, command, on_run_clock(state, self._context()))
        if refused:
            await self._reject(msg.subject, f"bid refused: {refused}", len(msg.data))
            return
        cause = Cause(f"{bid.task_id}:{bid.attempt}:bid:{sender}", sender)
        await self._execute(run_id, [(command, cause)])

    async def _on_control_request(self, msg: Incoming) -> None:
        try:
            state = await self.control(_control_decoder.decode(msg.data))
        except (BusError, OrchestratorError) as exc:
            await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
            return
        await msg.reply(encode(ControlAccepted(state.run_id, state.status)))

    def _role_of(self, agent_id: str) -> str | None:
        return self._registry.role_of(agent_id)

    def _works_in(self, run_id: str, agent_id: str) -> bool:
        """Whether the agent holds (or held last) an attempt of a task of this live run."""
        state = self._runs.get(run_id)
        return state is not None and any(t.agent_id == agent_id for t in state.tasks.values())

    async def _refuse(self, hb: Heartbeat, why: str) -> None:
        """Never route to an agent serving a contract we do not know; audit it once."""
        key = (hb.agent_id, hb.role, hb.contract_digest)
        if key not in self._refused:
            self._refused.add(key)
            log.warning("refused agent %s: %s", hb.agent_id, why)
            event = AgentRefused(hb.agent_id, hb.role, hb.contract_digest, why, self._wall())
            await self._record_system(event, hb.agent_id)

    async def _reject(self, subject: str, reason: str, size: int) -> None:
        log.warning("rejected message on %s: %s", subject, reason)
        await self._record_system(MessageRejected(subject, reason, size, self._wall()), "unknown")

    async def _record_system(self, event: SystemEvent, actor: str) -> None:
        async with self._system_lock:
            version = self._system_version + 1
            try:
                began_s = time.perf_counter()
                await self._store.append(
                    journal.SYSTEM_STREAM,
                    [journal.system_envelope(version, event, actor)],
                    self._system_version,
                )
                self._obs.appended("system", time.perf_counter() - began_s)
            except EventStoreError:
                log.exception("could not record %s", type(event).__name__)
                self._system_version = await self._store.stream_version(journal.SYSTEM_STREAM)
                return
            self._system_version = version
