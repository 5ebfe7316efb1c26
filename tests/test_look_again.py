"""The one orchestrator of a SQLite log carries on the open runs that a command appends
beside it: `baton fork` (or the console's Fork, or `baton import`) while `baton serve`
runs, when `baton resume` is refused because the log is served. It looks every
`recovery.LOOK_AGAIN_S` (10 s; 0.2 s here) and serves what it finds as a start would;
without the look the fork stays open, decided by nobody, until the serve restarts."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from orchestrator.cli import history
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal, recovery
from tests.cluster import cluster

WORKFLOW = WorkflowSpec(
    name="two-steps",
    steps=[
        StepSpec(id="a", role="worker", params={"seconds": 0.0}),
        StepSpec(id="b", role="worker", params={"seconds": 0.0}, needs=["a"]),
    ],
)


def test_a_fork_made_beside_the_serving_orchestrator_is_carried_on_by_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recovery, "LOOK_AGAIN_S", 0.2)

    async def scenario() -> tuple[str, str, list[str]]:
        async with cluster(tmp_path) as c:
            await c.add_agents([AgentSpec(role="worker", handler="agents.builtin:sleep")])
            origin = await c.orchestrator.start_run(WORKFLOW)
            async with asyncio.timeout(30):
                assert (await c.orchestrator.wait(origin)).status == "completed"
            stored = await c.stack.store.read_stream(journal.run_stream(origin))
            a_done = next(e for e in stored if e.type == "task.succeeded")
            fork = await history.fork(c.stack.store, origin, a_done.position, "f1", "test")
            before = fork.status
            deadline = time.monotonic() + 20
            while not (state := await journal.load_run(c.stack.store, "f1")).terminal:
                assert time.monotonic() < deadline, f"the fork was not carried on: {state}"
                await asyncio.sleep(0.1)
            ran = await c.stack.store.read_stream(journal.run_stream("f1"))
            return before, state.status, [e.type for e in ran]

    before, after, types = asyncio.run(scenario())
    assert (before, after) == ("running", "completed")
    assert types.count("task.succeeded") == 2, "a copied, b done by the serving orchestrator"
