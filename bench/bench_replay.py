"""Orchestrator replay benchmark (not a test): how fast a run's state is rebuilt from the
SQLite log (read + decode + `evolve`), with and without snapshots. The run is recorded by
the pure core: a fan-out of N tasks, each assigned and succeeded.

    python -m bench.bench_replay [--tasks 20000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from bus.protocol import TaskResult
from eventstore import SqliteEventStore
from orchestrator.core.commands import AgentView, Context, ReportResult, StartRun
from orchestrator.core.decide import decide
from orchestrator.core.events import RunEvent
from orchestrator.core.state import RunState, fold
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.journal import Cause


async def record(store: SqliteEventStore, tasks: int) -> RunState:
    workflow = WorkflowSpec(name="wide", steps=[StepSpec(id="t", role="r", fan_out=tasks)])
    tokens = itertools.count()
    rng = random.Random(1)
    agents = [AgentView("a", "r", tasks, 0)]
    state = RunState("wide")
    cause = Cause("bench", "bench")

    async def apply(events: list[RunEvent]) -> RunState:
        envelopes = journal.run_envelopes("wide", state.version + 1, events, [cause] * len(events))
        stored = await store.append(journal.run_stream("wide"), envelopes, state.version)
        after = fold(state, events)
        if journal.snapshot_due(state, after):
            await store.save_snapshot(journal.snapshot_of(after, stored[-1].position))
        return after

    ctx = Context(0.0, 0.0, agents, lambda: f"L{next(tokens)}", rng.random)
    state = await apply(decide(state, StartRun("wide", workflow, {}, "0" * 32, "bench"), ctx))
    for task in list(state.tasks.values()):
        result = TaskResult("wide", task.task_id, 1, task.lease_token, "a", {"i": 1}, 0.0)
        state = await apply(decide(state, ReportResult(result, "a"), ctx))
    return state


async def measure(tasks: int, repeats: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="baton-replay-") as directory:
        store = await SqliteEventStore.open(Path(directory) / "events.db")
        try:
            live = await record(store, tasks)
            rates: dict[str, list[float]] = {"from_zero": [], "from_snapshot": []}
            for _ in range(repeats):
                for kind, snapshots in (("from_zero", False), ("from_snapshot", True)):
                    start = time.perf_counter()
                    state = await journal.load_run(store, "wide", snapshots=snapshots)
                    took = time.perf_counter() - start
                    assert state == live
                    rates[kind].append(took)
        finally:
            await store.close()
    return {
        "events": live.version,
        "from_zero_events_per_s": round(live.version / statistics.median(rates["from_zero"])),
        "from_zero_ms": round(statistics.median(rates["from_zero"]) * 1000, 1),
        "from_snapshot_ms": round(statistics.median(rates["from_snapshot"]) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="Orchestrator replay benchmark.")
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.tasks, args.repeats))
    print(
        f"replay of a {figures['events']}-event run into RunState: "
        f"{figures['from_zero_events_per_s']:,} events/s from zero "
        f"({figures['from_zero_ms']} ms), {figures['from_snapshot_ms']} ms from the newest snapshot"
    )
    print(json.dumps({"bench": "replay", **figures}))


if __name__ == "__main__":
    main()
