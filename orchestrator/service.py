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
from typing import Any

from bus import subjects
from bus.codec import MAX_MESSAGE_BYTES, Decoder, encode
from bus.connection import Bus, Incoming, Subscription
from bus.errors import BusError, MalformedMessage, RequestFailed
from bus.protocol import (
    AssignAcks,
    AssignBatch,
    Assignment,
    AssignReply,
    ErrorReply,
    Heartbeat,
    InboxMessage,
    ReportAck,
    ReportBatch,
    TaskResult,
)
from bus.tracecontext import TraceContext, new_span_id, new_trace_id
from eventstore import EventStore, EventStoreError, StoredEvent
from orchestrator import journal
from orchestrator.api import RunAccepted, StartRunRequest
from orchestrator.commands import (
    Command,
    Context,
    DeliveryFailed,
    ReportFailure,
    ReportResult,
    StartRun,
    Tick,
)
from orchestrator.decide import decide, load_delta
from orchestrator.effects import (
    Effect,
    PublishProgress,
    SendAssignment,
    SendControl,
    effects,
    pending_effects,
)
from orchestrator.errors import RunNotRecorded, UnknownRun, WorkflowError
from orchestrator.events import AgentJoined, AgentLost, MessageRejected, RunEvent, SystemEvent
from orchestrator.intake import Delivery, Intake, Recorded, report_id
from orchestrator.journal import ORCHESTRATOR, Cause
from orchestrator.registry import Registry
from orchestrator.state import RunState, fold
from orchestrator.tokens import LeaseTokens
from orchestrator.workflow import WorkflowSpec, validate

log = logging.getLogger("baton.orchestrator")

_inbox_decoder: Decoder[InboxMessage] = Decoder(InboxMessage)
_heartbeat_decoder: Decoder[Heartbeat] = Decoder(Heartbeat)
_reply_decoder: Decoder[AssignReply] = Decoder(AssignReply)
_start_decoder: Decoder[StartRunRequest] = Decoder(StartRunRequest)


def _causes(
    state: RunState, command: Command, cause: Cause, count: int, run_trace: str
) -> list[Cause]:
    """Causes for one decision's events, so `baton audit --why` can walk them back.

    The decision's first event is caused by what came in; a report is traced to the
    assignment of the attempt it answers. The rest (assignments, endings) are caused by
    that first event.
    """
    first = cause
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
        first = Cause(journal.event_id(state.run_id, task.assigned_event), cause.actor)
    trace = cause.trace_id or run_trace
    then = Cause(journal.event_id(state.run_id, state.version + 1), ORCHESTRATOR, trace)
    return [Cause(first.causation_id, first.actor, trace)] + [then] * (count - 1)


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


