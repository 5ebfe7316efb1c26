"""An agent as a long-lived service: it registers by heartbeat, takes assignments on its
own subject, runs up to `capacity` of them at once, and returns every outcome through the
durable inbox, so a result survives an orchestrator restart.

Its agent id is owned by one process at a time: each heartbeat carries this process's
random `instance`, the orchestrator answers each with a verdict, and a process refused
(another live one has the id) finishes what it holds and exits with `AgentIdTaken`.
What is sent to the id for another instance is not this process's to take or answer.

It knows only the wire protocol (`bus`), never the orchestrator or the event store.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import secrets
import signal
import time
from collections import OrderedDict

import msgspec
from msgspec.structs import replace

from agents.blobs import AgentBlobs, BlobError, BlobForged, threshold_from_env
from agents.errors import AgentIdTaken
from agents.gateway import Approver, BusRecorder, PolicyApprover, ToolGateway
from agents.memory import Memory
from agents.outbox import Outbox, track_inbox_writes
from agents.sdk import Bidder, Handler, Offer, Reply, TaskContext, TaskError, refuse_handoff
from agents.telemetry import AgentTelemetry, attempt_meter
from agents.tools import ToolRegistry
from bus import discovery, subjects, tracecontext
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming
from bus.contracts import RoleContract
from bus.errors import BusError
from bus.protocol import (
    AgentInbound,
    AssignAck,
    AssignAcks,
    AssignBatch,
    Assignment,
    Bid,
    CallForProposals,
    Control,
    ErrorReply,
    Heartbeat,
    HeartbeatAck,
    HeldTask,
    IdVerdict,
    TaskFailure,
    TaskResult,
)
from bus.supervise import Supervisor
from bus.telemetry import Telemetry
from bus.tracecontext import TraceContext

log = logging.getLogger("baton.agent")


_inbound: Decoder[AgentInbound] = Decoder(AgentInbound)
_cfp: Decoder[CallForProposals] = Decoder(CallForProposals)
_ack: Decoder[HeartbeatAck] = Decoder(HeartbeatAck)
HEARTBEAT_S = 0.5
"""The interval until the orchestrator says which it expects."""
_SEEN_LIMIT = 100_000
OFFLINE_DRAIN_S = 1.0
"""How long a draining agent waits on held work while the bus is down before it gives the
work up (the orchestrator runs it again): an outcome it cannot return is lost anyway."""
REPEAT_SIGNAL_S = 0.5
"""A second SIGTERM/SIGINT gives held work up only this long after the first: the kernel
sends the parent-death signal once per thread of a dying parent, all within a moment."""

Key = tuple[str, str, int]


def _sent_to(message: AgentInbound) -> str:
    """The process (instance) a message to an agent id is for; '' for any."""
    if isinstance(message, AssignBatch):
        return message.assignments[0].instance if message.assignments else ""
    return message.instance


class AgentRuntime:
    """One agent process's service loop around one handler (`blob_threshold`: agents.blobs)."""

    def __init__(
        self,
        bus: Bus,
        *,
        agent_id: str,
        role: str,
        handler: Handler,
        capabilities: list[str] | None = None,
        capacity: int = 4,
        heartbeat_s: float | None = None,
        bidder: Bidder | None = None,
        telemetry: Telemetry | None = None,
        contract: RoleContract | None = None,
        tools: ToolRegistry | None = None,
        approver: Approver | None = None,
        blob_threshold: int | None = None,
    ) -> None:
        self.agent_id = subjects.token(agent_id)
        self.blob_threshold = threshold_from_env() if blob_threshold is None else blob_threshold
        self.role = role
        self.contract = contract
        self._digest = contract.digest if contract else ""
        self._tools = tools
        self._approver = approver or PolicyApprover()
        self._bus = bus
        self._handler = handler
        self._capabilities = capabilities or [role]
        self._capacity = capacity
        self._heartbeat_s = heartbeat_s or HEARTBEAT_S
        self._follow = heartbeat_s is None
        """Whether to take the interval the orchestrator's answers name."""
        self.instance = secrets.token_hex(8)
        self.verdict: IdVerdict | None = None
        """What the orchestrator last said of this process's claim on its id."""
        self._slots = asyncio.Semaphore(capacity)
        self._held: dict[Key, asyncio.Task[None]] = {}
        self._seen: OrderedDict[Key, None] = OrderedDict()
        self._stopping = asyncio.Event()
        self._abandon = asyncio.Event()
        self._signalled_at = 0.0
        self._bidder = bidder
        telemetry = telemetry or Telemetry("baton-agent", enabled=False)
        self._telemetry = AgentTelemetry(telemetry, self.agent_id, role)
        self.loops = Supervisor(telemetry.meter)
        """The agent's long-running loops (its heartbeat), restarted after a crash."""
        self._outbox = Outbox(bus, self.agent_id)
        self.discovery = discovery.Service(
            discovery.AGENT,
            self.agent_id,
            lambda: discovery.agent_metadata(self._heartbeat(), self._state()),
            description=f"Baton agent ({role})",
        )
        """This process as a NATS micro service (`nats micro ls`): its endpoints count the
        assignments, controls and calls for proposals it handles."""

    def _heartbeat(self) -> Heartbeat:
        return Heartbeat(
            agent_id=self.agent_id,
            role=self.role,
            capabilities=self._capabilities,
            capacity=self._capacity,
            load=len(self._held),
            held=[HeldTask(r, t, a) for r, t, a in self._held],
            contract_digest=self._digest,
            instance=self.instance,
        )

    def _state(self) -> str:
        if self._stopping.is_set():
            return "draining"
        return self.verdict if self.verdict in ("waiting", "refused") else "serving"

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT or `stop()`, then drain: finish held work, exit;
        `AgentIdTaken` after the drain if the orchestrator refused this process its id.
        The drain gives held work up on a second signal, or once the bus has been down
        `OFFLINE_DRAIN_S` (see `_drain`)."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal)
        serve, bus, me = self.discovery.serve, self._bus, self.agent_id
        await bus.subscribe(subjects.registry(me), self._on_ack, inline=True)
        await serve(bus, "assign", subjects.assign(me), self._on_message, inline=True)
        await serve(bus, "control", subjects.control(me), self._on_message)
        await serve(bus, "cfp", subjects.cfp(self.role), self._on_cfp)
        await self.discovery.start(bus)
        beat = asyncio.create_task(self.loops.run("heartbeat", self._beat))
        await self._stopping.wait()
        await self._drain()
        await self._outbox.send_acks()
        await self.discovery.stop()
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat
        if self.verdict == "refused":
            raise AgentIdTaken(self.agent_id)

    def stop(self) -> None:
        """Stop taking work and drain."""
        self._stopping.set()

    @property
    def heartbeat_s(self) -> float:
        """The interval kept now: the one given, else the orchestrator's once it answered."""
        return self._heartbeat_s

    def _on_signal(self) -> None:
        """The first SIGTERM/SIGINT drains; another one (`REPEAT_SIGNAL_S` later or
        more) gives held work up."""
        now = time.monotonic()
        if not self._signalled_at:
            self._signalled_at = now
        elif now - self._signalled_at >= REPEAT_SIGNAL_S:
            self._abandon.set()
        self._stopping.set()

    async def _drain(self) -> None:
        """Wait for held work while its outcomes can still be returned; give up what is
        left (cancelled: the orchestrator runs it again) when told to, or once the bus
        has been down `OFFLINE_DRAIN_S`, so a stop is prompt even while reconnecting."""
        offline_since = 0.0
        while self._held and not self._abandon.is_set():
            await asyncio.wait(list(self._held.values()), timeout=0.1)
            if self._bus.connected:
                offline_since = 0.0
            elif not offline_since:
                offline_since = time.monotonic()
            elif time.monotonic() - offline_since >= OFFLINE_DRAIN_S:
                break
        if self._held:
            log.warning("stopping: %d attempt(s) given up, to be run again", len(self._held))
            held = list(self._held.values())
            for task in held:
                task.cancel()
            await asyncio.gather(*held, return_exceptions=True)

    async def _beat(self) -> None:
        while True:
            try:
                await self._bus.publish(
                    subjects.heartbeat(self.agent_id), encode(self._heartbeat())
                )
            except BusError as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self._heartbeat_s)

    async def _on_ack(self, msg: Incoming) -> None:
        """The orchestrator's answer to a heartbeat (of this process, or of another with
        the same id, which is not ours to act on)."""
        try:
            ack = _ack.decode(msg.data)
        except BusError as exc:
            log.warning("refused message on %s: %s", msg.subject, exc)
            return
        if ack.instance != self.instance:
            return
        if ack.verdict != self.verdict and ack.verdict != "owner":
            log.warning("agent id %s %s: %s", self.agent_id, ack.verdict, ack.detail)
        self.verdict = ack.verdict
        if self._follow and 0 < ack.heartbeat_s <= 3600:
            self._heartbeat_s = ack.heartbeat_s
        if ack.verdict == "refused":
            self._stopping.set()

    def _for_us(self, instance: str) -> bool:
        """Whether a message sent to this agent id is this process's to act on."""
        return not instance or instance == self.instance

    async def _on_message(self, msg: Incoming) -> None:
        try:
            message = _inbound.decode(msg.data)
        except BusError as exc:
            log.warning("refused message on %s: %s", msg.subject, exc)
            await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
            return
        if not self._for_us(_sent_to(message)):
            return  # the id's owner answers; a word from here would be taken instead
        if isinstance(message, Control):
            self._control(message)
            return
        if isinstance(message, AssignBatch):
            acks = [
                self._accept(a, tracecontext.parse(a.traceparent) or msg.trace)
                for a in message.assignments
            ]
            taken = all(ack.accepted for ack in acks)
            await self._outbox.acknowledge(msg, encode(AssignAcks(acks)), wait=taken)
            return
        ack = self._accept(message, msg.trace)
        await self._outbox.acknowledge(msg, encode(ack), wait=ack.accepted)

    async def _on_cfp(self, msg: Incoming) -> None:
        """Contract net: bid for the attempt (by default: cost = load, confidence 1),
        unless draining or the bidder declines."""
        try:
            call = _cfp.decode(msg.data)
        except BusError as exc:
            log.warning("refused call for proposals on %s: %s", msg.subject, exc)
            return
        if self._stopping.is_set() or self.verdict in ("waiting", "refused"):
            return
        ctx = TaskContext(
            call.run_id, call.task_id, call.step, call.attempt, call.role, self.agent_id, call.input
        )
        if self._bidder is None:
            offer: Offer | None = Offer(cost=float(len(self._held)))
        else:
            try:
                offer = await asyncio.wait_for(self._bidder(ctx), call.deadline_s)
            except Exception as exc:  # a failing bidder means no bid, never a dead agent
                log.warning("bidder failed for %s: %s", call.task_id, exc)
                return
        if offer is None:
            return
        bid = Bid(call.run_id, call.task_id, call.attempt, self.agent_id,
                  offer.cost, offer.time_s, offer.confidence)  # fmt: skip
        try:
            await self._bus.publish(subjects.bids(call.run_id, self.agent_id), encode(bid))
        except BusError as exc:
            log.warning("bid for %s not sent: %s", call.task_id, exc)

    def _accept(self, a: Assignment, trace: TraceContext | None) -> AssignAck:
        if self._stopping.is_set():
            return AssignAck(False, "draining")
        key = (a.run_id, a.task_id, a.attempt)
        if key in self._seen:
            return AssignAck(True, "already taken")
        self._seen[key] = None
        if len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)
        self._held[key] = asyncio.create_task(self._telemetry.traced(a, trace, self._work))
        return AssignAck(True)

    def _control(self, control: Control) -> None:
        if control.action == "drain":
            self._stopping.set()
            return
        task = self._held.get((control.run_id, control.task_id, control.attempt))
        if task is not None:
            task.cancel()

    async def _work(self, a: Assignment, trace: TraceContext | None) -> None:
        key = (a.run_id, a.task_id, a.attempt)
        ctx = TaskContext(
            a.run_id, a.task_id, a.step, a.attempt, a.role, self.agent_id, a.input, self.contract,
            usage=attempt_meter(), memory=_memory(self._bus, self.contract, self.agent_id, a),
            tools=_gateway(self._bus, self.contract, self._tools, self._approver, self.agent_id, a),
        )  # fmt: skip
        budget_s = self.contract.budget.seconds if self.contract else 0.0
        timeout_s = min(a.timeout_s, budget_s) if budget_s else a.timeout_s
        outcome: TaskResult | TaskFailure
        inbox_writes = track_inbox_writes()
        blobs = AgentBlobs(self._bus, self.agent_id, a.run_id, threshold=self.blob_threshold)
        try:
            async with self._slots:
                started = time.monotonic()
                try:
                    async with asyncio.timeout(timeout_s):  # no extra task, unlike wait_for
                        ctx, reply = await _answer(self._handler, ctx, blobs)
                    outcome = TaskResult(
                        a.run_id,
                        a.task_id,
                        a.attempt,
                        a.lease_token,
                        self.agent_id,
                        reply.output,
                        time.monotonic() - started,
                        ctx.usage.report(reply.tokens),
                        reply.subtasks,
                        reply.handoff_to,
                    )
                except TaskError as exc:
                    outcome = self._failure(a, str(exc), exc.retryable, exc.escalate)
                except BlobError as exc:  # a forged blob will not be better next time
                    retry = not isinstance(exc, BlobForged)
                    outcome = self._failure(a, f"{type(exc).__name__}: {exc}", retry)
                except TimeoutError:
                    outcome = self._failure(a, f"handler exceeded {timeout_s}s", True)
                except Exception as exc:
                    outcome = self._failure(a, f"{type(exc).__name__}: {exc}", True)
            await self._outbox.send(outcome, trace, durable=bool(inbox_writes))
        except asyncio.CancelledError:
            log.info("attempt %s of %s cancelled", a.attempt, a.task_id)
        except BusError as exc:
            log.error("could not return %s of %s: %s", a.attempt, a.task_id, exc)
        finally:
            self._held.pop(key, None)

    def _failure(
        self, a: Assignment, error: str, retryable: bool, escalate: bool = False
    ) -> TaskFailure:
        self._telemetry.failed(error, retryable)  # called in the `except`: records it
        return TaskFailure(
            a.run_id, a.task_id, a.attempt, a.lease_token, self.agent_id, error, retryable,
            escalate,
        )  # fmt: skip


