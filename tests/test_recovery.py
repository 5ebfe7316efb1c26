"""The orchestrator keeps nothing but the log: stopped mid-run, a new instance rebuilds the
run from the store, consumes the results agents published meanwhile, and finishes it."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import pytest

from bus.connection import Bus
from orchestrator.core.errors import UnknownRun
from orchestrator.core.events import ClockRebased, RunEvent, TaskAssigned, TaskSucceeded
from orchestrator.core.state import RunState, TaskState
from orchestrator.core.workflow import AgentSpec, Limits, StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.service import Orchestrator
from tests.cluster import cluster, until_inbox_holds


def test_results_sent_while_the_orchestrator_is_down_are_not_lost(tmp_path: Path) -> None:
    gate = tmp_path / "the-fan-may-end"
    workflow = WorkflowSpec(
        name="fan-then-join",
        steps=[
            StepSpec(id="fan", role="worker", fan_out=4,
                     params={"gated": [f"fan[{i}]" for i in range(4)], "gate": str(gate)}),
            StepSpec(id="join", role="worker", needs=["fan"]),
        ],
    )  # fmt: skip
    workers = [AgentSpec(role="worker", handler="tests.crash_handlers:gated", count=2, capacity=4)]

    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            await c.add_agents(workers)
            run_id = await c.orchestrator.start_run(workflow)
            running = await c.until(run_id, lambda s: all(
                s.tasks[f"fan[{i}]"].status == "running" for i in range(4)
            ))  # fmt: skip
            for t in (f"fan[{i}]" for i in range(4)):  # sent, not only recorded as assigned
                await c.until_held(running.tasks[t].agent_id, run_id, t, 1)
            await c.orchestrator.stop()
            down_at = c.orchestrator.run(run_id)
            gate.touch()  # the agents finish and publish while nobody listens
            await until_inbox_holds(c.stack.nats_url, run_id, 4)
            assert c.orchestrator.run(run_id) == down_at, "nothing read them meanwhile"

            bus = await Bus.connect(c.stack.nats_url, name="orchestrator-2")
            second = Orchestrator(bus, c.stack.store, agent_ttl=1.0, tick_s=0.05)
            await second.start()
            assert second.run(run_id) == down_at, "state rebuilt from the log alone"
            final = await second.wait(run_id, timeout=30)
            await second.stop()

            third = Orchestrator(bus, c.stack.store)
            await third.start()
            with pytest.raises(UnknownRun):
                third.run(run_id)  # a finished run is not replayed on start
            await third.stop()
            await bus.close()
            stored = await c.stack.store.read_stream(journal.run_stream(run_id))

        assert final.status == "completed"
        events = [journal.decode_run_event(s) for s in stored]
        done = Counter(e.task_id for e in events if isinstance(e, TaskSucceeded))
        assert done == Counter({"fan[0]": 1, "fan[1]": 1, "fan[2]": 1, "fan[3]": 1, "join": 1})
        attempts = Counter(e.task_id for e in events if isinstance(e, TaskAssigned))
        assert attempts == done, "nothing was re-run: the results waited in the inbox"

    asyncio.run(scenario())


def test_long_runs_are_snapshotted_and_replay_from_a_snapshot_agrees(tmp_path: Path) -> None:
    many = WorkflowSpec(name="many", steps=[StepSpec(id="t", role="noop", fan_out=300)])
    noop = [AgentSpec(role="noop", handler="agents.builtin:noop", count=2, capacity=50)]

    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            await c.add_agents(noop)
            run_id = await c.orchestrator.start_run(many)
            live = await c.orchestrator.wait(run_id, timeout=60)
            store = c.stack.store
            stream = journal.run_stream(run_id)
            snapshot = None
            for _ in range(200):
                snapshot = await store.load_snapshot(stream)
                if snapshot is not None:
                    break
                await asyncio.sleep(0.02)
            assert snapshot is not None, "a run past its snapshot interval is snapshotted"
            assert snapshot.version >= journal.snapshot_interval(live)
            assert await journal.load_run(store, run_id) == live
            assert await journal.load_run(store, run_id, snapshots=False) == live
            for until in (snapshot.position - 1, snapshot.position, snapshot.position + 7):
                fast = await journal.load_run(store, run_id, until_position=until)
                slow = await journal.load_run(store, run_id, until_position=until, snapshots=False)
                assert fast == slow
                assert fast.version == slow.version > 0

    asyncio.run(scenario())


def test_snapshots_come_at_most_every_500_events_and_at_least_twice_the_tasks() -> None:
    def run(tasks: int, version: int) -> RunState:
        return RunState("r", version, tasks={f"t{i}": TaskState(f"t{i}") for i in range(tasks)})

    assert journal.snapshot_interval(run(10, 0)) == journal.SNAPSHOT_EVERY
    assert journal.snapshot_interval(run(1000, 0)) == 2000, "a snapshot costs O(tasks)"
    assert journal.snapshot_due(run(10, 499), run(10, 503))
    assert not journal.snapshot_due(run(1000, 1000), run(1000, 1500))
    assert journal.snapshot_due(run(1000, 1999), run(1000, 2000))


def test_a_run_taken_over_on_another_boot_keeps_its_deadline(tmp_path: Path) -> None:
    """The first orchestrator's monotonic clock is a million seconds ahead, as an old boot
    with a long uptime would be; the second runs on a new boot. The run's 1.5 s deadline
    still falls 1.5 s after its start: it is not put off by the old uptime."""
    slow = WorkflowSpec(
        name="slow",
        steps=[StepSpec(id="s", role="worker", params={"seconds": 5.0})],
        limits=Limits(deadline_s=1.5),
    )
    workers = [AgentSpec(role="worker", handler="agents.builtin:sleep", count=1, capacity=1)]

    async def scenario() -> tuple[RunState, list[RunEvent]]:
        async with cluster(tmp_path) as c:
            await c.add_agents(workers)
            await c.orchestrator.stop()
            bus = await Bus.connect(c.stack.nats_url, name="orchestrator-old-boot")
            old = Orchestrator(
                bus, c.stack.store, boot="old-boot", clock=lambda: time.monotonic() + 1e6
            )
            await old.start()
            await old.wait_for_agents(Counter({"worker": 1}), timeout=10)
            run_id = await old.start_run(slow)
            for _ in range(200):
                if old.run(run_id).tasks["s"].status == "running":
                    break
                await asyncio.sleep(0.01)
            await old.stop()
            new = Orchestrator(bus, c.stack.store, boot="new-boot", tick_s=0.05)
            await new.start()
            final = await new.wait(run_id, timeout=10)
            await new.stop()
            await bus.close()
            stored = await c.stack.store.read_stream(journal.run_stream(run_id))
        return final, [journal.decode_run_event(s) for s in stored]

    began = time.monotonic()
    final, events = asyncio.run(scenario())
    assert final.status == "stopped", "the deadline passed, on the new boot's clock"
    assert final.limit == "deadline"
    assert final.finished_at - final.started_at < 4.0, "well before the 5 s task's end"
    [rebased] = [e for e in events if isinstance(e, ClockRebased)]
    assert rebased.boot == "new-boot"
    assert rebased.clock_shift == pytest.approx(-1e6, abs=60), "the old boot's uptime"
    assert time.monotonic() - began < 60
