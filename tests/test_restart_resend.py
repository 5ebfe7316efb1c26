"""An orchestrator that starts re-sends each running attempt, from the log, to the agent
holding it. An agent it has not heard yet (reconnecting, or restarted) costs that
attempt nothing: the re-send that finds no one waits, and the attempt is sent again when
the agent's heartbeat comes, so an agent that never got it (its old process died with
the assignment unread) takes it then, as the same attempt. Real bus, store and agent
processes; two orchestrators, one after the other, on one state directory."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from tests.cluster import cluster

WORKER = AgentSpec(role="worker", handler="agents.builtin:sleep", count=1, capacity=2)
ONE_STEP = WorkflowSpec(
    name="one-step", steps=[StepSpec(id="t", role="worker", timeout_s=60, params={"seconds": 1})]
)
TTL_S = 20.0
"""Long enough that no agent is lost while the orchestrators change: only the join may
send the attempt again."""


def test_an_agent_that_joins_after_a_restart_is_sent_the_attempt_it_never_got(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[str, list[str], float]:
        async with cluster(tmp_path, agent_ttl=TTL_S) as first:
            [agent_id] = await first.add_agents([WORKER])
            run_id = await first.orchestrator.start_run(ONE_STEP)
            await first.until_held(agent_id, run_id, "t", 1)
            first.kill(agent_id)  # its attempt dies with it, unreported
        async with cluster(tmp_path, agent_ttl=TTL_S) as second:
            await asyncio.sleep(1.0)  # the re-send from the log has found no one by now
            command = [
                sys.executable, "-m", "agents", "--role", "worker", "--id", agent_id,
                "--handler", "agents.builtin:sleep", "--heartbeat", "0.2",
            ]  # fmt: skip
            env = {**os.environ, "BATON_NATS_URL": second.stack.agent_url(agent_id, "worker")}
            with (tmp_path / "again.log").open("wb") as log:  # the child keeps its copy
                second.agents.processes[agent_id] = subprocess.Popen(
                    command, stdout=log, stderr=subprocess.STDOUT, env=env
                )
            began = time.monotonic()
            state = await second.orchestrator.wait(run_id, timeout=TTL_S)
            took = time.monotonic() - began
            stored = await second.stack.store.read_stream(journal.run_stream(run_id))
        return (
            state.tasks["t"].status + f"#{state.tasks['t'].attempt}",
            [s.type for s in stored],
            took,
        )

    status, types, took = asyncio.run(scenario())
    assert status == "succeeded#1", f"the same attempt, taken by the agent's new process: {types}"
    assert "task.attempt_failed" not in types
    assert took < TTL_S