async def _answer(
    handler: Handler, ctx: TaskContext, blobs: AgentBlobs
) -> tuple[TaskContext, Reply]:
    """The handler's reply to an attempt: run on its input with the blobs it refers to
    fetched, and with the large values of its output and subtasks' params stored."""
    given = await blobs.inflate(ctx.input)
    if given is not ctx.input:
        ctx = msgspec.structs.replace(ctx, input=given)
    pending = handler(ctx)
    if not inspect.isawaitable(pending):
        raise TaskError(
            f"the handler returned {type(pending).__name__}, not an awaitable: a handler is "
            "an async function (async def)",
            retryable=False,
        )
    output = await pending
    if not isinstance(output, Reply | dict):
        raise TaskError(
            f"the handler returned {type(output).__name__}: it returns a dict (the output, "
            "a JSON object) or a Reply",
            retryable=False,
        )
    reply = output if isinstance(output, Reply) else Reply(output)
    refuse_handoff(ctx.contract, reply.handoff_to)
    try:
        asks = [replace(ask, params=await blobs.deflate(ask.params)) for ask in reply.subtasks]
        shown = await blobs.deflate(reply.output)
    except (TypeError, msgspec.EncodeError) as exc:  # it would not encode the next time either
        raise TaskError(
            f"the handler's output cannot be sent: {exc} (an output, and a subtask's params, "
            "hold only JSON values: objects with string keys, arrays, strings, numbers, "
            "true, false, null)",
            retryable=False,
        ) from exc
    return ctx, replace(reply, output=shown, subtasks=asks)


def _memory(bus: Bus, contract: RoleContract | None, agent_id: str, a: Assignment) -> Memory | None:
    """An attempt's shared memory: only under a role contract (which names its scopes)."""
    if contract is None:
        return None
    return Memory(
        bus, contract, agent_id=agent_id, run_id=a.run_id, task_id=a.task_id, attempt=a.attempt
    )


def _gateway(
    bus: Bus,
    contract: RoleContract | None,
    tools: ToolRegistry | None,
    approver: Approver,
    agent_id: str,
    a: Assignment,
) -> ToolGateway | None:
    """An attempt's tool gateway: only under a role contract, and with tools to call."""
    if contract is None or tools is None:
        return None
    return ToolGateway(
        tools,
        contract,
        approver,
        BusRecorder(bus),
        run_id=a.run_id,
        task_id=a.task_id,
        attempt=a.attempt,
        agent_id=agent_id,
        bus=bus,
    )
