"""How an agent returns its outcomes: straight to the orchestrator, else durably.

An outcome goes first as a request on core NATS (`subjects.report`); the orchestrator
answers `ReportAck` only once the events it caused are durable in its event store, the
source of truth, and says whether each outcome was accepted: a refused one (a stale
attempt, a lease no longer held, a run that ended) is logged once, as a warning with the
orchestrator's reason, and never sent again. Then the agent is done with it. With no
answer (orchestrator down, restarting, overloaded, its store failing) the outcome goes to
the durable JetStream inbox (`subjects.inbox`), which keeps it until an orchestrator has
recorded it. Either way `send` returns only once the outcome is durable somewhere, or
raises `BusError`.

Both ways are batched the same way (group commit): while messages are on their way, the
outcomes that finish meanwhile wait, and the next message carries all of them (per run,
as a `ReportBatch`); a lone outcome goes alone, with no added wait. That matters most for
the inbox, which fsyncs every message (one message at a time, in order), but it also
spares the orchestrator a message, and a decision, per outcome when many finish at once.
Direct reports may have two messages on their way: an outcome that finishes while one
waits for its answer goes at once, so a chain of tasks never waits on the answer to the
step before.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field

from bus import subjects
from bus.codec import MAX_MESSAGE_BYTES, Decoder, encode
from bus.connection import Bus, Incoming
from bus.errors import BusError, MessageIdTaken
from bus.protocol import (
    ReportAck,
    ReportBatch,
    ReportReply,
    ReportVerdict,
    TaskFailure,
    TaskResult,
)
from bus.tracecontext import TraceContext

log = logging.getLogger("baton.agent.outbox")

_inbox_writes: ContextVar[list[str] | None] = ContextVar("baton_inbox_writes", default=None)


def track_inbox_writes() -> list[str]:
    """Start noting what the current attempt puts in the durable inbox (see
    `note_inbox_write`); returns the list the notes go to."""
    writes: list[str] = []
    _inbox_writes.set(writes)
    return writes


def note_inbox_write(msg_id: str) -> None:
    """The current attempt put a record (memory write, tool call) in the durable inbox:
    its outcome must then follow through the inbox too, so the orchestrator records them
    in order (a direct report could overtake the record)."""
    writes = _inbox_writes.get()
    if writes is not None:
        writes.append(msg_id)


MAX_BATCH = 256
"""Outcomes in one message at most (and never more than the size limit allows)."""

IN_FLIGHT = {"direct": 2, "durable": 1}
"""Messages of each kind on their way at once, at most."""

REPORT_TIMEOUT_S = 2.0
"""How long an outcome waits for the orchestrator's answer before it goes durable."""
ACK_WAIT_S = 0.002
"""How long an accepted assignment's ack may wait to leave with the next outcome, so a
quick attempt's ack and outcome cost one write (and one wake-up of the server and of the
orchestrator), not two; the orchestrator waits seconds for an ack."""
Outcome = TaskResult | TaskFailure
_reply_decoder: Decoder[ReportReply] = Decoder(ReportReply)


def message_id(outcome: Outcome) -> str:
    """The durable inbox's deduplication id of a lone outcome: the attempt, its sender and
    its lease token, so no one but the attempt's owner can take the id first (a message
    under a taken id would be dropped as a duplicate)."""
    kind = "result" if isinstance(outcome, TaskResult) else "failure"
    return (
        f"{outcome.run_id}:{outcome.task_id}:{outcome.attempt}:{kind}:"
        f"{outcome.agent_id}:{outcome.lease_token}"
    )


