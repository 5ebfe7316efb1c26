"""One decision's assignments for one agent travel in one message, and each one the agent
does not take is recorded as undeliverable and retried, while the others run on."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from bus import subjects
from bus.codec import MAX_MESSAGE_BYTES, Decoder, encode
from bus.connection import Bus, Incoming
from bus.protocol import (
    AgentInbound,
    AssignAck,
    AssignAcks,
    AssignBatch,
    Assignment,
    Heartbeat,
    Progress,
    ProgressBatch,
    ReportAck,
    ReportReply,
    TaskResult,
)
from orchestrator.core.events import TaskAttemptFailed, TaskSucceeded
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.outbound import _chunks
from tests.cluster import cluster

AGENT = "picky-1"
_inbound: Decoder[AgentInbound] = Decoder(AgentInbound)
_reply: Decoder[ReportReply] = Decoder(ReportReply)


class PickyAgent:
    """A hand-driven agent: takes only the first assignment of each message."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.messages: list[AgentInbound] = []
        self.taken: list[Assignment] = []

    async def on_assign(self, msg: Incoming) -> None:
        message = _inbound.decode(msg.data)
        self.messages.append(message)
        if isinstance(message, AssignBatch):
            self.taken.append(message.assignments[0])
            rest = [AssignAck(False, "too busy")] * (len(message.assignments) - 1)
            await msg.reply(encode(AssignAcks([AssignAck(True), *rest])))
        elif isinstance(message, Assignment):
            self.taken.append(message)
            await msg.reply(encode(AssignAck(True)))

    async def beat(self) -> None:
        while True:
            held = len(self.taken)
            hb = Heartbeat(AGENT, "worker", ["worker"], capacity=3, load=held)
            await self.bus.publish(subjects.heartbeat(AGENT), encode(hb))
            await asyncio.sleep(0.1)

    async def report(self, a: Assignment) -> None:
        result = TaskResult(a.run_id, a.task_id, a.attempt, a.lease_token, AGENT, {"ok": 1}, 0.0)
        reply = await self.bus.request(subjects.report(a.run_id, AGENT), encode(result), 5.0)
        assert isinstance(_reply.decode(reply), ReportAck)


def test_refused_members_of_a_batch_are_retried_and_the_taken_one_runs(tmp_path: Path) -> None:
    workflow = WorkflowSpec(
        name="three", steps=[StepSpec(id="t", role="worker", fan_out=3, max_attempts=3)]
    )

    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            bus = await Bus.connect(c.stack.nats_url, name=AGENT)
            agent = PickyAgent(bus)
            await bus.subscribe(subjects.assign(AGENT), agent.on_assign)
            beat = asyncio.create_task(agent.beat())
            try:
                await c.orchestrator.wait_for_agents(Counter({"worker": 1}), timeout=10)
                run_id = await c.orchestrator.start_run(workflow)
                reported = 0
                deadline = asyncio.get_running_loop().time() + 30
                while c.orchestrator.run(run_id).status == "running":
                    if asyncio.get_running_loop().time() > deadline:
                        state = c.orchestrator.run(run_id)
                        raise AssertionError(
                            f"the run never ended: {state.tasks}, {agent.messages}"
                        )
                    while reported < len(agent.taken):  # more may come in while it reports
                        await agent.report(agent.taken[reported])
                        reported += 1
                    await asyncio.sleep(0.02)
                final = await c.orchestrator.wait(run_id, timeout=10)
                stored = await c.stack.store.read_stream(journal.run_stream(run_id))
            finally:
                beat.cancel()
                await bus.close()

        assert final.status == "completed"
        first = agent.messages[0]
        assert isinstance(first, AssignBatch)
        assert [a.task_id for a in first.assignments] == ["t[0]", "t[1]", "t[2]"]
        events = [journal.decode_run_event(s) for s in stored]
        refused = [
            (e.task_id, e.attempt, e.reason, e.error)
            for e in events
            if isinstance(e, TaskAttemptFailed)
        ]
        assert refused[:2] == [
            ("t[1]", 1, "undeliverable", "too busy"),
            ("t[2]", 1, "undeliverable", "too busy"),
        ]
        done = Counter(e.task_id for e in events if isinstance(e, TaskSucceeded))
        assert done == Counter({"t[0]": 1, "t[1]": 1, "t[2]": 1})
        first_done = [e for e in events if isinstance(e, TaskSucceeded) and e.task_id == "t[0]"]
        assert first_done[0].attempt == 1, "the member it took ran on, not retried"

    asyncio.run(scenario())


def test_a_big_decision_is_cut_into_messages_under_the_size_limit() -> None:
    lines = [Progress("run", "task.failed", f"t[{i}]", detail="x" * 2000) for i in range(600)]
    parts = _chunks(lines, ProgressBatch)
    assert len(parts) > 1, "1.2 MB of progress does not go as one message"
    assert [line for part in parts for line in part] == lines, "nothing lost, order kept"
    assert all(len(encode(ProgressBatch(part))) <= MAX_MESSAGE_BYTES // 2 for part in parts)
    assert _chunks(lines[:3], ProgressBatch) == [lines[:3]], "a small one stays whole"
