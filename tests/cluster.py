"""A real Baton stack for integration tests: an embedded nats-server on a free port, a
SQLite event store in a temporary folder, the orchestrator, and agent OS processes."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import nats

from bus.codec import Decoder
from bus.contract_files import load_contracts
from bus.protocol import (
    HeldTask,
    MemoryWrite,
    ReportBatch,
    TaskFailure,
    TaskResult,
    ToolCallRecord,
)
from bus.subjects import INBOX_STREAM
from bus.telemetry import Telemetry
from orchestrator.core.state import RunState
from orchestrator.core.workflow import AgentSpec
from orchestrator.service.bootstrap import Stack, bootstrap
from orchestrator.service.launcher import AgentProcesses
from orchestrator.service.service import Orchestrator

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "research" / "workflow.toml"


class Cluster:
    """What a test drives: the stack and the agent processes it started."""

    def __init__(self, stack: Stack, agents: AgentProcesses, contracts: str = "") -> None:
        self.stack = stack
        self.agents = agents
        self.contracts = contracts

    @property
    def orchestrator(self) -> Orchestrator:
        return self.stack.orchestrator

    async def add_agents(
        self,
        specs: list[AgentSpec],
        base: Path = REPO,
        heartbeat_s: float = 0.2,
        *,
        contracts: str | None = None,
        wait: bool = True,
    ) -> list[str]:
        """Start agent processes (with the cluster's contracts file unless told another)
        and, if `wait`, until the orchestrator routes to them."""
        ids: list[str] = []
        file = self.contracts if contracts is None else contracts
        for spec in specs:
            ids += self.agents.start(
                spec,
                self.stack.nats_url,
                base,
                heartbeat_s=heartbeat_s,
                contracts=file,
                url_for_agent=self.stack.agent_url,
            )
        if wait:
            await self.orchestrator.wait_for_agents(AgentProcesses.roles(specs), timeout=30)
        return ids

    def kill(self, agent_id: str) -> None:
        """SIGKILL one agent process: no drain, no goodbye."""
        process = self.agents.processes[agent_id]
        os.kill(process.pid, signal.SIGKILL)
        process.wait()

    async def until_held(
        self, agent_id: str, run_id: str, task_id: str, attempt: int, timeout: float = 30.0
    ) -> None:
        """Wait until the agent's own heartbeat says it holds this attempt."""
        deadline = time.monotonic() + timeout
        held = HeldTask(run_id, task_id, attempt)
        while not any(
            hb.agent_id == agent_id and held in hb.held for hb in self.orchestrator.agents()
        ):
            if time.monotonic() > deadline:
                raise AssertionError(f"{agent_id} never reported holding {held}")
            await asyncio.sleep(0.02)

    async def until(
        self, run_id: str, check: Callable[[RunState], bool], timeout: float = 30.0
    ) -> RunState:
        """Wait until the run's live state satisfies `check` (bounded, no fixed sleeps)."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.orchestrator.run(run_id)
            if check(state):
                return state
            if time.monotonic() > deadline:
                raise AssertionError(f"run {run_id} never reached the expected state: {state}")
            await asyncio.sleep(0.02)


async def until_inbox_holds(url: str, run_id: str, count: int, timeout: float = 30.0) -> int:
    """Wait until the durable inbox holds at least `count` task outcomes of `run_id` (read
    by sequence, not consumed: they leave the work queue only once acknowledged), so a
    test that stops the orchestrator knows its agents' reports arrived while it was down."""
    outcome: Decoder[TaskResult | TaskFailure | ReportBatch | ToolCallRecord | MemoryWrite] = (
        Decoder(TaskResult | TaskFailure | ReportBatch | ToolCallRecord | MemoryWrite)
    )
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        deadline = time.monotonic() + timeout
        while True:
            held = 0
            state = (await js.stream_info(INBOX_STREAM)).state
            for seq in range(state.first_seq or 1, state.last_seq + 1):
                msg = await js.get_msg(INBOX_STREAM, seq)
                if (msg.subject or "").split(".")[2] == run_id and msg.data:
                    got = outcome.decode(msg.data)
                    held += len(got.reports) if isinstance(got, ReportBatch) else (
                        isinstance(got, TaskResult | TaskFailure)
                    )  # fmt: skip
            if held >= count:
                return held
            if time.monotonic() > deadline:
                raise AssertionError(f"the inbox held {held} outcomes of {run_id}, not {count}")
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


@asynccontextmanager
async def cluster(
    directory: Path,
    agent_ttl: float = 1.0,
    telemetry: Telemetry | None = None,
    contracts: str = "",
    tick_s: float = 0.05,
) -> AsyncIterator[Cluster]:
    """A running stack; with a `contracts` file the orchestrator governs by its roles."""
    known = load_contracts(contracts) if contracts else None
    stack = await bootstrap(
        directory, agent_ttl=agent_ttl, tick_s=tick_s, telemetry=telemetry, contracts=known
    )
    agents = AgentProcesses(directory / "logs")
    try:
        yield Cluster(stack, agents, contracts)
    finally:
        agents.stop()
        await stack.close()


def baton(*args: str) -> list[str]:
    """argv that runs the `baton` CLI of this checkout with this interpreter."""
    return [sys.executable, "-m", "orchestrator", *args]
