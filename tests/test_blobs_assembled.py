"""An assignment whose input is assembled from many medium values (each under the blob
threshold, together far over the message limit) still reaches its agent: the orchestrator
sends that input by reference, and only the agent it is for may read it."""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from pathlib import Path

import pytest

from agents import AgentRuntime, TaskContext
from agents.blobs import AgentBlobs, BlobError
from bus import blobs
from bus.codec import MAX_MESSAGE_BYTES
from bus.connection import Bus
from bus.permissions import inbox_prefix
from bus.protocol import BLOB_THRESHOLD, BlobRef, Payload
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service.bootstrap import bootstrap

PIECES = 12
PIECE_CHARS = BLOB_THRESHOLD * 3 // 4  # each output under the threshold: travels inline
WORKFLOW = WorkflowSpec(
    "assembled",
    [
        StepSpec("piece", role="maker", fan_out=PIECES),
        StepSpec("gather", role="gatherer", needs=["piece"]),
    ],
)


def piece(index: int) -> str:
    return hashlib.sha256(str(index).encode()).hexdigest()[0] * PIECE_CHARS


async def make(task: TaskContext) -> Payload:
    return {"text": piece(task.input["index"])}


async def gather(task: TaskContext) -> Payload:
    texts = sorted(dep["text"] for dep in task.input["deps"].values())
    assert texts == sorted(piece(n) for n in range(PIECES))  # every piece, whole
    return {"chars": sum(map(len, texts))}


def test_an_input_over_the_message_limit_travels_by_reference(tmp_path: Path) -> None:
    assert PIECES * PIECE_CHARS > 2 * MAX_MESSAGE_BYTES

    async def scenario() -> None:
        stack = await bootstrap(tmp_path / "state", tick_s=0.05)
        buses: list[Bus] = []
        runtimes: list[AgentRuntime] = []
        try:
            for agent_id, role, handler in (("maker-1", "maker", make),
                                            ("gatherer-1", "gatherer", gather)):  # fmt: skip
                url = stack.agent_url(agent_id, role)
                bus = await Bus.connect(url, name=agent_id, inbox_prefix=inbox_prefix(agent_id))
                buses.append(bus)
                runtimes.append(AgentRuntime(bus, agent_id=agent_id, role=role,
                                             handler=handler, heartbeat_s=0.2))  # fmt: skip
            serving = [asyncio.create_task(r.run()) for r in runtimes]
            await stack.orchestrator.wait_for_agents(Counter(maker=1, gatherer=1), timeout=30)
            run_id = await stack.orchestrator.start_run(WORKFLOW)
            done = await stack.orchestrator.wait(run_id, timeout=60)
            assert done.status == "completed", [(t.status, t.error) for t in done.tasks.values()]
            assert done.result == {"gather": {"chars": PIECES * PIECE_CHARS}}
            assert done.tasks["gather"].attempt == 1  # delivered the first time
            # the outputs are inline in the log; the assembled input is one blob
            assert not [r for t in done.tasks.values() for r in blobs.refs_in(t.output)]
            stored = await stack.store.blobs.list()
            assert len(stored) == 1, stored
            assert stored[0].size > 2 * MAX_MESSAGE_BYTES
            # the gatherer read it; the maker, with work in the same run, may not
            ref = BlobRef(stored[0].digest, stored[0].size, stored[0].media_type)
            with pytest.raises(BlobError) as refused:
                await AgentBlobs(buses[0], "maker-1", run_id).get(ref)
            assert refused.value.code == "BlobRefused"
            for runtime in runtimes:
                runtime.stop()
            await asyncio.wait(serving, timeout=10)
        finally:
            for bus in buses:
                await bus.close()
            await stack.close()

    asyncio.run(scenario())
