"""Appends that fail mid-run (the real SQLite store, with chosen appends refused as a full
disk would refuse them) lose nothing and leak nothing: the run completes, each task once,
the live state is exactly what the log holds, and no agent ever got an attempt that is
not in the log. Decisions are pipelined, so a failed append also takes down the ones
decided on top of it; they must all be retried from what the store really holds."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pytest

from bus.connection import Bus
from bus.server import EmbeddedNats
from eventstore import NewEvent, SqliteEventStore, StorageError, StoredEvent
from orchestrator.core.events import TaskAssigned, TaskSucceeded
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.launcher import AgentProcesses
from orchestrator.service.service import Orchestrator
from tests.cluster import REPO

FAIL = {2, 3, 6, 7, 8}
"""Which appends to the run's stream are refused (1 is the run's start)."""


class FlakyStore(SqliteEventStore):
    """The real store; the appends to run streams numbered in `FAIL` are refused."""

    calls = 0
    refused = 0

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> list[StoredEvent]:
        if stream.startswith(journal.RUN_PREFIX):
            self.calls += 1
            if self.calls in FAIL:
                FlakyStore.refused += 1
                raise StorageError("injected: database or disk is full")
        return await super().append(stream, events, expected_version)


def test_failed_appends_mid_run_lose_nothing_and_leak_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receipts = tmp_path / "receipts"
    receipts.mkdir()
    monkeypatch.setenv("BATON_TEST_RECEIPTS", str(receipts))
    handler = f"{REPO / 'tests' / 'crash_handlers.py'}:noop"
    workers = AgentSpec(role="worker", handler=handler, count=2, capacity=8)
    workflow = WorkflowSpec(name="wide", steps=[StepSpec(id="t", role="worker", fan_out=40)])

    async def scenario() -> None:
        server = EmbeddedNats(tmp_path / "nats")
        url = await server.start()
        store = await FlakyStore.open(tmp_path / "events.db")
        bus = await Bus.connect(url, name="orchestrator")
        orchestrator = Orchestrator(bus, store, agent_ttl=1.0, tick_s=0.05)
        agents = AgentProcesses(tmp_path / "logs")
        try:
            await orchestrator.start()
            agents.start(workers, url, REPO, heartbeat_s=0.2)
            await orchestrator.wait_for_agents(AgentProcesses.roles([workers]), timeout=30)
            run_id = await orchestrator.start_run(workflow)
            final = await orchestrator.wait(run_id, timeout=60)
            stored = await store.read_stream(journal.run_stream(run_id))
            replayed = await journal.load_run(store, run_id)
        finally:
            agents.stop()
            await orchestrator.stop()
            await bus.close()
            await store.close()
            server.stop()

        assert FlakyStore.refused == len(FAIL), "the faults were hit"
        assert final.status == "completed"
        assert replayed == final, "the live state is exactly what the log holds"
        events = [journal.decode_run_event(s) for s in stored]
        done = Counter(e.task_id for e in events if isinstance(e, TaskSucceeded))
        assert done == Counter({f"t[{i}]": 1 for i in range(40)})
        assigned = {
            (e.task_id, e.attempt, e.agent_id) for e in events if isinstance(e, TaskAssigned)
        }
        got = [
            json.loads(line)
            for f in receipts.glob("*.jsonl")
            for line in f.read_text().splitlines()
        ]
        for r in got:
            assert (r["task_id"], r["attempt"], r["agent_id"]) in assigned, (
                f"an agent got an attempt that is not in the log: {r}"
            )

    asyncio.run(scenario())
