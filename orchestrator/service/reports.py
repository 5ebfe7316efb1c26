"""Agents' reports, from the intake's batches to decisions and answers.

Each batch is checked (a report must come on its sender's own subject, for a run this
orchestrator serves), its reports not yet recorded are decided run by run, and each
run's messages are answered once what they caused is durable: durable copies acked (or
redelivered soon), fast copies answered either way, so an agent knows at once whether to
send the durable copy. Tool records and memory writes, also from the durable inbox, go
to the agent log and the memory service.

No message can stop this: one that does not decode, or is not allowed, is refused
(audited, terminated or answered with an error); one whose handling fails (a bug) is
isolated from the rest of its batch and redelivered with a backoff, and on its
`MAX_DELIVERIES`th failure recorded as a dead letter and taken out of the inbox.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Literal, NamedTuple

from bus import blobs, subjects, tracecontext
from bus.codec import Decoder, encode
from bus.connection import Incoming
from bus.errors import BusError, MalformedMessage
from bus.protocol import (
    ErrorReply,
    InboxMessage,
    MemoryWrite,
    Payload,
    ReportAck,
    ReportBatch,
    ReportVerdict,
    TaskFailure,
    TaskResult,
    ToolCallRecord,
)
from orchestrator.core.commands import Command, ReportFailure, ReportResult
from orchestrator.core.report_check import ACCEPTED, DUPLICATE_VERDICT
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
PASS_S = 0.2
"""A durable message for a run another orchestrator serves is handed back for this long
(orchestrators sharing the runs share one inbox consumer: its owner takes it)."""
MAX_DELIVERIES = 5
"""A durable message whose handling failed this many times is dead-lettered."""
RECORDED_LIMIT = 50_000
"""Ids of reports known to be in the log, the newest this many. Forgetting an old one
costs a decision and no state: the core finds its second copy a duplicate (or, if its
attempt was retried since, a stale report, which it records as rejected)."""
_RECORDED = encode(ReportAck())
_NOT_RECORDED = encode(ErrorReply("NotRecorded", "the event store refused the append"))


def failed_backoff_s(deliveries: int) -> float:
    """How long a message whose handling failed waits before its next delivery."""
    return float(min(0.1 * 2 ** max(deliveries - 1, 0), 5.0))


class _Member(NamedTuple):
    """One message's part of a run's batch: its commands and the ids of its reports."""

    delivery: Delivery
    items: list[tuple[Command, Cause]]
    ids: list[str]
    """The ids of the reports decided in this batch, one per item."""
    reports: list[tuple[str, Seen]]
    """Every report of the message, in order: its id, and how it was seen."""


Seen = Literal["new", "copy", "recorded"]
"""A report decided for this message (`new`), carried first by another message of the
same batch (`copy`), or recorded before the batch (`recorded`)."""


def _ack(
    reports: list[tuple[str, Seen]], decided: dict[str, ReportVerdict], recorded: Recorded
) -> bytes:
    """The `ReportAck` of one fast message: each report's verdict, from this batch's
    decision, or from the log for a report recorded before (a copy of an accepted
    report is a duplicate; of a refused one, refused again). Where nothing is known (the
    run was no longer in memory to decide on), a plain acceptance, as before verdicts."""
    verdicts: list[ReportVerdict] = []
    for rid, seen in reports:
        known = recorded.verdict(rid) if seen == "recorded" else decided.get(rid)
        if known is not None and (seen == "new" or not known.accepted):
            verdicts.append(known)
        elif known is None and seen != "recorded":
            verdicts.append(ACCEPTED)
        else:  # a copy of a report accepted earlier
            verdicts.append(DUPLICATE_VERDICT)
    if len(verdicts) == 1:
        [only] = verdicts
        if only == ACCEPTED:
            return _RECORDED
        return encode(ReportAck(only.accepted, only.code, only.reason))
    refused = [v for v in verdicts if not v.accepted]
    head = refused[0] if refused else ACCEPTED
    return encode(ReportAck(not refused, head.code, head.reason, verdicts))


async def _settle(answer: Awaitable[None], subject: str) -> None:
    """Send one answer (ack, nak, term or reply); a failure to send is logged: the agent
    resends, or the inbox redelivers."""
    try:
        await answer
    except Exception as exc:
        log.warning("could not answer on %s: %s", subject, exc)


async def _answer(delivery: Delivery, recorded: bool, ack: bytes = _RECORDED) -> None:
    """Acknowledge a durable report once recorded (else have it redelivered soon); answer
    a fast one either way (`ack`: what was made of its reports), so its agent knows at
    once whether to send it durably."""
    msg, durable = delivery
    if durable:
        await _settle(msg.ack() if recorded else msg.nak(_RETRY_S), msg.subject)
    else:
        await _settle(msg.reply(ack if recorded else _NOT_RECORDED), msg.subject)


async def blobs_checked(
    decoded: TaskResult | TaskFailure | ReportBatch,
    unstored: Callable[[list[Payload]], Awaitable[str]],
) -> TaskResult | TaskFailure | ReportBatch:
    """`decoded` with each result whose output (or a subtask's params) refers to a blob the
    store lacks (or holds at another size, `unstored` says why) made a retryable failure
    that says so: the log never refers to a value no one can read."""
    reports = decoded.reports if isinstance(decoded, ReportBatch) else [decoded]
    checked: list[TaskResult | TaskFailure] = []
    for report in reports:
        why = ""
        if isinstance(report, TaskResult):
            why = await unstored([report.output, *(s.params for s in report.subtasks)])
        if why:
            report = TaskFailure(
                report.run_id, report.task_id, report.attempt, report.lease_token,
                report.agent_id, f"result refused: {why}", True,
            )  # fmt: skip
        checked.append(report)
    if isinstance(decoded, ReportBatch):
        return ReportBatch(checked, decoded.traceparents)
    return checked[0]


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
        self.recorded = Recorded(RECORDED_LIMIT)
        """Ids of reports whose events are durable (see `RECORDED_LIMIT`)."""
        self._window = asyncio.Semaphore(8)
        self.elsewhere: Callable[[str], bool] | None = None
        self.unstored: Callable[[list[Payload]], Awaitable[str]] | None = None
        """Why an output refers to a blob that cannot be read ('' if it does not): set
        by the orchestrator to its blob service's check."""
        self.unserved: Callable[[str], Awaitable[bool]] | None = None
        """Sharing the runs: whether a run of this one's partitions, not in memory, is open
        in the log (a stale holder started it after the claim: taken over soon)."""
        """Whether a run is another orchestrator's to decide for (sharing the runs)."""

    async def serve(self, intake: Intake) -> None:
        """Handle the intake's batches, one after another, forever."""
        while True:
            await self.handle(await intake.next_batch())

    async def handle(self, batch: list[Delivery]) -> None:
        """Decide every report in `batch` (each run's at once), skipping those already
        recorded; once a run's events are durable, acknowledge its durable messages and
        answer its fast ones (an agent sends a report durably if it gets no answer)."""
        by_run: dict[str, list[_Member]] = defaultdict(list)
        taken: set[str] = set()
        for delivery in batch:
            msg, durable = delivery
            if await self._passed_on(delivery):
                continue
            try:
                run_id, sender, decoded = self._read(msg, durable)
            except BusError as exc:
                await self._refuse(delivery, exc)
                continue
            except Exception as exc:
                await self._failed(delivery, exc)
                continue
            if isinstance(decoded, ToolCallRecord | MemoryWrite):
                await self._record_agent(delivery, decoded, sender)
                continue
            try:
                if self.unstored is not None and blobs.may_hold_refs(msg.data):
                    decoded = await blobs_checked(decoded, self.unstored)
                by_run[run_id].append(self._member(delivery, decoded, sender, taken))
            except Exception as exc:
                await self._failed(delivery, exc)
        for run_id, members in by_run.items():
            if not await self._decide(run_id, members) and len(members) > 1:
                for member in members:  # one of them fails the decision: find which
                    await self._decide(run_id, [member])

    async def _passed_on(self, delivery: Delivery) -> bool:
        """Whether the message is for a run another orchestrator serves: then a fast copy
        is left to it (it answers), a durable one handed back for it to take."""
        if self.elsewhere is None:  # one orchestrator: every run is its own
            return False
        msg, durable = delivery
        try:
            run_id, _ = (subjects.inbox_sender if durable else subjects.report_sender)(msg.subject)
        except BusError:
            return False  # refused below, by each of them
        if self.elsewhere(run_id):
            if durable:
                await _settle(msg.nak(PASS_S), msg.subject)
            return True
        if run_id in self._runs or self.unserved is None or not await self.unserved(run_id):
            return False
        if durable:  # kept for when its run is served here
            await _settle(msg.nak(_RETRY_S), msg.subject)
        return True

    def _read(self, msg: Incoming, durable: bool) -> tuple[str, str, InboxMessage]:
        """(run, sender, message) of a delivery, or the `BusError` it is refused for."""
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
        return run_id, sender, decoded

    def _member(
        self, delivery: Delivery, decoded: TaskResult | TaskFailure | ReportBatch, sender: str,
        taken: set[str],
    ) -> _Member:  # fmt: skip
        """The commands of the reports in one message not yet recorded (nor `taken` by an
        earlier message of the batch)."""
        msg = delivery.incoming
        reports = decoded.reports if isinstance(decoded, ReportBatch) else [decoded]
        traces = decoded.traceparents if isinstance(decoded, ReportBatch) else []
        member = _Member(delivery, [], [], [])
        for n, report in enumerate(reports):
            trace = tracecontext.parse(traces[n] if n < len(traces) else "") or msg.trace
            trace_id, span_id = (trace.trace_id, trace.span_id) if trace else ("", "")
            rid = report_id(report, sender)
            if rid in taken or rid in self.recorded:
                member.reports.append((rid, "copy" if rid in taken else "recorded"))
                continue
            member.reports.append((rid, "new"))
            taken.add(rid)
            command: Command
            if isinstance(report, TaskResult):
                refs = self._memory.shared_by(report) if report.handoff_to else ()
                command, kind = ReportResult(report, sender, refs), "result"
            else:
                command, kind = ReportFailure(report, sender), "failure"
            cause = Cause(f"{report.task_id}:{report.attempt}:{kind}", sender, trace_id, span_id)
            member.items.append((command, cause))
            member.ids.append(rid)
        return member

    async def _decide(self, run_id: str, members: list[_Member]) -> bool:
        """Decide the members' commands at once, and answer them once durable; False if
        deciding raised (a lone member's message is then failed, see `_failed`)."""
        await self._window.acquire()  # bounds the batches decided but not yet durable
        try:
            await self._pipeline.unblocked(run_id)  # returns at once unless reloading
            items = [item for member in members for item in member.items]
            verdicts: list[ReportVerdict] = []
            decision = self._pipeline.decide(run_id, items, verdicts)
        except Exception as exc:
            self._window.release()
            log.error("deciding %d message(s) of run %s failed: %r", len(members), run_id, exc)
            if len(members) == 1:
                await self._failed(members[0].delivery, exc)
            return False
        ids = [rid for member in members for rid in member.ids]
        self._spawn(self._conclude(run_id, decision, ids, verdicts, members))
        return True

    async def _conclude(
        self,
        run_id: str,
        decision: Decision | None,
        ids: list[str],
        verdicts: list[ReportVerdict],
        members: list[_Member],
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
        except Exception:
            log.exception("concluding %d report(s) of run %s failed", len(ids), run_id)
            recorded = False
        finally:
            self._window.release()
        decided = dict(zip(ids, verdicts, strict=False))  # none if the run was forgotten
        if recorded:
            self.recorded.update(run_id, ids, [decided.get(rid) for rid in ids])
        for member in members:  # each is one quick publish: no task per answer
            fast = recorded and not member.delivery.durable
            ack = _ack(member.reports, decided, self.recorded) if fast else _RECORDED
            await _answer(member.delivery, recorded, ack)

    def forget(self, run_id: str) -> None:
        """The run ended and is no longer served: drop what was kept to answer its reports."""
        self.recorded.forget(run_id)

    async def _record_agent(
        self, delivery: Delivery, record: ToolCallRecord | MemoryWrite, sender: str
    ) -> None:
        """An agent's tool record or memory write: acked once durable (redelivered soon
        if its append failed), termed if forged or outside its contract (and audited as
        a rejected message)."""
        msg = delivery.incoming
        trace_id = msg.trace.trace_id if msg.trace else ""
        try:
            if isinstance(record, MemoryWrite):
                durable = await self._memory.write(record, sender, trace_id)
            else:
                durable = await self._agentlog.record(record, sender, trace_id)
        except MalformedMessage as exc:
            await self._refuse(delivery, exc)
            return
        except Exception as exc:
            await self._failed(delivery, exc)
            return
        await _settle(msg.ack() if durable else msg.nak(_RETRY_S), msg.subject)

    async def _refuse(self, delivery: Delivery, exc: BusError) -> None:
        """A message that is not allowed: audited, and terminated (durable) or answered
        with the error (fast), never retried."""
        msg, durable = delivery
        await self._system.reject(msg.subject, str(exc), len(msg.data))
        if durable:
            await _settle(msg.term(), msg.subject)
        else:
            await _settle(msg.reply(encode(ErrorReply(type(exc).__name__, str(exc)))), msg.subject)

    async def _failed(self, delivery: Delivery, exc: Exception) -> None:
        """A message whose handling raised: a fast one is answered with the error (its
        agent sends it durably); a durable one is redelivered after a backoff, and on its
        `MAX_DELIVERIES`th failure recorded as a dead letter and terminated."""
        msg, durable = delivery
        reason = f"{type(exc).__name__}: {exc}"
        log.error("handling a message on %s failed: %s", msg.subject, reason, exc_info=exc)
        if not durable:
            await _settle(msg.reply(encode(ErrorReply("HandlingFailed", reason))), msg.subject)
        elif msg.deliveries >= MAX_DELIVERIES and await self._system.dead_letter(
            msg.subject, reason, msg.deliveries, msg.data
        ):
            await _settle(msg.term(), msg.subject)
        else:
            await _settle(msg.nak(failed_backoff_s(msg.deliveries)), msg.subject)
