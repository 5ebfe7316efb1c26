"""Capacity an agent gives back goes at once to a run waiting for it (`Offers`), not at
the next liveness tick: with the tick a minute away, a run queued behind another on a
one-slot agent gets its task as the first run's task ends, by the decision that says so."""

from __future__ import annotations

import asyncio
from pathlib import Path

from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from tests.cluster import cluster


def _one_step(name: str, seconds: float) -> WorkflowSpec:
    return WorkflowSpec(
        name=name, steps=[StepSpec(id="s", role="worker", params={"seconds": seconds})]
    )


def test_a_run_waiting_for_an_agent_gets_it_as_another_run_frees_it(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str, list[str]]:
        async with cluster(tmp_path, agent_ttl=120.0, tick_s=60.0) as c:
            worker = AgentSpec(role="worker", handler="agents.builtin:sleep", count=1, capacity=1)
            await c.add_agents([worker])
            first = await c.orchestrator.start_run(_one_step("first", 0.5))
            await c.until(first, lambda s: s.tasks["s"].status == "running")
            second = await c.orchestrator.start_run(_one_step("second", 0.0))
            queued = c.orchestrator.run(second).tasks["s"].status
            async with asyncio.timeout(20):  # the tick would come after 60 s
                done = await c.orchestrator.wait(second)
            stored = await c.stack.store.read_stream(journal.run_stream(second))
            causes = [e.causation_id for e in stored if e.type == "task.assigned"]
            return queued, done.status, causes

    queued, status, causes = asyncio.run(scenario())
    assert queued == "pending", "the one slot was the first run's"
    assert status == "completed"
    assert causes == ["capacity"]
