"""Inbox message ids cannot be claimed by someone else (issue 12, finding 4), against a
real server: an agent that publishes first under the id a real result will use no longer
gets that result dropped as a duplicate. The id carries the sender and the lease token,
and a first publish the server calls a duplicate is sent again under a fresh id."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from agents.outbox import Outbox, message_id
from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming
from bus.errors import MessageIdTaken
from bus.protocol import AgentInbound, AssignAck, AssignAcks, AssignBatch, Assignment, Heartbeat
from bus.protocol import TaskResult as Result
from bus.server import EmbeddedNats
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from tests.cluster import cluster

ONE_STEP = WorkflowSpec(name="one-step", steps=[StepSpec(id="s", role="worker", timeout_s=60)])
_inbound: Decoder[AgentInbound] = Decoder(AgentInbound)


class HandAgent:
    """An agent driven by the test: it heartbeats, takes assignments and hands them over."""

    def __init__(self, bus: Bus, agent_id: str) -> None:
        self.bus = bus
        self.agent_id = agent_id
        self.assignments: asyncio.Queue[Assignment] = asyncio.Queue()

    async def on_assign(self, msg: Incoming) -> None:
        message = _inbound.decode(msg.data)
        if isinstance(message, AssignBatch):
            for a in message.assignments:
                self.assignments.put_nowait(a)
            await msg.reply(encode(AssignAcks([AssignAck(True)] * len(message.assignments))))
        elif isinstance(message, Assignment):
            self.assignments.put_nowait(message)
            await msg.reply(encode(AssignAck(True)))

    async def beat(self) -> None:
        while True:
            hb = Heartbeat(self.agent_id, "worker", ["worker"], 1, 0)
            await self.bus.publish(subjects.heartbeat(self.agent_id), encode(hb))
            await asyncio.sleep(0.1)


@pytest.mark.parametrize("claimed", ["old-rule", "exact"])
def test_a_result_id_taken_first_by_another_agent_does_not_drop_the_result(
    tmp_path: Path, claimed: str
) -> None:
    async def scenario() -> dict[str, object]:
        async with cluster(tmp_path) as c:
            bus = await Bus.connect(c.stack.nats_url, name="owner")
            owner = HandAgent(bus, "owner")
            await bus.subscribe(subjects.assign("owner"), owner.on_assign)
            beating = asyncio.create_task(owner.beat())
            attacker = await Bus.connect(c.stack.nats_url, name="attacker")
            try:
                run_id = await c.orchestrator.start_run(ONE_STEP)
                a = await asyncio.wait_for(owner.assignments.get(), 30)
                real = Result(
                    run_id, a.task_id, a.attempt, a.lease_token, "owner", {"real": 1}, 0.1
                )
                taken = (
                    f"{run_id}:{a.task_id}:{a.attempt}:result"  # the id main used
                    if claimed == "old-rule"
                    else message_id(real)  # as if the attacker had learned the lease
                )
                await attacker.publish_durable(
                    subjects.inbox(run_id, "attacker"), b"\xc1", msg_id=taken
                )
                # the owner returns its result durably (as after a lost direct answer)
                await Outbox(bus, "owner").send(real, durable=True)
                final = await c.orchestrator.wait(run_id, timeout=30)
            finally:
                beating.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await beating
                await attacker.close()
                await bus.close()
        assert final.status == "completed"
        return dict(final.result or {})

    assert asyncio.run(scenario()) == {"s": {"real": 1}}


def test_a_first_publish_answered_as_a_duplicate_is_an_error_not_a_success(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        server = EmbeddedNats(tmp_path)
        bus = await Bus.connect(await server.start(), name="publisher")
        try:
            await bus.ensure_inbox()
            inbox = subjects.inbox("run-1", "agent-1")
            await bus.publish_durable(inbox, b"first", msg_id="the-id")
            with pytest.raises(MessageIdTaken) as caught:
                await bus.publish_durable(inbox, b"second", msg_id="the-id")
            assert caught.value.msg_id == "the-id"
        finally:
            await bus.close()
            server.stop()

    asyncio.run(scenario())


def test_a_result_id_names_the_attempt_its_sender_and_its_lease() -> None:
    result = Result("run-1", "t", 2, "lease-secret", "agent-7", {}, 0.1)
    assert message_id(result) == "run-1:t:2:result:agent-7:lease-secret"
