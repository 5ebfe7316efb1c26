"""A lease token is not an identity: an agent that learned another's token (from a log, a
trace, a shared tool) still cannot report that agent's attempt. The sender is the agent
named by the subject it sent on, and it must be the attempt's holder, so a report on its
own subject is refused and audited, and the holder's real report is still taken.

Both agents are driven by hand on a real stack (nats-server, orchestrator, SQLite store),
so the forged reports go in while the attempt is certainly still running."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming
from bus.protocol import (
    AgentInbound,
    AssignAck,
    Assignment,
    Heartbeat,
    ReportAck,
    ReportBatch,
    ReportReply,
    ReportVerdict,
    TaskFailure,
    TaskResult,
)
from orchestrator.core.events import ResultRejected, TaskSucceeded
from orchestrator.core.report_check import ACCEPTED, DUPLICATE_VERDICT
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.intake import Recorded
from orchestrator.service.reports import Seen, _ack
from tests.cluster import cluster

HOLDER, THIEF = "holder-1", "thief-1"
WORKFLOW = WorkflowSpec(name="one", steps=[StepSpec(id="s", role="worker")])
_inbound: Decoder[AgentInbound] = Decoder(AgentInbound)
_reply: Decoder[ReportReply] = Decoder(ReportReply)


class HandAgent:
    """An agent the test drives: it beats, takes what it is assigned and reports when told."""

    def __init__(self, bus: Bus, agent_id: str, role: str) -> None:
        self.bus, self.agent_id, self.role = bus, agent_id, role
        self.taken: list[Assignment] = []
        self.assigned = asyncio.Event()

    async def on_assign(self, msg: Incoming) -> None:
        message = _inbound.decode(msg.data)
        assert isinstance(message, Assignment)
        self.taken.append(message)
        self.assigned.set()
        await msg.reply(encode(AssignAck(True)))

    async def beat(self) -> None:
        while True:
            hb = Heartbeat(self.agent_id, self.role, [self.role], capacity=1, load=len(self.taken))
            await self.bus.publish(subjects.heartbeat(self.agent_id), encode(hb))
            await asyncio.sleep(0.1)

    async def report(self, result: TaskResult) -> ReportReply:
        subject = subjects.report(result.run_id, self.agent_id)
        return _reply.decode(await self.bus.request(subject, encode(result), 5.0))


def test_a_report_with_a_learned_lease_token_is_refused_and_the_holder_s_is_taken(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            holder_bus = await Bus.connect(c.stack.nats_url, name=HOLDER)
            thief_bus = await Bus.connect(c.stack.nats_url, name=THIEF)
            holder = HandAgent(holder_bus, HOLDER, "worker")
            thief = HandAgent(thief_bus, THIEF, "critic")  # never assigned the worker step
            await holder_bus.subscribe(subjects.assign(HOLDER), holder.on_assign)
            await thief_bus.subscribe(subjects.assign(THIEF), thief.on_assign)
            beats = [asyncio.create_task(a.beat()) for a in (holder, thief)]
            try:
                await c.orchestrator.wait_for_agents(
                    Counter({"worker": 1, "critic": 1}), timeout=10
                )
                run_id = await c.orchestrator.start_run(WORKFLOW)
                async with asyncio.timeout(10):
                    await holder.assigned.wait()
                [a] = holder.taken
                stolen = a.lease_token

                # the holder's own claim, on the thief's subject
                as_holder = TaskResult(run_id, "s", a.attempt, stolen, HOLDER, {"by": "thief"}, 0)
                forged_reply = await thief.report(as_holder)
                # a failure in its own name, on the durable inbox (a second result from the
                # same subject, attempt and lease would be taken for a copy of the first)
                as_self = TaskFailure(run_id, "s", a.attempt, stolen, THIEF, "no", retryable=False)
                await thief_bus.publish_durable(
                    subjects.inbox(run_id, THIEF), encode(as_self), msg_id="forged-2"
                )
                refused = await c.until(run_id, lambda s: s.rejected == 2 or s.status != "running")

                real = TaskResult(run_id, "s", a.attempt, stolen, HOLDER, {"by": "holder"}, 0)
                real_reply = await holder.report(real)
                final = await c.orchestrator.wait(run_id, timeout=10)
                stored = await c.stack.store.read_stream(journal.run_stream(run_id))
            finally:
                for beat in beats:
                    beat.cancel()
                await holder_bus.close()
                await thief_bus.close()

        assert isinstance(forged_reply, ReportAck), "its refusal is recorded, so it is answered"
        assert (forged_reply.accepted, forged_reply.code) == (False, "forged")
        assert forged_reply.reason == f"sent by {THIEF} but claims to be from {HOLDER}"
        task = refused.tasks["s"]
        assert (task.status, task.agent_id, task.attempt) == ("running", HOLDER, a.attempt)
        assert thief.taken == []
        assert isinstance(real_reply, ReportAck)
        assert (real_reply.accepted, real_reply.code, real_reply.reason) == (True, "", "")
        assert final.status == "completed"
        assert final.tasks["s"].output == {"by": "holder"}
        assert final.rejected == 2
        events = [journal.decode_run_event(s) for s in stored]
        audited = [
            (e.agent_id, e.sender, e.reason) for e in events if isinstance(e, ResultRejected)
        ]
        assert audited == [
            (HOLDER, THIEF, f"sent by {THIEF} but claims to be from {HOLDER}"),
            (THIEF, THIEF, f"{THIEF} does not hold attempt {a.attempt}"),
        ]
        done = [e for e in events if isinstance(e, TaskSucceeded)]
        assert [(e.task_id, e.agent_id) for e in done] == [("s", HOLDER)]

    asyncio.run(scenario())


def test_a_batch_is_answered_report_by_report_and_a_copy_is_a_duplicate(tmp_path: Path) -> None:
    """A `task.reports` batch gets one verdict per report, in order: a wrong lease is
    refused with its reason while the real result beside it is taken; the same batch sent
    again is answered from the log (the refusal again, the result a duplicate), and a lone
    copy of the result is a duplicate that is still accepted."""

    async def scenario() -> tuple[ReportReply, ReportReply, ReportReply, int]:
        async with cluster(tmp_path) as c:
            bus = await Bus.connect(c.stack.nats_url, name=HOLDER)
            holder = HandAgent(bus, HOLDER, "worker")
            await bus.subscribe(subjects.assign(HOLDER), holder.on_assign)
            beat = asyncio.create_task(holder.beat())
            try:
                await c.orchestrator.wait_for_agents(Counter({"worker": 1}), timeout=10)
                run_id = await c.orchestrator.start_run(WORKFLOW)
                async with asyncio.timeout(10):
                    await holder.assigned.wait()
                [a] = holder.taken
                wrong = TaskResult(run_id, "s", a.attempt, "not-the-lease", HOLDER, {}, 0)
                real = TaskResult(run_id, "s", a.attempt, a.lease_token, HOLDER, {"ok": 1}, 0)
                batch = encode(ReportBatch([wrong, real]))
                subject = subjects.report(run_id, HOLDER)
                first = _reply.decode(await bus.request(subject, batch, 5.0))
                again = _reply.decode(await bus.request(subject, batch, 5.0))
                lone = await holder.report(real)
                final = await c.orchestrator.wait(run_id, timeout=10)
            finally:
                beat.cancel()
                await bus.close()
        assert final.status == "completed"
        return first, again, lone, final.rejected

    first, again, lone, rejected = asyncio.run(scenario())
    refused = ReportVerdict(False, "lease_mismatch", "lease token does not match the attempt's")
    assert first == ReportAck(False, refused.code, refused.reason, [refused, ReportVerdict()])
    duplicate = ReportVerdict(True, "duplicate", "duplicate: already recorded")
    assert again == ReportAck(False, refused.code, refused.reason, [refused, duplicate])
    assert lone == ReportAck(True, "duplicate", "duplicate: already recorded")
    assert rejected == 1, "a copy of a refused report is answered from the log, not re-audited"


def test_each_copy_of_a_report_is_answered_by_what_was_made_of_the_first() -> None:
    """The answer table of `Reports`: a report decided now gets its verdict; a copy of it
    in the same batch, or of one recorded before, is a duplicate if it was accepted and
    refused again if it was refused; where nothing is known, a plain acceptance."""
    refused = ReportVerdict(False, "lease_mismatch", "lease token does not match")
    recorded = Recorded()
    recorded.update("r", ["old-ok", "old-refused", "old-unknown"], [ACCEPTED, refused, None])
    decided = {"ok": ACCEPTED, "bad": refused}
    seen: list[tuple[str, Seen]] = [
        ("ok", "new"), ("ok", "copy"), ("bad", "new"), ("bad", "copy"),
        ("old-ok", "recorded"), ("old-refused", "recorded"), ("old-unknown", "recorded"),
        ("gone", "new"), ("gone", "copy"),
    ]  # fmt: skip
    answer = _reply.decode(_ack(seen, decided, recorded))
    assert isinstance(answer, ReportAck)
    dup = DUPLICATE_VERDICT
    assert answer.verdicts == [
        ACCEPTED, dup, refused, refused, dup, refused, dup, ACCEPTED, ACCEPTED
    ]  # fmt: skip
    assert (answer.accepted, answer.code) == (False, "lease_mismatch")
    assert _ack([("ok", "new")], decided, recorded) == encode(ReportAck())
    assert _reply.decode(_ack([("ok", "copy")], decided, recorded)) == ReportAck(
        True, dup.code, dup.reason
    )
