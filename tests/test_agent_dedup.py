"""An agent runs each attempt once however often it is sent: the orchestrator re-sends an
assignment whose answer it did not see, and every copy gets an answer, but only the first
runs the handler and only one outcome comes back. Driven on a real nats-server, with the
test standing in for the orchestrator."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from agents.runtime import AgentRuntime
from agents.sdk import TaskContext
from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming
from bus.protocol import (
    AssignAck,
    AssignAcks,
    AssignBatch,
    Assignment,
    InboxMessage,
    ReportAck,
    ReportBatch,
    TaskFailure,
    TaskResult,
)
from bus.server import EmbeddedNats

AGENT = "dedup-1"
_acks: Decoder[AssignAck | AssignAcks] = Decoder(AssignAck | AssignAcks)
_reports: Decoder[InboxMessage] = Decoder(InboxMessage)


def assignment(attempt: int) -> Assignment:
    return Assignment("run-1", "t", attempt, f"lease-{attempt}", "s", "worker", {}, 30.0)


def test_a_re_sent_assignment_runs_once_and_every_copy_is_answered(tmp_path: Path) -> None:
    ran: Counter[int] = Counter()
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(ctx: TaskContext) -> dict[str, int]:
        ran[ctx.attempt] += 1
        started.set()
        if ctx.attempt == 1:
            await release.wait()
        return {"attempt": ctx.attempt}

    async def scenario() -> tuple[list[AssignAck | AssignAcks], list[TaskResult | TaskFailure]]:
        server = EmbeddedNats(tmp_path)
        url = await server.start()
        agent_bus = await Bus.connect(url, name="agent")
        orchestrator = await Bus.connect(url, name="orchestrator")
        reports: list[TaskResult | TaskFailure] = []
        reported = asyncio.Event()
        beating = asyncio.Event()

        async def on_report(msg: Incoming) -> None:
            decoded = _reports.decode(msg.data)
            assert isinstance(decoded, TaskResult | TaskFailure | ReportBatch)
            reports.extend(decoded.reports if isinstance(decoded, ReportBatch) else [decoded])
            reported.set()
            await msg.reply(encode(ReportAck()))

        async def on_beat(msg: Incoming) -> None:
            beating.set()

        async def until_reports(n: int) -> None:
            async with asyncio.timeout(10):
                while len(reports) < n:
                    reported.clear()
                    await reported.wait()

        async def send(message: Assignment | AssignBatch) -> AssignAck | AssignAcks:
            reply = await orchestrator.request(subjects.assign(AGENT), encode(message), 5.0)
            return _acks.decode(reply)

        runtime = AgentRuntime(
            agent_bus, agent_id=AGENT, role="worker", handler=handler, heartbeat_s=0.2
        )
        try:
            await agent_bus.ensure_inbox()
            await orchestrator.subscribe(subjects.REPORT_ALL, on_report)
            await orchestrator.subscribe(subjects.heartbeat(AGENT), on_beat)
            await orchestrator.flush()
            serving = asyncio.create_task(runtime.run())
            async with asyncio.timeout(10):  # it subscribes before its first heartbeat
                await beating.wait()
            first = assignment(1)
            answers = [await send(first)]
            async with asyncio.timeout(10):
                await started.wait()
            answers.append(await send(first))  # re-sent while it runs
            answers.append(await send(AssignBatch([first])))  # again, in a batch
            release.set()
            await until_reports(1)
            answers.append(await send(first))  # and once more after its outcome went back
            # a later attempt runs after any copy of the first would have started
            answers.append(await send(assignment(2)))
            await until_reports(2)
            runtime.stop()
            async with asyncio.timeout(10):
                await serving
        finally:
            await agent_bus.close()
            await orchestrator.close()
            server.stop()
        return answers, reports

    answers, reports = asyncio.run(scenario())
    assert answers == [
        AssignAck(True),
        AssignAck(True, "already taken"),
        AssignAcks([AssignAck(True, "already taken")]),
        AssignAck(True, "already taken"),
        AssignAck(True),
    ]
    assert ran == Counter({1: 1, 2: 1}), "the handler ran once per attempt"
    assert sorted((r.attempt, r.lease_token) for r in reports) == [(1, "lease-1"), (2, "lease-2")]
    assert all(isinstance(r, TaskResult) and r.agent_id == AGENT for r in reports)
