"""An assignment this orchestrator cannot send because its own connection is closed
(`ConnectionClosed`) is not the agent's failure: nothing is recorded against the attempt,
and whoever serves the run next sends it again from the log (`pending_effects`). A stale
owner cut off from the bus once recorded such a failure three times over and failed a
shared run's task so (tests/test_shared_runs.py). An agent that does not answer is still
recorded."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import pytest

from bus.connection import Bus
from bus.protocol import Assignment
from bus.server import EmbeddedNats
from bus.telemetry import Telemetry
from orchestrator.core.commands import Command, DeliveryFailed
from orchestrator.core.effects import SendAssignment
from orchestrator.core.state import RunState
from orchestrator.service.journal import Cause
from orchestrator.service.outbound import Outbound
from orchestrator.service.registry import Registry
from orchestrator.service.telemetry import OrchestratorTelemetry


async def _undeliverable(tmp_path: Path, *, close: bool) -> list[Command]:
    """What `Outbound` records of one assignment to an agent nobody serves."""
    server = EmbeddedNats(tmp_path / "nats")
    bus = await Bus.connect(await server.start(), name="orchestrator")
    recorded: list[Command] = []
    sends: list[asyncio.Future[Any]] = []

    async def undeliverable(run_id: str, failed: list[tuple[Command, Cause]]) -> None:
        recorded.extend(command for command, _ in failed)

    def spawn(coroutine: Coroutine[Any, Any, Any]) -> object:
        sends.append(asyncio.ensure_future(coroutine))
        return sends[-1]

    obs = OrchestratorTelemetry(Telemetry("t", enabled=False), Registry(1.0), {}, lambda: 0.0)
    outbound = Outbound(bus, obs, spawn=spawn, undeliverable=undeliverable, assign_timeout=0.5)
    assignment = Assignment("r1", "t", 1, "lease", "s", "worker", {}, 10.0)
    try:
        if close:
            await bus.close()
        outbound.perform(RunState("r1"), [SendAssignment("worker-1", assignment)])
        await asyncio.gather(*sends)
    finally:
        await bus.close()
        server.stop()
    return recorded


@pytest.mark.parametrize("close", [False, True], ids=["open", "closed"])
def test_only_a_send_on_a_live_connection_is_recorded_as_undeliverable(
    tmp_path: Path, close: bool
) -> None:
    recorded = asyncio.run(_undeliverable(tmp_path, close=close))
    if close:
        assert recorded == [], "the orchestrator's own closed connection blamed on the agent"
    else:
        assert len(recorded) == 1
        assert isinstance(recorded[0], DeliveryFailed)
        assert (recorded[0].task_id, recorded[0].attempt) == ("t", 1)
