"""`Orchestrator.wait` when the runs are shared (a JetStream log): a run that ends here is
seen at once, from this orchestrator's own record of its end, not at the next look at
the log (which another orchestrator's end still needs; it looked every 0.1 s, so every
`baton run` on JetStream ended up to 0.1 s late)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

import pytest

from agents import AgentRuntime, TaskContext
from bus.config import Config
from bus.connection import Bus
from bus.protocol import Payload
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.bootstrap import bootstrap

WORKFLOW = WorkflowSpec("one", [StepSpec("only", role="worker")])


async def work(task: TaskContext) -> Payload:
    return {"done": task.task_id}


def test_a_run_ended_here_is_seen_without_looking_at_the_log(
    tmp_path: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    looked: list[str] = []

    async def never(store: Any, run_id: str, served: Any, every_s: float = 0.1) -> NoReturn:
        looked.append(run_id)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    monkeypatch.setattr(journal, "until_ended", never)

    async def scenario() -> None:
        config = Config(store="jetstream", nats=(nats_url,))
        stack = await bootstrap(tmp_path / "state", nats_url, tick_s=0.05, config=config)
        bus = await Bus.connect(nats_url, name="worker-1")
        runtime = AgentRuntime(bus, agent_id="worker-1", role="worker", handler=work,
                               heartbeat_s=0.2)  # fmt: skip
        serving = asyncio.create_task(runtime.run())
        try:
            await stack.orchestrator.wait_for_agents(Counter(worker=1), timeout=30)
            run_id = await stack.orchestrator.start_run(WORKFLOW)
            done = await stack.orchestrator.wait(run_id, timeout=30)
            assert done.status == "completed"
            assert looked == [run_id], "the log was to be looked at too, for another's end"
        finally:
            runtime.stop()
            await asyncio.wait([serving], timeout=10)
            await bus.close()
            await stack.close()

    asyncio.run(scenario())
