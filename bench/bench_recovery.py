"""Recovery benchmark (not a test): an orchestrator starting on a log with 100,000 events
of history (many finished runs, a few unfinished ones with attempts out), timed from its
start to the first assignment it sends (the re-send of an attempt still owed). Real NATS,
the SQLite store; a stand-in agent on `baton.agent.*.assign` notes when it arrives.

Two figures per repeat: in this process (open the store, connect, recover, send), and as
a fresh `baton serve` process (which adds the interpreter start and the imports).

    python -m bench.bench_recovery [--events 100000] [--unfinished 5] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bus import loop
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming
from bus.protocol import AgentInbound, AssignAck, AssignAcks, AssignBatch, TaskResult
from bus.server import EmbeddedNats
from eventstore import SqliteEventStore
from orchestrator.core.commands import AgentView, Context, ReportResult, StartRun
from orchestrator.core.decide import decide
from orchestrator.core.events import RunEvent
from orchestrator.core.state import RunState, fold
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.bootstrap import store_path
from orchestrator.service.journal import Cause
from orchestrator.service.service import Orchestrator

_inbound: Decoder[AgentInbound] = Decoder(AgentInbound)
FINISHED_FAN_OUT = 48
"""Tasks per finished run: 2 events each, plus start and end (98 events a run)."""
UNFINISHED_FAN_OUT = 400
"""Tasks per unfinished run: the first half succeeded, the rest assigned and running."""


async def record_run(
    store: SqliteEventStore, run_id: str, tasks: int, finish: int, rng: random.Random
) -> int:
    """Record one fan-out run through the pure core: `finish` of its `tasks` succeed (all
    of them: the run completes). Snapshots as the service takes them. Returns its events."""
    workflow = WorkflowSpec(name="history", steps=[StepSpec(id="t", role="r", fan_out=tasks)])
    tokens = itertools.count()
    agents = [AgentView(f"agent-{i}", "r", tasks, 0) for i in range(4)]
    ctx = Context(0.0, time.time(), agents, lambda: f"L{next(tokens)}", rng.random)
    state = RunState(run_id)
    events: list[RunEvent] = []
    start = StartRun(run_id, workflow, {}, "0" * 32, "bench")
    step = decide(state, start, ctx)
    state, events = fold(state, step), events + step
    for task in list(state.tasks.values())[:finish]:
        result = TaskResult(run_id, task.task_id, 1, task.lease_token, task.agent_id, {}, 0.0)
        step = decide(state, ReportResult(result, task.agent_id), ctx)
        state, events = fold(state, step), events + step
    cause = Cause("bench", "bench")
    envelopes = journal.run_envelopes(run_id, 1, events, [cause] * len(events))
    stored = await store.append(journal.run_stream(run_id), envelopes, 0)
    every = journal.snapshot_interval(state)  # a fan-out's tasks all exist from its start
    if state.version >= every:
        snap_version = state.version // every * every
        snap_state = fold(RunState(run_id), events[:snap_version])
        position = stored[snap_version - 1].position
        await store.save_snapshot(journal.snapshot_of(snap_state, position))
    return len(events)


async def build_history(directory: Path, events: int, unfinished: int) -> tuple[int, int]:
    """(events, finished runs) written to a fresh store in `directory`."""
    rng = random.Random(7)
    store = await SqliteEventStore.open(store_path(directory))
    total = finished = 0
    try:
        for n in range(unfinished):
            half = UNFINISHED_FAN_OUT // 2
            total += await record_run(store, f"open-{n}", UNFINISHED_FAN_OUT, half, rng)
        while total < events:
            total += await record_run(
                store, f"done-{finished}", FINISHED_FAN_OUT, FINISHED_FAN_OUT, rng
            )
            finished += 1
    finally:
        await store.close()
    return total, finished


class FirstAssignment:
    """A stand-in for every agent: accepts assignments and notes when the first came."""

    def __init__(self) -> None:
        self.at = 0.0
        self.arrived = asyncio.Event()

    async def __call__(self, msg: Incoming) -> None:
        if not self.arrived.is_set():
            self.at = time.perf_counter()
            self.arrived.set()
        message = _inbound.decode(msg.data)  # taken, so the history stays as it was
        if isinstance(message, AssignBatch):
            acks = [AssignAck(True, "bench")] * len(message.assignments)
            await msg.reply(encode(AssignAcks(acks)))
        else:
            await msg.reply(encode(AssignAck(True, "bench")))


async def in_process(directory: Path, url: str, listener: FirstAssignment) -> tuple[float, float]:
    """(seconds to `start()` returning, seconds to the first assignment arriving)."""
    started = time.perf_counter()
    store = await SqliteEventStore.open(store_path(directory))
    bus = await Bus.connect(url, name="bench-orchestrator")
    orchestrator = Orchestrator(bus, store)
    await orchestrator.start()
    ready = time.perf_counter()
    await asyncio.wait_for(listener.arrived.wait(), 60)
    await orchestrator.stop()
    await bus.close()
    await store.close()
    return ready - started, listener.at - started


async def as_process(directory: Path, url: str, listener: FirstAssignment) -> float:
    started = time.perf_counter()
    command = [sys.executable, "-m", "orchestrator", "serve", "--nats", url]
    process = subprocess.Popen([*command, "--state-dir", str(directory)], stdout=subprocess.DEVNULL)
    try:
        await asyncio.wait_for(listener.arrived.wait(), 60)
    finally:
        process.terminate()
        process.wait(15)
    return listener.at - started


async def measure(args: argparse.Namespace, directory: Path) -> dict[str, float | int]:
    built = time.perf_counter()
    events, finished = await build_history(directory, args.events, args.unfinished)
    print(f"  history: {events} events, {finished} finished runs, {args.unfinished} unfinished "
          f"({time.perf_counter() - built:.1f} s to write)")  # fmt: skip
    server = EmbeddedNats(directory / "nats-home")
    url = await server.start()
    bus = await Bus.connect(url, name="bench-agents")
    figures: dict[str, list[float]] = {"start": [], "first": [], "process": []}
    try:
        for _ in range(args.repeats):
            listener = FirstAssignment()
            sub = await bus.subscribe("baton.agent.*.assign", listener)
            ready, first = await in_process(directory, url, listener)
            await sub.unsubscribe()
            listener = FirstAssignment()
            sub = await bus.subscribe("baton.agent.*.assign", listener)
            process = await as_process(directory, url, listener)
            await sub.unsubscribe()
            figures["start"].append(ready)
            figures["first"].append(first)
            figures["process"].append(process)
            print(f"  start() {ready * 1000:7.1f} ms   first assignment {first * 1000:7.1f} ms"
                  f"   as a new process {process * 1000:7.1f} ms")  # fmt: skip
    finally:
        await bus.close()
        server.stop()
    store = await SqliteEventStore.open(store_path(directory))
    try:
        if await store.last_position() != events:
            raise SystemExit("the restarts changed the history: the figures would not compare")
    finally:
        await store.close()
    return {
        "events": events,
        "finished_runs": finished,
        "unfinished_runs": args.unfinished,
        "start_ms_median": round(statistics.median(figures["start"]) * 1000, 1),
        "first_dispatch_ms_median": round(statistics.median(figures["first"]) * 1000, 1),
        "process_first_dispatch_ms_median": round(statistics.median(figures["process"]) * 1000, 1),
        "repeats": args.repeats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--unfinished", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        print("baton recovery benchmark: restart on a long history, real NATS, SQLite FULL")
        result = loop.run(measure(args, Path(tmp)))
    print(
        f"median: first assignment {result['first_dispatch_ms_median']} ms after start "
        f"(start() {result['start_ms_median']} ms), "
        f"{result['process_first_dispatch_ms_median']} ms as a new process"
    )
    print(json.dumps({"bench": "recovery", **result}))


if __name__ == "__main__":
    main()
