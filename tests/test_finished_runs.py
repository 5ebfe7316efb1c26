"""A long-lived orchestrator keeps only what it needs of finished runs: the newest few in
memory, the rest read from the log when asked for; and it starts without reading the
finished history at all (only unfinished runs are rebuilt)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import pytest

from bench.bench_recovery import record_run
from bus.connection import Bus
from bus.server import EmbeddedNats
from eventstore import EventRow, Snapshot, SqliteEventStore, StoredEvent
from orchestrator.core.errors import ControlRefused, UnknownRun
from orchestrator.core.state import RunState
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.api import RunControlRequest
from orchestrator.service.finished import FinishedRuns
from orchestrator.service.intake import Recorded
from orchestrator.service.launcher import AgentProcesses
from orchestrator.service.service import Orchestrator
from tests.cluster import REPO

WORKERS = AgentSpec(role="worker", handler="agents.builtin:noop", count=1, capacity=8)
SMALL = WorkflowSpec(name="small", steps=[StepSpec(id="t", role="worker", fan_out=3)])


def test_finished_runs_keeps_the_newest_and_wakes_waiters() -> None:
    async def scenario() -> None:
        finished = FinishedRuns(keep=2)
        waiter = asyncio.ensure_future(finished.until("a"))
        await asyncio.sleep(0)
        ended = RunState("a", status="completed")
        finished.ended("a", ended)
        assert await waiter is ended
        assert finished.keep("a") == []
        assert finished.keep("b") == []
        assert finished.keep("a") == [], "kept again: now the newest"
        assert finished.keep("c") == ["b"]
        assert len(finished) == 2
        with pytest.raises(ValueError, match="keep"):
            FinishedRuns(keep=-1)

    asyncio.run(scenario())


def test_recorded_report_ids_stay_bounded_and_leave_with_their_run() -> None:
    recorded = Recorded(limit=3)
    recorded.update("a", ["a:1", "a:2"])
    recorded.update("b", ["b:1", "b:2"])
    assert "a:1" not in recorded, "the oldest id goes past the bound"
    assert all(rid in recorded for rid in ("a:2", "b:1", "b:2"))
    recorded.forget("b")
    assert "b:1" not in recorded
    assert "b:2" not in recorded
    assert "a:2" in recorded
    recorded.update("c", ["c:1", "c:2", "c:3"])
    assert "a:2" not in recorded
    assert recorded._of_run == {"c": {"c:1", "c:2", "c:3"}}, "nothing kept for a or b"


def test_only_the_newest_finished_runs_stay_in_memory_the_rest_come_from_the_log(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        server = EmbeddedNats(tmp_path / "nats")
        url = await server.start()
        store = await SqliteEventStore.open(tmp_path / "events.db")
        bus = await Bus.connect(url, name="orchestrator")
        orchestrator = Orchestrator(bus, store, agent_ttl=1.0, tick_s=0.05, keep_finished=2)
        agents = AgentProcesses(tmp_path / "logs")
        try:
            await orchestrator.start()
            agents.start(WORKERS, url, REPO, heartbeat_s=0.2)
            await orchestrator.wait_for_agents(AgentProcesses.roles([WORKERS]), timeout=30)
            ids = []
            for _ in range(6):
                ids.append(await orchestrator.start_run(SMALL))
                assert (await orchestrator.wait(ids[-1], timeout=30)).status == "completed"

            assert sorted(s.run_id for s in orchestrator.runs()) == sorted(ids[-2:])
            first = ids[0]
            with pytest.raises(UnknownRun):
                orchestrator.run(first)  # no longer in memory...
            from_log = await journal.load_run(store, first)
            assert await orchestrator.load(first) == from_log  # ...but read on demand
            assert (await orchestrator.wait(first, timeout=5)) == from_log
            assert from_log.status == "completed"
            with pytest.raises(ControlRefused, match="already completed"):
                await orchestrator.control(RunControlRequest(first, "cancel"), "human:test")
            with pytest.raises(UnknownRun):
                await orchestrator.load("never-started")

            # nothing else is kept for the forgotten runs either
            pipeline = orchestrator._pipeline
            kept = set(ids[-2:])
            for held in (pipeline._ahead, pipeline._locks, pipeline._appending):
                assert set(held) <= kept, held
            assert not pipeline._uncommitted
            assert set(orchestrator._reports.recorded._of_run) <= kept
        finally:
            agents.stop()
            await orchestrator.stop()
            await bus.close()
            await store.close()
            server.stop()

    asyncio.run(scenario())


class ReadLog(SqliteEventStore):
    """The real store, noting every stream whose events or snapshot are read."""

    read: ClassVar[set[str]] = set()

    async def read_stream(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[StoredEvent]:
        self.read.add(stream)
        return await super().read_stream(stream, from_version, until_position)

    async def read_stream_rows(
        self, stream: str, from_version: int = 1, until_position: int | None = None
    ) -> list[EventRow]:
        self.read.add(stream)
        return await super().read_stream_rows(stream, from_version, until_position)

    async def stream_version(self, stream: str) -> int:
        self.read.add(stream)
        return await super().stream_version(stream)

    async def load_snapshot(
        self, stream: str, until_position: int | None = None
    ) -> Snapshot | None:
        self.read.add(stream)
        return await super().load_snapshot(stream, until_position)


def test_startup_rebuilds_unfinished_runs_and_reads_no_finished_one(tmp_path: Path) -> None:
    async def scenario() -> None:
        rng = random.Random(3)
        writer = await SqliteEventStore.open(tmp_path / "events.db")
        for n in range(20):
            await record_run(writer, f"done-{n}", 5, 5, rng)
        await record_run(writer, "open-0", 6, 3, rng)
        await writer.close()

        server = EmbeddedNats(tmp_path / "nats")
        url = await server.start()
        ReadLog.read = set()
        store = await ReadLog.open(tmp_path / "events.db")
        bus = await Bus.connect(url, name="orchestrator")
        orchestrator = Orchestrator(bus, store)
        try:
            await orchestrator.start()
            assert [s.run_id for s in orchestrator.runs()] == ["open-0"]
            finished: Sequence[str] = [journal.run_stream(f"done-{n}") for n in range(20)]
            assert not ReadLog.read & set(finished), "a finished run was read at startup"
            assert journal.run_stream("open-0") in ReadLog.read
        finally:
            await orchestrator.stop()
            await bus.close()
            await store.close()
            server.stop()

    asyncio.run(scenario())
