"""An agent's record in the durable inbox (a memory write, a tool call) whose append
fails is handed back for redelivery at once, not held: a held message is kept alive
(`bus.inbox`) for up to two minutes, so a write refused by a full disk would wait that
long after the disk had room again. Real bus, real store (refusing appends to the memory
stream while `full`), real agent processes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from bus import subjects
from bus.codec import encode
from bus.protocol import MemoryWrite
from eventstore import NewEvent, SqliteEventStore, StorageError, StoredEvent
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service import memory
from orchestrator.service.launcher import AgentProcesses
from tests.cluster import REPO
from tests.test_health import WORKERS, stack


class MemoryFull(SqliteEventStore):
    """The real store; while `full`, every append to the memory stream is refused."""

    full: ClassVar[bool] = False
    refused: ClassVar[int] = 0

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> list[StoredEvent]:
        if MemoryFull.full and stream == memory.STREAM:
            MemoryFull.refused += 1
            raise StorageError("append failed: database or disk is full")
        return await super().append(stream, events, expected_version)


def test_a_memory_write_whose_append_failed_is_recorded_soon_after_the_store_works(
    tmp_path: Path,
) -> None:
    workflow = WorkflowSpec(
        name="slow", steps=[StepSpec(id="t", role="worker", params={"seconds": 20})]
    )

    async def scenario() -> float:
        async with stack(tmp_path, MemoryFull) as s:
            agents = AgentProcesses(tmp_path / "logs")
            try:
                agents.start(WORKERS, s.url, REPO, heartbeat_s=0.2)
                await s.orchestrator.wait_for_agents(AgentProcesses.roles([WORKERS]), 30)
                run_id = await s.orchestrator.start_run(workflow)
                async with asyncio.timeout(30):
                    while (task := s.orchestrator.run(run_id).tasks["t"]).status != "running":
                        await asyncio.sleep(0.05)
                write = MemoryWrite(
                    "w1", run_id, "t", task.attempt, task.agent_id, "worker", "run", "k", "noted"
                )
                MemoryFull.full = True
                await s.bus.publish_durable(
                    subjects.inbox(run_id, task.agent_id), encode(write), msg_id="w1"
                )
                async with asyncio.timeout(30):
                    while MemoryFull.refused < 2:  # refused, handed back, refused again
                        await asyncio.sleep(0.05)
                MemoryFull.full = False
                began = time.monotonic()
                async with asyncio.timeout(60):
                    while not await s.store.read_stream(memory.STREAM):
                        await asyncio.sleep(0.05)
                return time.monotonic() - began
            finally:
                agents.stop()
                MemoryFull.full = False

    waited = asyncio.run(scenario())
    assert waited < 10, f"recorded {waited:.1f}s after the store worked again"
