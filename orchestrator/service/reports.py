"""Agents' reports, from the intake's batches to decisions and answers.

Each batch is checked (a report must come on its sender's own subject, for a run this
orchestrator serves), its reports not yet recorded are decided run by run, and each
run's messages are answered once what they caused is durable: durable copies acked (or
redelivered soon), fast copies answered either way, so an agent knows at once whether to
send the durable copy. Tool records and memory writes, also from the durable inbox, go
to the agent log and the memory service.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from bus import subjects, tracecontext
from bus.codec import Decoder, encode
from bus.connection import Incoming
from bus.errors import BusError, MalformedMessage
from bus.protocol import (
    ErrorReply,
    InboxMessage,
    MemoryWrite,
    ReportAck,
    ReportBatch,
    TaskResult,
    ToolCallRecord,
)
from orchestrator.core.commands import Command, ReportFailure, ReportResult
from orchestrator.service.agentlog import AgentLog
from orchestrator.service.background import Spawn
from orchestrator.service.intake import Delivery, Intake, Recorded, report_id
from orchestrator.service.journal import Cause
from orchestrator.service.memory import MemoryService
from orchestrator.service.pipeline import Decision, Pipeline
from orchestrator.service.system_journal import SystemJournal

log = logging.getLogger("baton.orchestrator")

_inbox_decoder: Decoder[InboxMessage] = Decoder(InboxMessage)

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


class Reports:
    """Decides what agents report and answers them once it is durable."""

    def __init__(
        self,
        pipeline: Pipeline,
        system: SystemJournal,
        memory: MemoryService,
        agentlog: AgentLog,
        spawn: Spawn,
    ) -> None:
        self._pipeline = pipeline
        self._runs = pipeline.runs
        self._system = system
        self._memory = memory
        self._agentlog = agentlog
        self._spawn = spawn
        self._recorded = Recorded()
        self._window = asyncio.Semaphore(8)

    async def serve(self, intake: Intake) -> None:
        """Handle the intake's batches, one after another, forever."""
        while True:
            await self.handle(await intake.next_batch())

    async def handle(self, batch: list[Delivery]) -> None:
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
                await self._system.reject(msg.subject, str(exc), len(msg.data))
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
                    refs = self._memory.shared_by(report) if report.handoff_to else ()
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
            await self._pipeline.unblocked(run_id)  # returns at once (no yield) unless reloading
            decision = self._pipeline.decide(run_id, by_run.get(run_id, []))
            self._spawn(self._conclude(run_id, decision, ids[run_id], acks[run_id]))

    async def _conclude(
        self, run_id: str, decision: Decision | None, ids: list[str], answer: list[Delivery]
    ) -> None:
        """Answer a batch's reports once what they caused is durable. A batch that caused
        nothing (its reports were already decided) waits for the appends in flight, since
        those hold what its reports caused."""
        try:
            if decision is not None:
                recorded = await self._pipeline.commit(decision)
            else:
                pending = await self._pipeline.settled(run_id)
                recorded = not any(isinstance(p, BaseException) for p in pending)
        finally:
            self._window.release()
        if recorded:
            self._recorded.update(run_id, ids)
        for delivery in answer:  # each is one quick publish: no task per answer
            try:
                await _answer(delivery, recorded)
            except Exception as exc:  # the agent resends or the inbox redelivers
                log.warning("could not answer on %s: %s", delivery.incoming.subject, exc)

    def forget(self, run_id: str) -> None:
        """The run ended and is no longer served: drop what was kept to answer its reports."""
        self._recorded.forget(run_id)

    async def _record_agent(
        self, msg: Incoming, record: ToolCallRecord | MemoryWrite, sender: str
    ) -> None:
        """An agent's tool record or memory write: acked once durable, termed if forged
        or outside its contract (and audited as a rejected message)."""
        trace_id = msg.trace.trace_id if msg.trace else ""
        try:
            if isinstance(record, MemoryWrite):
                durable = await self._memory.write(record, sender, trace_id)
            else:
                durable = await self._agentlog.record(record, sender, trace_id)
        except MalformedMessage as exc:
            await self._system.reject(msg.subject, str(exc), len(msg.data))
            await msg.term()
            return
        if durable:
            await msg.ack()
