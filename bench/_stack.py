"""What the dispatch benchmarks share: the real stack (embedded nats-server, the SQLite
log or a JetStream one, the orchestrator) with N agent processes of one role, and a run
timed to its end."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from bus.config import Config
from bus.server import EmbeddedNats
from orchestrator.core.workflow import AgentSpec, WorkflowSpec
from orchestrator.service.bootstrap import Stack, bootstrap
from orchestrator.service.launcher import AgentProcesses


@asynccontextmanager
async def agents_stack(
    directory: Path, role: str, handler: str, count: int, capacity: int, store: str = "sqlite"
) -> AsyncIterator[Stack]:
    """The stack with `count` agent processes; `store` "jetstream": the log in JetStream
    (one replica) on a nats-server of its own, which the orchestrator and agents use."""
    server: EmbeddedNats | None = None
    if store == "jetstream":
        server = EmbeddedNats(directory / "nats")
        url = await server.start()
        stack = await bootstrap(directory, url, config=Config(store="jetstream", nats=(url,)))
    else:
        stack = await bootstrap(directory)
    agents = AgentProcesses(directory / "logs")
    spec = AgentSpec(role=role, handler=handler, count=count, capacity=capacity)
    try:
        agents.start(spec, stack.nats_url, Path.cwd())
        await stack.orchestrator.wait_for_agents(AgentProcesses.roles([spec]), timeout=60)
        yield stack
    finally:
        agents.stop()
        await stack.close()
        if server is not None:
            server.stop()


async def timed_run(stack: Stack, workflow: WorkflowSpec) -> float:
    """Seconds from asking for the run to its completion (which it must reach)."""
    started = time.perf_counter()
    run_id = await stack.orchestrator.start_run(workflow, requested_by="bench")
    state = await stack.orchestrator.wait(run_id, timeout=600)
    took = time.perf_counter() - started
    if state.status != "completed":
        raise SystemExit(f"run {run_id} ended {state.status}: {state.reason}")
    return took
