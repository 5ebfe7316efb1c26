"""An attempt the orchestrator times out is cancelled at its agent, a real agent process
on a real nats-server, so the agent drops it from its load instead of keeping a dead
attempt (which would hold a slot the orchestrator believes free)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bus.protocol import HeldTask
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from tests.cluster import cluster

LINGERING = "tests.crash_handlers:lingering"
STEP = StepSpec(
    id="s", role="worker", timeout_s=1.0, max_attempts=1, params={"seconds": 60, "cleanup_s": 60}
)


def test_a_timed_out_attempt_is_cancelled_and_leaves_its_agent_s_load(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The handler lingers 60 s after its own timeout unless cancelled once more: only the
    orchestrator's cancel can end the attempt within the test's bound."""
    monkeypatch.setenv("BATON_LOG_LEVEL", "INFO")  # the agent logs the cancel
    monkeypatch.setenv("BATON_TEST_RECEIPTS", str(tmp_path))

    async def scenario() -> tuple[str, str, float]:
        async with cluster(tmp_path, agent_ttl=5.0) as c:
            workers = [AgentSpec(role="worker", handler=LINGERING, count=1, capacity=1)]
            [agent_id] = await c.add_agents(workers)
            run_id = await c.orchestrator.start_run(WorkflowSpec("linger", [STEP]))
            await c.until_held(agent_id, run_id, "s", 1)
            final = await c.orchestrator.wait(run_id, timeout=30)
            ended = time.monotonic()
            held = HeldTask(run_id, "s", 1)
            while any(held in hb.held for hb in c.orchestrator.agents()):
                assert time.monotonic() - ended < 10, "the agent still holds the dead attempt"
                await asyncio.sleep(0.05)
            dropped_after = time.monotonic() - ended
            error = final.tasks["s"].error
            assert final.status == "failed"
        return agent_id, error, dropped_after

    agent_id, error, dropped_after = asyncio.run(scenario())
    assert error.startswith("no result within 1.0s")
    assert dropped_after < 10
    log = (tmp_path / "logs" / f"{agent_id}.log").read_text()
    assert "attempt 1 of s cancelled" in log
    assert "refused" not in log, "a cancelled attempt reports nothing"