def _chunks(batch: list[Assignment]) -> list[list[Assignment]]:
    """`batch` cut into messages that stay well under the size limit."""
    if len(batch) == 1:
        return [batch]
    chunks: list[list[Assignment]] = [[]]
    size = 0
    for a in batch:
        n = len(encode(a))
        if chunks[-1] and size + n > MAX_MESSAGE_BYTES // 2:
            chunks.append([])
            size = 0
        chunks[-1].append(a)
        size += n
    return chunks


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
    ) -> None:
        self._bus = bus
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

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Recover every run from the store, then serve the inbox, heartbeats and the API."""
        self._started = self._clock()
        self._system_version = await self._store.stream_version(journal.SYSTEM_STREAM)
        await self._bus.ensure_inbox()
        self._intake = Intake(await self._bus.inbox_consumer(self._durable), self._fetch_batch)
        self._subscriptions = [
            await self._bus.subscribe(subjects.REPORT_ALL, self._intake.offer_fast),
            await self._bus.subscribe(subjects.HEARTBEAT_ALL, self._on_heartbeat),
            await self._bus.subscribe(subjects.API_START_RUN, self._on_start_request),
        ]
        await self._recover()
        self._spawn(self._intake.fetch_durable())
        self._spawn(self._inbox_loop())
        self._spawn(self._tick_loop())

    async def stop(self) -> None:
        """Stop serving: no more inbox, heartbeats, API or timers; the log keeps the rest."""
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions = []
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _recover(self) -> None:
        for stream in await self._store.streams(journal.RUN_PREFIX):
            if await journal.has_ended(self._store, stream):
                continue
            run_id = journal.run_id_of(stream)
            state = await journal.load_run(self._store, run_id)
            self._runs[run_id] = state
            self._registry.set_inflight(run_id, journal.running_agents(state))
            self._perform(state, pending_effects(state))

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

    def _context(self, delta: Counter[str]) -> Context:
        now = self._clock()
        return Context(
            now=now,
            wall=self._wall(),
            agents=self._registry.live(now, delta),
            new_token=self._tokens,
            random=self._rng.random,
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
        before = state = self._ahead.get(run_id) or self._runs[run_id]
        events: list[RunEvent] = []
        causes: list[Cause] = []
        delta: Counter[str] = Counter()
        for command, cause in items:
            decided = decide(state, command, self._context(delta))
            if decided:
                after = fold(state, decided)
                causes += _causes(state, command, cause, len(decided), after.trace_id)
                state = after
                events += decided
                delta.update(load_delta(decided))
        if not events:
            return None
        self._ahead[run_id] = state
        self._registry.set_inflight(run_id, journal.running_agents(state))
        envelopes = journal.run_envelopes(run_id, before.version + 1, events, causes)
        append = asyncio.ensure_future(
            self._store.append(journal.run_stream(run_id), envelopes, before.version)
        )
        self._appending[run_id].add(append)
        append.add_done_callback(self._appending[run_id].discard)
        return _Decision(run_id, before, state, events, append)

    async def _commit(self, d: _Decision) -> bool:
        """Once the decision's append is durable, act on it; on failure, reload the run."""
        try:
            stored = await d.append
        except EventStoreError:
            log.exception("append to run %s failed; reloading it from the store", d.run_id)
            await self._reload(d.run_id)
            return False
        if d.state.version > self._runs[d.run_id].version:
            self._runs[d.run_id] = d.state
        self._perform(d.state, effects(d.state, d.events))
        if d.state.version // journal.SNAPSHOT_EVERY > d.before.version // journal.SNAPSHOT_EVERY:
            self._spawn(self._snapshot(d.state, stored[-1].position))
        if d.state.terminal:
            self._finished[d.run_id].set()
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
        replies); publish the rest from one task, since a big decision has thousands."""
        trace = TraceContext(state.trace_id or new_trace_id(), new_span_id())
        notes: list[tuple[str, bytes, TraceContext | None]] = []
        assignments: dict[str, list[Assignment]] = defaultdict(list)
        for effect in todo:
            if isinstance(effect, SendAssignment):
                assignments[effect.agent_id].append(effect.assignment)
            elif isinstance(effect, SendControl):
                notes.append((subjects.control(effect.agent_id), encode(effect.control), None))
            elif isinstance(effect, PublishProgress):
                notes.append((subjects.progress(state.run_id), encode(effect.progress), trace))
        for agent_id, batch in assignments.items():
            for chunk in _chunks(batch):
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
        self, run_id: str, agent_id: str, batch: list[Assignment], trace: TraceContext
    ) -> None:
        """One request for `batch`; each assignment the agent did not take (or all, when
        the request failed) is recorded as undeliverable, which retries it."""
        message = batch[0] if len(batch) == 1 else AssignBatch(batch)
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
        failed = [
            (
                DeliveryFailed(a.task_id, a.attempt, error),
                Cause(f"{a.task_id}:{a.attempt}:undeliverable", ORCHESTRATOR, trace.trace_id),
            )
            for a, error in zip(batch, errors, strict=True)
            if error
        ]
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
                reports = decoded.reports if isinstance(decoded, ReportBatch) else [decoded]
                for report in reports:
                    if report.run_id != run_id:
                        raise MalformedMessage(f"run {report.run_id} sent on {msg.subject}")
                if run_id not in self._runs:
                    raise MalformedMessage(f"no run {run_id}")
            except BusError as exc:
                await self._reject(msg.subject, str(exc), len(msg.data))
                if durable:
                    await msg.term()
                else:
                    await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
                continue
            acks[run_id].append(Delivery(msg, durable))
            trace_id = msg.trace.trace_id if msg.trace else ""
            for report in reports:
                rid = report_id(report)
                if rid in taken or rid in self._recorded:
                    continue
                taken.add(rid)
                command: Command
                if isinstance(report, TaskResult):
                    command, kind = ReportResult(report, sender), "result"
                else:
                    command, kind = ReportFailure(report, sender), "failure"
                cause = Cause(f"{report.task_id}:{report.attempt}:{kind}", sender, trace_id)
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
        await asyncio.gather(*(_answer(m, recorded) for m in answer), return_exceptions=True)

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

    async def _reject(self, subject: str, reason: str, size: int) -> None:
        log.warning("rejected message on %s: %s", subject, reason)
        await self._record_system(MessageRejected(subject, reason, size, self._wall()), "unknown")

    async def _record_system(self, event: SystemEvent, actor: str) -> None:
        async with self._system_lock:
            version = self._system_version + 1
            try:
                await self._store.append(
                    journal.SYSTEM_STREAM,
                    [journal.system_envelope(version, event, actor)],
                    self._system_version,
                )
            except EventStoreError:
                log.exception("could not record %s", type(event).__name__)
                self._system_version = await self._store.stream_version(journal.SYSTEM_STREAM)
                return
            self._system_version = version
