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
from typing import Any

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, InboxConsumer, Incoming, Subscription
from bus.contracts import Contracts
from bus.errors import BusError, MalformedMessage, RequestFailed
from bus.protocol import (
    AssignAck,
    AssignReply,
    ErrorReply,
    Heartbeat,
    InboxMessage,
    MemoryWrite,
    TaskResult,
    ToolCallRecord,
)
from bus.tracecontext import TraceContext, new_span_id, new_trace_id
from eventstore import EventStore, EventStoreError
from orchestrator import journal
from orchestrator.agentlog import AgentLog
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
from orchestrator.events import (
    AgentJoined,
    AgentLost,
    AgentRefused,
    MessageRejected,
    RunEvent,
    SystemEvent,
)
from orchestrator.journal import ORCHESTRATOR, Cause
from orchestrator.memory import Embedder, MemoryService
from orchestrator.registry import Registry
from orchestrator.state import RunState, fold
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
        contracts: Contracts | None = None,
    ) -> None:
        self._bus = bus
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
        self._runs: dict[str, RunState] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._finished: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self._system_lock = asyncio.Lock()
        self._system_version = 0
        self._started = 0.0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._consumer: InboxConsumer | None = None
        self._subscriptions: list[Subscription] = []

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Recover every run from the store, then serve the inbox, heartbeats and the API."""
        self._started = self._clock()
        self._system_version = await self._store.stream_version(journal.SYSTEM_STREAM)
        await self._bus.ensure_inbox()
        self._consumer = await self._bus.inbox_consumer(self._durable)
        self._subscriptions = [
            await self._bus.subscribe(subjects.HEARTBEAT_ALL, self._on_heartbeat),
            await self._bus.subscribe(subjects.API_START_RUN, self._on_start_request),
        ]
        await self._recover()
        await self.memory.start()
        self._spawn(self._inbox_loop())
        self._spawn(self._tick_loop())

    async def stop(self) -> None:
        """Stop serving: no more inbox, heartbeats, API or timers; the log keeps the rest."""
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._subscriptions = []
        await self.memory.stop()
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
        run_id = subjects.token(run_id or new_run_id())
        command = StartRun(
            run_id, workflow, {**workflow.input, **(input or {})}, new_trace_id(), requested_by
        )
        if run_id in self._runs or await self._store.stream_version(journal.run_stream(run_id)):
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
            new_token=lambda: secrets.token_hex(16),
            random=self._rng.random,
        )

    async def _execute(self, run_id: str, items: Sequence[tuple[Command, Cause]]) -> bool:
        """Decide each command in turn, append all resulting events at once, then act.

        False when the append failed: the in-memory state is reloaded from the store and
        the caller must not acknowledge what caused the commands.
        """
        async with self._locks[run_id]:
            before = state = self._runs[run_id]
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
                return True
            envelopes = journal.run_envelopes(run_id, before.version + 1, events, causes)
            try:
                stored = await self._store.append(
                    journal.run_stream(run_id), envelopes, before.version
                )
            except EventStoreError:
                log.exception("append to run %s failed; reloading it from the store", run_id)
                if before.version:
                    with contextlib.suppress(EventStoreError):
                        self._runs[run_id] = await journal.load_run(self._store, run_id)
                return False
            self._runs[run_id] = state
            self._registry.set_inflight(run_id, journal.running_agents(state))
            self._perform(state, effects(state, events))
            if state.version // journal.SNAPSHOT_EVERY > before.version // journal.SNAPSHOT_EVERY:
                self._spawn(self._snapshot(state, stored[-1].position))
            if state.terminal:
                self._finished[run_id].set()
            return True

    async def _snapshot(self, state: RunState, position: int) -> None:
        try:
            await self._store.save_snapshot(journal.snapshot_of(state, position))
        except EventStoreError as exc:
            log.warning("snapshot of run %s failed (replay still works): %s", state.run_id, exc)

    # -- effects ---------------------------------------------------------------------

    def _perform(self, state: RunState, todo: Sequence[Effect]) -> None:
        trace = TraceContext(state.trace_id or new_trace_id(), new_span_id())
        for effect in todo:
            if isinstance(effect, SendAssignment):
                self._spawn(self._send_assignment(state.run_id, effect, trace.child()))
            elif isinstance(effect, SendControl):
                self._spawn(
                    self._publish(subjects.control(effect.agent_id), encode(effect.control))
                )
            elif isinstance(effect, PublishProgress):
                self._spawn(
                    self._publish(subjects.progress(state.run_id), encode(effect.progress), trace)
                )

    async def _publish(self, subject: str, data: bytes, trace: TraceContext | None = None) -> None:
        try:
            await self._bus.publish(subject, data, trace)
        except BusError as exc:
            log.warning("publish to %s failed: %s", subject, exc)

    async def _send_assignment(
        self, run_id: str, effect: SendAssignment, trace: TraceContext
    ) -> None:
        a = effect.assignment
        try:
            reply = await self._bus.request(
                subjects.assign(effect.agent_id), encode(a), self._assign_timeout, trace
            )
            answer = _reply_decoder.decode(reply)
            if isinstance(answer, AssignAck) and answer.accepted:
                return
            error = answer.error if isinstance(answer, ErrorReply) else answer.reason
        except (RequestFailed, MalformedMessage) as exc:
            error = str(exc)
        cause = Cause(f"{a.task_id}:{a.attempt}:undeliverable", ORCHESTRATOR, trace.trace_id)
        await self._execute(run_id, [(DeliveryFailed(a.task_id, a.attempt, error), cause)])

    # -- inbound ---------------------------------------------------------------------

    async def _inbox_loop(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.fetch(self._fetch_batch, timeout=1.0)
            except BusError as exc:
                log.warning("%s; retrying", exc)
                await asyncio.sleep(0.5)
                continue
            await self._handle_inbox(batch)

    async def _handle_inbox(self, batch: list[Incoming]) -> None:
        by_run: dict[str, list[tuple[Command, Cause]]] = defaultdict(list)
        acks: dict[str, list[Incoming]] = defaultdict(list)
        for msg in batch:
            try:
                run_id, sender = subjects.inbox_sender(msg.subject)
                report = _inbox_decoder.decode(msg.data)
                if report.run_id != run_id:
                    raise MalformedMessage(f"run {report.run_id} sent on {msg.subject}")
                if run_id not in self._runs:
                    raise MalformedMessage(f"no run {run_id}")
            except BusError as exc:
                await self._reject(msg.subject, str(exc), len(msg.data))
                await msg.term()
                continue
            if isinstance(report, ToolCallRecord | MemoryWrite):
                await self._record_agent(msg, report, sender)
                continue
            command: Command
            if isinstance(report, TaskResult):
                command, kind = ReportResult(report, sender), "result"
            else:
                command, kind = ReportFailure(report, sender), "failure"
            trace_id = msg.trace.trace_id if msg.trace else ""
            cause = Cause(f"{report.task_id}:{report.attempt}:{kind}", sender, trace_id)
            by_run[run_id].append((command, cause))
            acks[run_id].append(msg)
        for run_id, items in by_run.items():
            if await self._execute(run_id, items):
                await asyncio.gather(*(m.ack() for m in acks[run_id]), return_exceptions=True)

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
