"""How an agent returns its outcomes: straight to the orchestrator, else durably.

An outcome goes first as a request on core NATS (`subjects.report`); the orchestrator
answers `ReportAck` only once the events it caused are durable in its event store, the
source of truth. Then the agent is done with it. With no answer (orchestrator down,
restarting, overloaded, its store failing) the outcome goes to the durable JetStream
inbox (`subjects.inbox`), which keeps it until an orchestrator has recorded it. Either
way `send` returns only once the outcome is durable somewhere, or raises `BusError`.

The inbox fsyncs every message, so durable copies are batched: the outbox sends one
message while the outcomes that fall back meanwhile wait, and the next message carries
all of them (per run, as a `ReportBatch`). A lone outcome goes alone, with no added wait.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass, field

from bus import subjects
from bus.codec import MAX_MESSAGE_BYTES, Decoder, encode
from bus.connection import Bus
from bus.errors import BusError, MalformedMessage, RequestFailed
from bus.protocol import ReportAck, ReportBatch, ReportReply, TaskFailure, TaskResult
from bus.tracecontext import TraceContext

log = logging.getLogger("baton.agent.outbox")
MAX_BATCH = 256
"""Outcomes in one durable message at most (and never more than the size limit allows)."""

REPORT_TIMEOUT_S = 2.0
"""How long an outcome waits for the orchestrator's answer before it goes durable."""
Outcome = TaskResult | TaskFailure
_reply_decoder: Decoder[ReportReply] = Decoder(ReportReply)


def message_id(outcome: Outcome) -> str:
    """The durable inbox's deduplication id of a lone outcome."""
    kind = "result" if isinstance(outcome, TaskResult) else "failure"
    return f"{outcome.run_id}:{outcome.task_id}:{outcome.attempt}:{kind}"


@dataclass
class _Pending:
    outcome: Outcome
    trace: TraceContext | None
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


class Outbox:
    """One agent's way back to the orchestrator (see the module docstring)."""

    def __init__(self, bus: Bus, agent_id: str, timeout: float = REPORT_TIMEOUT_S) -> None:
        self._bus = bus
        self._agent_id = agent_id
        self._timeout = timeout
        self._queue: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None

    async def send(self, outcome: Outcome, trace: TraceContext | None = None) -> None:
        """Return once `outcome` is durable: recorded by the orchestrator, or in the inbox."""
        trace = trace.child() if trace else None
        subject = subjects.report(outcome.run_id, self._agent_id)
        try:
            reply = await self._bus.request(subject, encode(outcome), self._timeout, trace)
            if isinstance(_reply_decoder.decode(reply), ReportAck):
                return
        except (RequestFailed, MalformedMessage) as exc:
            log.debug("%s not answered (%s); sending it durably", message_id(outcome), exc)
        pending = _Pending(outcome, trace)
        pending.done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._queue.append(pending)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())
        await asyncio.shield(pending.done)

    async def _flush(self) -> None:
        while self._queue:
            queued, self._queue = self._queue, []
            by_run: dict[str, list[_Pending]] = {}
            for pending in queued:
                by_run.setdefault(pending.outcome.run_id, []).append(pending)
            groups = [
                g[i : i + MAX_BATCH] for g in by_run.values() for i in range(0, len(g), MAX_BATCH)
            ]
            await asyncio.gather(*(self._publish(group) for group in groups))

    async def _publish(self, group: list[_Pending]) -> None:
        first = group[0]
        subject = subjects.inbox(first.outcome.run_id, self._agent_id)
        if len(group) == 1:
            batches = [(encode(first.outcome), message_id(first.outcome), group)]
        else:
            data = encode(ReportBatch([p.outcome for p in group]))
            if len(data) <= MAX_MESSAGE_BYTES:
                batch_id = f"{self._agent_id}:batch:{secrets.token_hex(8)}"
                batches = [(data, batch_id, group)]
            else:  # too big together: each on its own
                batches = [(encode(p.outcome), message_id(p.outcome), [p]) for p in group]
        for data, msg_id, members in batches:
            try:
                await self._bus.publish_durable(subject, data, msg_id, members[0].trace)
            except BusError as exc:
                for p in members:
                    if not p.done.done():
                        p.done.set_exception(exc)
                continue
            for p in members:
                if not p.done.done():
                    p.done.set_result(None)