@dataclass
class _Pending:
    outcome: Outcome
    trace: TraceContext | None
    done: asyncio.Future[ReportVerdict | None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


def _grouped(queued: list[_Pending]) -> list[list[_Pending]]:
    """Per run, in order, at most `MAX_BATCH` to a group."""
    by_run: dict[str, list[_Pending]] = {}
    for pending in queued:
        by_run.setdefault(pending.outcome.run_id, []).append(pending)
    return [g[i : i + MAX_BATCH] for g in by_run.values() for i in range(0, len(g), MAX_BATCH)]


def _messages(group: list[_Pending], batch_id: str) -> list[tuple[bytes, str, list[_Pending]]]:
    """(bytes, message id, members) for one group: one message, or one per member when
    together they would exceed the size limit."""
    first = group[0]
    if len(group) == 1:
        return [(encode(first.outcome), message_id(first.outcome), group)]
    traces = [p.trace.header() if p.trace else "" for p in group]
    data = encode(ReportBatch([p.outcome for p in group], traces))
    if len(data) <= MAX_MESSAGE_BYTES:
        return [(data, batch_id, group)]
    return [(encode(p.outcome), message_id(p.outcome), [p]) for p in group]


def _settle(
    members: list[_Pending],
    error: BaseException | None = None,
    verdicts: list[ReportVerdict | None] | None = None,
) -> None:
    for n, p in enumerate(members):
        if p.done.done():
            continue
        if error is None:
            p.done.set_result(verdicts[n] if verdicts is not None else None)
        else:
            p.done.set_exception(error)


def verdicts_of(ack: ReportAck, count: int) -> list[ReportVerdict | None]:
    """The verdict on each of the `count` reports a `ReportAck` answers: its `verdicts`
    (a batch's), else the ack's own; None where an older orchestrator said nothing."""
    if ack.verdicts:
        return [*ack.verdicts[:count], *[None] * (count - len(ack.verdicts))]
    if count == 1:
        return [ReportVerdict(ack.accepted, ack.code, ack.reason)]
    return [None] * count


def _warn_refused(members: list[_Pending], verdicts: list[ReportVerdict | None]) -> None:
    """Log each refused outcome once: it is recorded as rejected, never sent again."""
    for p, verdict in zip(members, verdicts, strict=True):
        if verdict is not None and not verdict.accepted:
            o = p.outcome
            kind = "result" if isinstance(o, TaskResult) else "failure"
            log.warning(
                "%s of attempt %s of %s refused (%s): %s; not sent again",
                kind, o.attempt, o.task_id, verdict.code, verdict.reason,
            )  # fmt: skip


async def _failure_of(
    send: Callable[[list[_Pending]], Awaitable[None]], group: list[_Pending]
) -> Exception | None:
    try:
        await send(group)
    except Exception as exc:
        return exc
    return None


class Outbox:
    """One agent's way back to the orchestrator (see the module docstring)."""

    def __init__(self, bus: Bus, agent_id: str, timeout: float = REPORT_TIMEOUT_S) -> None:
        self._bus = bus
        self._agent_id = agent_id
        self._timeout = timeout
        self._direct: list[_Pending] = []
        self._durable: list[_Pending] = []
        self._senders: dict[str, set[asyncio.Task[None]]] = {"direct": set(), "durable": set()}
        self._acks: list[tuple[Incoming, bytes]] = []
        self._acks_due: asyncio.TimerHandle | None = None
        self._ack_tasks: set[asyncio.Task[None]] = set()

    async def acknowledge(self, msg: Incoming, answer: bytes, *, wait: bool) -> None:
        """Answer an assignment message: at once unless `wait` (a refusal, which the
        orchestrator acts on, never waits), else with the next outcome sent or after
        `ACK_WAIT_S`, whichever comes first."""
        if not wait:
            await msg.reply(answer)
            return
        self._acks.append((msg, answer))
        if self._acks_due is None:
            self._acks_due = asyncio.get_running_loop().call_later(ACK_WAIT_S, self._acks_up)

    def _acks_up(self) -> None:
        self._acks_due = None
        task = asyncio.create_task(self.send_acks())
        self._ack_tasks.add(task)
        task.add_done_callback(self._ack_tasks.discard)

    async def send_acks(self) -> None:
        """Send the waiting acks now, in order (publishing never waits: what is sent
        right after them goes in the same write)."""
        if self._acks_due is not None:
            self._acks_due.cancel()
            self._acks_due = None
        acks, self._acks = self._acks, []
        for msg, answer in acks:
            try:
                await msg.reply(answer)
            except Exception as exc:  # the orchestrator's request times out: it retries
                log.warning("ack on %s not sent: %s", msg.subject, exc)

    async def send(
        self, outcome: Outcome, trace: TraceContext | None = None, *, durable: bool = False
    ) -> ReportVerdict | None:
        """Return once `outcome` is durable: recorded by the orchestrator, or in the inbox
        (straight there when `durable`, behind what the attempt already put there).
        Returns what the orchestrator made of it (a refused outcome is logged here, once),
        or None when it went to the inbox, which answers nothing."""
        pending = _Pending(outcome, trace)
        pending.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        if durable:
            self._enqueue(self._durable, pending, "durable")
        else:
            self._enqueue(self._direct, pending, "direct")
        return await asyncio.shield(pending.done)

    def _enqueue(self, queue: list[_Pending], pending: _Pending, kind: str) -> None:
        """Queue `pending`; up to `IN_FLIGHT[kind]` senders drain the queue a batch at a
        time, so what comes in while they are busy leaves together in the next batch."""
        queue.append(pending)
        senders = self._senders[kind]
        if sum(not sender.done() for sender in senders) < IN_FLIGHT[kind]:
            drain = self._send_direct if kind == "direct" else self._send_durable
            sender = asyncio.create_task(self._drain(queue, drain))
            senders.add(sender)
            sender.add_done_callback(senders.discard)

    async def _drain(
        self, queue: list[_Pending], send: Callable[[list[_Pending]], Awaitable[None]]
    ) -> None:
        while queue:
            batch = queue[:]
            queue.clear()
            groups = _grouped(batch)
            if len(groups) == 1:  # the usual case: no task to gather
                results: list[BaseException | None] = [await _failure_of(send, groups[0])]
            else:
                results = await asyncio.gather(*(_failure_of(send, g) for g in groups))
            for group, result in zip(groups, results, strict=True):
                if result is not None:  # a bug, not the bus: fail, never hang
                    log.error("sending %d outcome(s) failed: %r", len(group), result)
                    _settle(group, BusError(f"outbox: {result!r}"))

    async def _send_direct(self, group: list[_Pending]) -> None:
        """Ask the orchestrator to record `group`; what it does not answer goes durably."""
        subject = subjects.report(group[0].outcome.run_id, self._agent_id)
        unanswered: list[_Pending] = []
        await self.send_acks()  # ahead of the report, in the same write
        for data, _, members in _messages(group, ""):
            try:
                reply = await self._bus.request(subject, data, self._timeout, members[0].trace)
                answer = _reply_decoder.decode(reply)
                if isinstance(answer, ReportAck):
                    verdicts = verdicts_of(answer, len(members))
                    _warn_refused(members, verdicts)
                    _settle(members, verdicts=verdicts)
                    continue
            except BusError as exc:
                log.debug("%d report(s) not answered (%s); sending durably", len(members), exc)
            unanswered += members
        for pending in unanswered:
            self._enqueue(self._durable, pending, "durable")

    async def _send_durable(self, group: list[_Pending]) -> None:
        subject = subjects.inbox(group[0].outcome.run_id, self._agent_id)
        batch_id = f"{self._agent_id}:batch:{secrets.token_hex(8)}"
        await self.send_acks()
        for data, msg_id, members in _messages(group, batch_id):
            trace = members[0].trace
            try:
                try:
                    await self._bus.publish_durable(subject, data, msg_id, trace)
                except MessageIdTaken as exc:  # dropped, not stored: send it under a new id
                    log.warning("%s; sending it again under a new id", exc)
                    fresh = f"{msg_id}:{secrets.token_hex(8)}"
                    await self._bus.publish_durable(subject, data, fresh, trace)
            except BusError as exc:
                _settle(members, exc)
                continue
            _settle(members)
