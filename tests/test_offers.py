"""Capacity an agent gives back goes at once to a run waiting for it (`Offers`), not at
the next liveness tick: with the tick a minute away, a run queued behind another on a
one-slot agent gets its task as the first run's task ends, by the decision that says so."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from tests.cluster import cluster


def _one_step(name: str, seconds: float, role: str = "worker") -> WorkflowSpec:
    return WorkflowSpec(name=name, steps=[StepSpec(id="s", role=role, params={"seconds": seconds})])


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


def _chain(name: str, role: str, steps: int) -> WorkflowSpec:
    return WorkflowSpec(
        name=name,
        steps=[
            StepSpec(
                id=f"s{i}", role=role, params={"seconds": 0.1}, needs=[f"s{i - 1}"] if i else []
            )
            for i in range(steps)
        ],
    )


def test_room_of_one_role_is_not_offered_to_a_run_waiting_for_another(tmp_path: Path) -> None:
    """A run waiting for a busy alpha agent is not decided for each time a beta agent
    frees room (nothing could come of it), and gets alpha's room once it is freed."""

    async def scenario() -> tuple[list[str], str, list[str]]:
        async with cluster(tmp_path, agent_ttl=120.0, tick_s=60.0) as c:
            await c.add_agents(
                [
                    AgentSpec(role="alpha", handler="agents.builtin:sleep", count=1, capacity=1),
                    AgentSpec(role="beta", handler="agents.builtin:sleep", count=1, capacity=1),
                ]
            )
            pipeline = c.orchestrator._pipeline
            offered: list[str] = []
            decide = pipeline.decide

            def counted(run_id: str, items: Any, *args: Any, **kwargs: Any) -> Any:
                if items and items[0][1].causation_id == "capacity":
                    offered.append(run_id)
                return decide(run_id, items, *args, **kwargs)

            pipeline.decide = counted  # type: ignore[method-assign]
            holder = await c.orchestrator.start_run(_one_step("holder", 3.0, "alpha"))
            await c.until(holder, lambda s: s.tasks["s"].status == "running")
            waiting = await c.orchestrator.start_run(_one_step("waiting", 0.0, "alpha"))
            chain = await c.orchestrator.start_run(_chain("chain", "beta", 4))
            async with asyncio.timeout(20):
                assert (await c.orchestrator.wait(chain)).status == "completed"
            offered_meanwhile = list(offered)
            async with asyncio.timeout(20):  # the tick would come after 60 s
                done = await c.orchestrator.wait(waiting)
            stored = await c.stack.store.read_stream(journal.run_stream(waiting))
            causes = [e.causation_id for e in stored if e.type == "task.assigned"]
            return offered_meanwhile, done.status, causes

    offered, status, causes = asyncio.run(scenario())
    assert offered == [], "beta's room was offered to a run waiting for alpha"
    assert status == "completed"
    assert causes == ["capacity"]
