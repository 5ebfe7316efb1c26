"""SIGKILL an agent while it holds a task: the run still completes, the task is done once,
by another agent, and the killed attempt's late result changes nothing."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable
from pathlib import Path

from bus import subjects
from bus.codec import encode
from bus.connection import Bus
from bus.protocol import TaskResult
from orchestrator.core.events import ResultRejected, TaskAttemptFailed, TaskSucceeded
from orchestrator.core.state import RunState
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from tests.cluster import cluster

WORKFLOW = WorkflowSpec(
    name="slow-pair",
    steps=[
        StepSpec(id="slow", role="worker", params={"seconds": 1.0}, timeout_s=30),
        StepSpec(id="after", role="worker", needs=["slow"], params={"seconds": 1.0}),
    ],
)
WORKERS = [AgentSpec(role="worker", handler="agents.builtin:sleep", count=2, capacity=1)]


def _running(task_id: str, attempt: int) -> Callable[[RunState], bool]:
    def check(state: RunState) -> bool:
        task = state.tasks.get(task_id)
        return task is not None and task.status == "running" and task.attempt == attempt

    return check


def test_killed_agent_task_is_retried_elsewhere_and_its_late_result_is_rejected(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path, agent_ttl=1.0) as c:
            await c.add_agents(WORKERS)
            run_id = await c.orchestrator.start_run(WORKFLOW)
            first = await c.until(run_id, _running("slow", 1))
            victim = first.tasks["slow"]
            await c.until_held(victim.agent_id, run_id, "slow", 1)
            c.kill(victim.agent_id)

            second = await c.until(run_id, _running("after", 1))
            assert second.tasks["slow"].attempt == 2
            assert second.tasks["slow"].agent_id != victim.agent_id

            late = TaskResult(
                run_id, "slow", 1, victim.lease_token, victim.agent_id, {"late": True}, 1.0
            )
            bus = await Bus.connect(c.stack.nats_url, name="late-sender")
            await bus.publish_durable(
                subjects.inbox(run_id, victim.agent_id), encode(late), msg_id="late-1"
            )
            await bus.close()
            rejected = await c.until(run_id, lambda s: s.rejected == 1)
            assert rejected.tasks["slow"] == second.tasks["slow"]

            final = await c.orchestrator.wait(run_id, timeout=30)
            stored = await c.stack.store.read_stream(journal.run_stream(run_id))

        assert final.status == "completed"
        events = [journal.decode_run_event(s) for s in stored]
        done = [e for e in events if isinstance(e, TaskSucceeded) and e.task_id == "slow"]
        assert len(done) == 1
        assert done[0].attempt == 2
        assert done[0].agent_id != victim.agent_id
        assert final.tasks["slow"].output == {"task": "slow", "slept_s": 1.0}
        lost = [e for e in events if isinstance(e, TaskAttemptFailed)]
        assert [(e.task_id, e.attempt, e.agent_id, e.reason) for e in lost] == [
            ("slow", 1, victim.agent_id, "agent_lost")
        ]
        refusals = [e for e in events if isinstance(e, ResultRejected)]
        assert len(refusals) == 1
        assert "stale attempt 1" in refusals[0].reason

    asyncio.run(scenario())


def test_agents_and_the_orchestrator_carry_on_after_a_nats_server_restart(
    tmp_path: Path,
) -> None:
    """SIGKILL the embedded nats-server between two runs: it comes back on the same port
    with its JetStream data, the agent process and the orchestrator reconnect by
    themselves, and the next run is served by the same agent."""

    async def scenario() -> tuple[str, str, str, str]:
        async with cluster(tmp_path / "state") as c:
            (agent,) = await c.add_agents([AgentSpec("worker", "agents.builtin:echo")])
            workflow = WorkflowSpec("w", [StepSpec("s", "worker", params={"n": 1})])
            first = await c.orchestrator.wait(await c.orchestrator.start_run(workflow), 30)
            server = c.stack.server
            assert server is not None
            assert server.pid is not None
            url = server.url  # c.stack.nats_url carries the orchestrator's login
            os.kill(server.pid, signal.SIGKILL)
            server.stop()
            assert await server.start() == url, "the same URL after the restart"
            second_id = await c.orchestrator.start_run(workflow)
            second = await c.orchestrator.wait(second_id, 60)
            assert agent in c.agents.processes
            assert c.agents.processes[agent].poll() is None, "the agent process lived on"
            return first.status, second.status, second.tasks["s"].agent_id, agent

    first, second, served_by, agent = asyncio.run(scenario())
    assert (first, second) == ("completed", "completed")
    assert served_by == agent
