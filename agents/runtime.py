"""An agent as a long-lived service: it registers by heartbeat, takes assignments on its
own subject, runs up to `capacity` of them at once, and returns every outcome through the
durable inbox, so a result survives an orchestrator restart.

It knows only the wire protocol (`bus`), never the orchestrator or the event store.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections import OrderedDict

from agents.outbox import Outbox
from agents.sdk import Handler, TaskContext, TaskError
from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming
from bus.errors import BusError
from bus.protocol import (
    AgentInbound,
    AssignAck,
    AssignAcks,
    AssignBatch,
    Assignment,
    Control,
    ErrorReply,
    Heartbeat,
    HeldTask,
    TaskFailure,
    TaskResult,
)
from bus.tracecontext import TraceContext

log = logging.getLogger("baton.agent")
_inbound: Decoder[AgentInbound] = Decoder(AgentInbound)
_SEEN_LIMIT = 100_000

Key = tuple[str, str, int]


class AgentRuntime:
    """One agent process's service loop around one handler."""

    def __init__(
        self,
        bus: Bus,
        *,
        agent_id: str,
        role: str,
        handler: Handler,
        capabilities: list[str] | None = None,
        capacity: int = 4,
        heartbeat_s: float = 0.5,
    ) -> None:
        self.agent_id = subjects.token(agent_id)
        self.role = role
        self._bus = bus
        self._handler = handler
        self._capabilities = capabilities or [role]
        self._capacity = capacity
        self._heartbeat_s = heartbeat_s
        self._slots = asyncio.Semaphore(capacity)
        self._held: dict[Key, asyncio.Task[None]] = {}
        self._seen: OrderedDict[Key, None] = OrderedDict()
        self._stopping = asyncio.Event()
        self._outbox = Outbox(bus, self.agent_id)

    def _heartbeat(self) -> Heartbeat:
        return Heartbeat(
            agent_id=self.agent_id,
            role=self.role,
            capabilities=self._capabilities,
            capacity=self._capacity,
            load=len(self._held),
            held=[HeldTask(r, t, a) for r, t, a in self._held],
        )

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT or `stop()`, then drain: finish held work, exit."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._stopping.set)
        await self._bus.subscribe(subjects.assign(self.agent_id), self._on_message)
        await self._bus.subscribe(subjects.control(self.agent_id), self._on_message)
        beat = asyncio.create_task(self._beat())
        await self._stopping.wait()
        if self._held:
            await asyncio.gather(*self._held.values(), return_exceptions=True)
        beat.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beat

    def stop(self) -> None:
        self._stopping.set()

    async def _beat(self) -> None:
        while True:
            try:
                await self._bus.publish(
                    subjects.heartbeat(self.agent_id), encode(self._heartbeat())
                )
            except BusError as exc:
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self._heartbeat_s)

    async def _on_message(self, msg: Incoming) -> None:
        try:
            message = _inbound.decode(msg.data)
        except BusError as exc:
            log.warning("refused message on %s: %s", msg.subject, exc)
            await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
            return
        if isinstance(message, Control):
            self._control(message)
            return
        if isinstance(message, AssignBatch):
            acks = [self._accept(a, msg.trace) for a in message.assignments]
            await msg.reply(encode(AssignAcks(acks)))
            return
        await msg.reply(encode(self._accept(message, msg.trace)))

    def _accept(self, a: Assignment, trace: TraceContext | None) -> AssignAck:
        if self._stopping.is_set():
            return AssignAck(False, "draining")
        key = (a.run_id, a.task_id, a.attempt)
        if key in self._seen:
            return AssignAck(True, "already taken")
        self._seen[key] = None
        if len(self._seen) > _SEEN_LIMIT:
            self._seen.popitem(last=False)
        self._held[key] = asyncio.create_task(self._work(a, trace))
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
        ctx = TaskContext(a.run_id, a.task_id, a.step, a.attempt, a.role, self.agent_id, a.input)
        outcome: TaskResult | TaskFailure
        try:
            async with self._slots:
                started = time.monotonic()
                try:
                    async with asyncio.timeout(a.timeout_s):  # no extra task, unlike wait_for
                        output = await self._handler(ctx)
                    outcome = TaskResult(
                        a.run_id,
                        a.task_id,
                        a.attempt,
                        a.lease_token,
                        self.agent_id,
                        output,
                        time.monotonic() - started,
                    )
                except TaskError as exc:
                    outcome = self._failure(a, str(exc), exc.retryable)
                except TimeoutError:
                    outcome = self._failure(a, f"handler exceeded {a.timeout_s}s", True)
                except Exception as exc:
                    outcome = self._failure(a, f"{type(exc).__name__}: {exc}", True)
            await self._outbox.send(outcome, trace)
        except asyncio.CancelledError:
            log.info("attempt %s of %s cancelled", a.attempt, a.task_id)
        except BusError as exc:
            log.error("could not return %s of %s: %s", a.attempt, a.task_id, exc)
        finally:
            self._held.pop(key, None)

    def _failure(self, a: Assignment, error: str, retryable: bool) -> TaskFailure:
        return TaskFailure(
            a.run_id, a.task_id, a.attempt, a.lease_token, self.agent_id, error, retryable
        )
