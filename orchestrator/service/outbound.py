"""Effects out to the bus, once their events are durable: each agent's assignments of a
decision in one request (batched, cut to stay under the message size limit), and the
rest (control, calls for proposals, the decision's progress lines as one message)
published from one task. An assignment the agent did not take comes back as a command
(`DeliveryFailed`), which the core retries."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from msgspec.structs import replace
from opentelemetry.trace import Span

from bus import subjects, tracecontext
from bus.codec import MAX_MESSAGE_BYTES, Decoder, encode
from bus.connection import Bus
from bus.errors import BusError, ConnectionClosed, MalformedMessage, RequestFailed
from bus.protocol import (
    AssignAcks,
    AssignBatch,
    Assignment,
    AssignReply,
    ErrorReply,
    Progress,
    ProgressBatch,
)
from bus.tracecontext import TraceContext, new_span_id, new_trace_id
from eventstore import EventStoreError
from orchestrator.core.commands import Command, DeliveryFailed
from orchestrator.core.effects import (
    Effect,
    PublishCallForProposals,
    PublishProgress,
    SendAssignment,
    SendControl,
)
from orchestrator.core.state import RunState
from orchestrator.service.background import Spawn
from orchestrator.service.journal import ORCHESTRATOR, Cause
from orchestrator.service.telemetry import OrchestratorTelemetry

log = logging.getLogger("baton.orchestrator")
T = TypeVar("T")

_reply_decoder: Decoder[AssignReply] = Decoder(AssignReply)

Undeliverable = Callable[[str, list[tuple[Command, Cause]]], Awaitable[Any]]
"""Takes a run's `DeliveryFailed` commands, for assignments their agents did not take."""
ByReference = Callable[[str, Assignment], Awaitable[Assignment]]
"""An assignment for an agent with its input's large parts sent as blob references."""


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


class Outbound:
    """Performs effects on the bus; never awaits its caller (it spawns the sends)."""

    def __init__(
        self,
        bus: Bus,
        obs: OrchestratorTelemetry,
        *,
        spawn: Spawn,
        undeliverable: Undeliverable,
        assign_timeout: float,
        instance_of: Callable[[str], str] = lambda agent_id: "",
        heard: Callable[[str], bool] = lambda agent_id: True,
        by_reference: ByReference | None = None,
    ) -> None:
        self._bus = bus
        self._heard = heard
        """Whether an agent's heartbeats reach this orchestrator: an assignment re-sent
        from the log to one not heard yet (this orchestrator just started, the agent is
        reconnecting) that finds no one waits for the agent to join (it is sent again
        then), or for its loss, which fails the attempt; it is not failed at once."""
        self._by_reference = by_reference
        """Stores the large parts of an assignment's input as blobs (for an input too large
        to travel in one message); without it, such an assignment is undeliverable."""
        self._instance_of = instance_of
        """The process that owns an agent id: only it may act on what is sent to the id."""
        self._obs = obs
        self._spawn = spawn
        self._undeliverable = undeliverable
        self._assign_timeout = assign_timeout

    def perform(self, state: RunState, todo: Sequence[Effect]) -> None:
        """Send each agent the assignments of this decision in one request (they await
        replies); publish the rest from one task, the progress lines as one message."""
        trace = TraceContext(state.trace_id or new_trace_id(), new_span_id())
        notes: list[tuple[str, bytes, TraceContext | None]] = []
        lines: list[Progress] = []
        assignments: dict[str, list[Dispatch]] = defaultdict(list)
        for effect in todo:
            if isinstance(effect, SendAssignment):
                span, context = self._obs.dispatch_span(effect, trace)
                instance = self._instance_of(effect.agent_id)
                sent = replace(effect.assignment, traceparent=context.header(), instance=instance)
                assignments[effect.agent_id].append(Dispatch(sent, span))
            elif isinstance(effect, SendControl):
                control = replace(effect.control, instance=self._instance_of(effect.agent_id))
                notes.append((subjects.control(effect.agent_id), encode(control), None))
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

    async def send(self, subject: str, data: bytes) -> None:
        """Publish one message now; a failure is logged (the next heartbeat's answer
        will go)."""
        await self._publish([(subject, data, None)])

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
            data = encode(message)
            large = len(data) > MAX_MESSAGE_BYTES // 2  # a lone one: batches are cut smaller
            if large and isinstance(message, Assignment) and self._by_reference is not None:
                message = await self._by_reference(agent_id, message)
                data = encode(message)
            reply = await self._bus.request(
                subjects.assign(agent_id), data, self._assign_timeout, trace
            )
            answer = _reply_decoder.decode(reply)
            if isinstance(answer, ErrorReply):
                errors = [answer.error] * len(batch)
            else:
                acks = answer.acks if isinstance(answer, AssignAcks) else [answer]
                if len(acks) != len(batch):
                    raise MalformedMessage(f"{len(acks)} answers to {len(batch)} assignments")
                errors = ["" if ack.accepted else ack.reason or "refused" for ack in acks]
        except ConnectionClosed:
            # This orchestrator's own connection is gone (it is stopping, or was cut off
            # and is a stale owner): not the agent's doing, so nothing is recorded against
            # the attempt; whoever serves the run next sends it again from the log.
            log.warning("assignments to %s not sent: the connection is closed", agent_id)
            for d in batch:
                self._obs.dispatched(d.span, "connection closed")
            return
        except RequestFailed as exc:
            if not self._heard(agent_id):
                log.info("assignments to %s wait for it to join: %s", agent_id, exc)
                for d in batch:
                    self._obs.dispatched(d.span, "waiting for the agent to join")
                return
            errors = [str(exc)] * len(batch)
        except (MalformedMessage, EventStoreError) as exc:
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
            await self._undeliverable(run_id, failed)
