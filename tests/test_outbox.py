"""How outcomes come back: answered straight away only once durable in the event store,
else kept by the durable inbox, in batches, until an orchestrator records them."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path

import pytest

from agents.outbox import Outbox, verdicts_of
from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming
from bus.protocol import (
    ErrorReply,
    InboxMessage,
    ReportAck,
    ReportBatch,
    ReportReply,
    ReportVerdict,
    TaskFailure,
    TaskResult,
)
from bus.server import EmbeddedNats
from orchestrator.core.events import MessageRejected, TaskSucceeded
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from tests.cluster import cluster

_inbox: Decoder[InboxMessage] = Decoder(InboxMessage)
_reply: Decoder[ReportReply] = Decoder(ReportReply)


def test_unanswered_outcomes_go_to_the_durable_inbox_batched_each_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        server = EmbeddedNats(tmp_path)
        bus = await Bus.connect(await server.start(), name="agent")
        try:
            await bus.ensure_inbox()
            outbox = Outbox(bus, "agent-1", timeout=1.0)  # nobody answers reports
            outcomes: list[TaskResult | TaskFailure] = [
                TaskResult("run-1", f"t[{i}]", 1, "lease", "agent-1", {"i": i}, 0.0)
                for i in range(30)
            ]
            outcomes.append(TaskFailure("run-1", "t[99]", 2, "lease", "agent-1", "boom"))
            await asyncio.gather(*(outbox.send(o) for o in outcomes))

            consumer = await bus.inbox_consumer("test-reader")
            messages = await consumer.fetch(100, timeout=2.0)
        finally:
            await bus.close()
            server.stop()
        reports: list[TaskResult | TaskFailure] = []
        for msg in messages:
            assert subjects.inbox_sender(msg.subject) == ("run-1", "agent-1")
            decoded = _inbox.decode(msg.data)
            assert isinstance(decoded, TaskResult | TaskFailure | ReportBatch)
            reports += decoded.reports if isinstance(decoded, ReportBatch) else [decoded]
        stored = Counter(encode(r) for r in reports)
        assert stored == Counter(encode(o) for o in outcomes), "every outcome stored exactly once"
        assert len(messages) < len(outcomes), "outcomes waiting together share one message"

    asyncio.run(scenario())


def test_a_report_is_acknowledged_only_once_its_events_are_durable(tmp_path: Path) -> None:
    slow = WorkflowSpec(
        name="slow", steps=[StepSpec(id="s", role="worker", params={"seconds": 3.0})]
    )
    workers = [AgentSpec(role="worker", handler="agents.builtin:sleep", count=1, capacity=1)]

    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            await c.add_agents(workers)
            run_id = await c.orchestrator.start_run(slow)
            state = await c.until(run_id, lambda s: s.tasks["s"].status == "running")
            task = state.tasks["s"]
            bus = await Bus.connect(c.stack.nats_url, name="impostor")
            try:
                garbage = await bus.request(subjects.report(run_id, task.agent_id), b"\x01", 5.0)
                assert isinstance(_reply.decode(garbage), ErrorReply)

                # the owner's report, sent as the owner would: answered once recorded
                result = TaskResult(
                    run_id, "s", task.attempt, task.lease_token, task.agent_id, {"by": "me"}, 0.1
                )
                subject = subjects.report(run_id, task.agent_id)
                answer = await bus.request(subject, encode(result), 5.0)
                assert _reply.decode(answer) == ReportAck(), "accepted, the plain ack"
                assert answer == encode(ReportAck()), "the same bytes as before verdicts"
                stored = await c.stack.store.read_stream(journal.run_stream(run_id))
                events = [journal.decode_run_event(s) for s in stored]
                assert any(isinstance(e, TaskSucceeded) and e.task_id == "s" for e in events)

                again = await bus.request(subject, encode(result), 5.0)  # the second copy
                dup = ReportAck(True, "duplicate", "duplicate: already recorded")
                assert _reply.decode(again) == dup
            finally:
                await bus.close()
            await c.orchestrator.wait(run_id, timeout=30)
            # the real agent's own report comes later; it lets go of the task once answered
            await c.until_held(task.agent_id, run_id, "s", task.attempt)
            for _ in range(500):
                beats = [h for h in c.orchestrator.agents() if h.agent_id == task.agent_id]
                if beats and not beats[0].held:
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the agent never got an answer to its own report")
            final = c.orchestrator.run(run_id)
            stored = await c.stack.store.read_stream(journal.run_stream(run_id))
            system = await c.stack.store.read_stream(journal.SYSTEM_STREAM)

        assert final.status == "completed"
        assert final.tasks["s"].output == {"by": "me"}
        events = [journal.decode_run_event(s) for s in stored]
        assert sum(isinstance(e, TaskSucceeded) for e in events) == 1
        assert final.rejected == 0, "a copy of a recorded report is not a refusal"
        rejected = [journal.decode_any(s) for s in system if s.type == "message.rejected"]
        assert len(rejected) == 1
        assert isinstance(rejected[0], MessageRejected)
        assert rejected[0].subject == subjects.report(run_id, task.agent_id)

    asyncio.run(scenario())


def test_an_outcome_goes_at_once_while_the_last_one_waits_for_its_answer(tmp_path: Path) -> None:
    """A chain's next result must not wait for the answer to the step before: the first
    report is answered only once the second has arrived, which it can do only if it was
    sent while the first was still waiting."""

    async def scenario() -> list[str]:
        server = EmbeddedNats(tmp_path)
        url = await server.start()
        agent = await Bus.connect(url, name="agent")
        orchestrator = await Bus.connect(url, name="orchestrator")
        arrived: list[str] = []
        second = asyncio.Event()

        async def answer(msg: Incoming) -> None:
            report = _inbox.decode(msg.data)
            assert isinstance(report, TaskResult)
            arrived.append(report.task_id)
            if report.task_id == "first":
                await second.wait()
            else:
                second.set()
            await msg.reply(encode(ReportAck()))

        try:
            await agent.ensure_inbox()
            await orchestrator.subscribe(subjects.REPORT_ALL, answer)
            await orchestrator.flush()
            outbox = Outbox(agent, "agent-1", timeout=3.0)
            first = asyncio.create_task(
                outbox.send(TaskResult("run-1", "first", 1, "l", "agent-1", {}, 0.0))
            )
            await asyncio.sleep(0.2)  # the first report is out, waiting for its answer
            assert not first.done()
            async with asyncio.timeout(2.0):  # well inside the report timeout
                await outbox.send(TaskResult("run-1", "second", 1, "l", "agent-1", {}, 0.0))
                await first
            consumer = await agent.inbox_consumer("test-reader")
            assert await consumer.fetch(10, timeout=0.5) == [], "both were answered directly"
        finally:
            await agent.close()
            await orchestrator.close()
            server.stop()
        return arrived

    assert asyncio.run(scenario()) == ["first", "second"]


def test_a_refused_report_is_logged_once_and_not_sent_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An orchestrator that refuses a report (here a stale attempt) answers so: the outbox
    returns the verdict, warns once with the reason, and sends nothing to the inbox."""
    refusal = ReportAck(False, "stale_attempt", "stale attempt 1; the current attempt is 2")

    async def scenario() -> tuple[ReportVerdict | None, int, list[object]]:
        server = EmbeddedNats(tmp_path)
        url = await server.start()
        agent = await Bus.connect(url, name="agent")
        orchestrator = await Bus.connect(url, name="orchestrator")
        asked = 0

        async def answer(msg: Incoming) -> None:
            nonlocal asked
            asked += 1
            await msg.reply(encode(refusal))

        try:
            await agent.ensure_inbox()
            await orchestrator.subscribe(subjects.REPORT_ALL, answer)
            await orchestrator.flush()
            outbox = Outbox(agent, "agent-1", timeout=2.0)
            verdict = await outbox.send(TaskResult("run-1", "t", 1, "l", "agent-1", {}, 0.0))
            consumer = await agent.inbox_consumer("test-reader")
            stored = await consumer.fetch(10, timeout=0.5)
        finally:
            await agent.close()
            await orchestrator.close()
            server.stop()
        return verdict, asked, list(stored)

    with caplog.at_level(logging.WARNING, logger="baton.agent.outbox"):
        verdict, asked, stored = asyncio.run(scenario())
    assert verdict == ReportVerdict(False, refusal.code, refusal.reason)
    assert (asked, stored) == (1, []), "asked once, never sent durably"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "result of attempt 1 of t refused (stale_attempt): stale attempt 1; the current "
        "attempt is 2; not sent again"
    ]


def test_a_batch_ack_gives_each_report_its_verdict() -> None:
    refused = ReportVerdict(False, "not_holder", "x does not hold attempt 1")
    batch = ReportAck(False, refused.code, refused.reason, [ReportVerdict(), refused])
    assert verdicts_of(batch, 2) == [ReportVerdict(), refused]
    assert verdicts_of(ReportAck(), 3) == [None, None, None], "an old batch ack says nothing"
    assert verdicts_of(ReportAck(False, "run_ended", "r"), 1) == [
        ReportVerdict(False, "run_ended", "r")
    ]
