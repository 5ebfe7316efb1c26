"""Console benchmark (not a test): the server time of the runs list and of one big run's
page on a large SQLite log, over real HTTP to `baton ui`'s server (read-only: no bus).
The console is started twice: first on a log without the run summaries projection (the
list is folded while the projector builds it), then again, on a new store object, with
it stored beside the log (the cold start a console has from then on). `--store
jetstream` measures the same on a JetStream log (a nats-server of its own).

The log holds `--runs` runs of `--tasks` tasks each (a fan-out, every task assigned and
succeeded), recorded by the pure core and appended one run per batch, with the
snapshots the orchestrator would have taken: 500 runs of 1,000 tasks is about
1,000,000 events.

    python -m bench.bench_console [--runs 500] [--tasks 1000] [--repeats 5] [--store jetstream]
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import json
import random
import re
import statistics
import tempfile
import time
from pathlib import Path

from bus.protocol import TaskResult
from bus.server import EmbeddedNats
from eventstore import EventStore, JetStreamEventStore, SqliteEventStore, StoredEvent
from eventstore.jetstream.writer import MAX_BATCH
from orchestrator.cli.console import runs_list
from orchestrator.cli.console.command import Running, serving
from orchestrator.core.commands import AgentView, Context, ReportResult, StartRun
from orchestrator.core.decide import decide
from orchestrator.core.events import RunEvent
from orchestrator.core.state import RunState, fold
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service import journal, run_summaries
from orchestrator.service.journal import Cause


async def record_run(store: EventStore, run_id: str, tasks: int, name: str) -> int:
    """One run of `tasks` tasks, appended in one batch (JetStream: batches of at most
    `MAX_BATCH`); returns its events."""
    workflow = WorkflowSpec(name=name, steps=[StepSpec(id="t", role="r", fan_out=tasks)])
    tokens = itertools.count()
    rng = random.Random(1)
    ctx = Context(0.0, 0.0, [AgentView("a", "r", tasks, 0)], lambda: f"L{next(tokens)}", rng.random)
    state = RunState(run_id)
    events: list[RunEvent] = []
    snapshots: list[RunState] = []

    def apply(new: list[RunEvent]) -> None:
        nonlocal state
        after = fold(state, new)
        if journal.snapshot_due(state, after):
            snapshots.append(after)
        events.extend(new)
        state = after

    apply(decide(state, StartRun(run_id, workflow, {}, "0" * 32, "bench"), ctx))
    for task in list(state.tasks.values()):
        result = TaskResult(run_id, task.task_id, 1, task.lease_token, "a", {"i": 1}, 0.0)
        apply(decide(state, ReportResult(result, "a"), ctx))
    cause = Cause("bench", "bench")
    envelopes = journal.run_envelopes(run_id, 1, events, [cause] * len(events))
    stored: list[StoredEvent] = []
    step = MAX_BATCH if isinstance(store, JetStreamEventStore) else len(envelopes)
    for at in range(0, len(envelopes), step):
        stored += await store.append(journal.run_stream(run_id), envelopes[at : at + step], at)
    for snap in snapshots:
        await store.save_snapshot(journal.snapshot_of(snap, stored[snap.version - 1].position))
    return len(stored)


def _get(running: Running, cookie: str, path: str) -> tuple[float, str]:
    connection = http.client.HTTPConnection(running.host, running.port, timeout=120)
    started = time.perf_counter()
    try:
        connection.request(
            "GET", path, headers={"Host": f"127.0.0.1:{running.port}", "Cookie": cookie}
        )
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    took = time.perf_counter() - started
    if response.status != 200:
        raise SystemExit(f"GET {path}: {response.status} {body[-300:]}")
    return took, body


async def timed(running: Running, cookie: str, path: str, repeats: int) -> list[float]:
    return [(await asyncio.to_thread(_get, running, cookie, path))[0] for _ in range(repeats)]


def _ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000, 1)


class Log:
    """The log measured: the SQLite file in the directory, or a JetStream log on a
    nats-server of its own there; `open` gives a new store object on it each time."""

    def __init__(self, kind: str, directory: Path) -> None:
        self.kind = kind
        self.directory = directory
        self.server: EmbeddedNats | None = None
        self.url = ""

    async def open(self) -> EventStore:
        if self.kind == "sqlite":
            return await SqliteEventStore.open(self.directory / "events.db")
        if self.server is None:
            self.server = EmbeddedNats(self.directory / "nats")
            self.url = await self.server.start()
        return await JetStreamEventStore.open(self.url, timeout=30.0)

    def close(self) -> None:
        if self.server is not None:
            self.server.stop()


async def measure(
    runs: int, tasks: int, repeats: int, directory: Path, kind: str = "sqlite"
) -> dict[str, object]:
    log = Log(kind, directory)
    try:
        return await _measure(log, runs, tasks, repeats)
    finally:
        log.close()


async def _measure(log: Log, runs: int, tasks: int, repeats: int) -> dict[str, object]:
    store = await log.open()
    try:
        began = time.perf_counter()
        events = await store.last_position()  # a log kept with --dir is measured again
        if not events:
            for i in range(runs):
                name = "wide" if i % 10 else "narrow"
                events += await record_run(store, f"20261201-{i:06d}-bench", tasks, name)
        built_s = time.perf_counter() - began
        print(f"log: {runs} runs of {tasks} tasks, {events} events, built in {built_s:.1f}s")
        port = store.projections
        had = await port.checkpoint(run_summaries.NAME)  # a kept log may hold the rows
        async with serving(store, None, "human:bench", shown_store="bench") as running:
            cookie = await _cookie(running)
            first = (await timed(running, cookie, "/", 1))[0]  # while the rows are projected
            began = time.perf_counter()
            while await port.checkpoint(run_summaries.NAME) < events:
                if time.perf_counter() - began > 900:
                    raise SystemExit("the run summaries were not projected in 900 s")
                await asyncio.sleep(0.05)
            projected_s = time.perf_counter() - began + first
    finally:
        await store.close()  # JetStream: the rows are saved beside the log at close
    store = await log.open()
    try:
        port = store.projections
        # a console started again: the rows are stored beside the log
        async with serving(store, None, "human:bench", shown_store="bench") as running:
            cookie = await _cookie(running)
            restarted = (await timed(running, cookie, "/", 1))[0]
            listed = await timed(running, cookie, "/", repeats)
            page_two = await timed(running, cookie, f"/?before=20261201-{runs - 50:06d}-bench", 1)
            running_only = await timed(running, cookie, "/?status=running", repeats)
            big = f"/runs/20261201-{runs - 1:06d}-bench"
            run_page = await timed(running, cookie, big, repeats)
            travel = await timed(running, cookie, f"{big}?at={events - tasks}", repeats)
            audit = await timed(running, cookie, "/audit?type=run.*&limit=100", repeats)
            folded = running.console.summaries.folded
        # what a page costs without HTTP, with nothing kept in memory (medians): read
        # from the stored projection, and folded from the log (no projection)
        cold_projected: list[float] = []
        cold_fold: list[float] = []
        for _ in range(repeats):
            started = time.perf_counter()
            await runs_list.runs_page(store, runs_list.Summaries(port), runs_list.RunFilter())
            cold_projected.append(time.perf_counter() - started)
            started = time.perf_counter()
            await runs_list.runs_page(store, runs_list.Summaries(), runs_list.RunFilter())
            cold_fold.append(time.perf_counter() - started)
    finally:
        await store.close()
    return {
        "store": log.kind,
        "runs": runs,
        "tasks_per_run": tasks,
        "events": events,
        "projection_stored_before": bool(had),
        "runs_list_first_load_ms": round(first * 1000, 1),
        "rows_projected_in_s": round(projected_s, 1),
        "runs_list_after_restart_ms": round(restarted * 1000, 1),
        "rows_folded_after_restart": folded,
        "runs_list_ms": _ms(listed),
        "runs_list_cold_projected_ms": _ms(cold_projected),
        "runs_list_cold_fold_ms": _ms(cold_fold),
        "runs_list_older_page_ms": _ms(page_two),
        "runs_list_status_running_ms": _ms(running_only),
        "run_page_first_ms": round(run_page[0] * 1000, 1),
        "run_page_ms": _ms(run_page[1:]),
        "run_page_time_travel_first_ms": round(travel[0] * 1000, 1),
        "run_page_time_travel_ms": _ms(travel[1:]),
        "audit_page_ms": _ms(audit),
    }


async def _cookie(running: Running) -> str:
    login = running.login_url.partition(f":{running.port}")[2]
    return f"baton_console={await asyncio.to_thread(_session, running, login)}"


def _session(running: Running, login: str) -> str:
    connection = http.client.HTTPConnection(running.host, running.port, timeout=30)
    try:
        connection.request("GET", login, headers={"Host": f"127.0.0.1:{running.port}"})
        response = connection.getresponse()
        response.read()
        match = re.match(r"baton_console=([^;]+);", response.getheader("set-cookie") or "")
    finally:
        connection.close()
    if match is None:
        raise SystemExit("login refused")
    return match.group(1)


def main() -> None:
    parser = argparse.ArgumentParser(description="Console page times on a large log.")
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5, help="at least 2")
    parser.add_argument(
        "--store",
        choices=("sqlite", "jetstream"),
        default="sqlite",
        help="the log's store (jetstream: on a nats-server of its own)",
    )
    parser.add_argument(
        "--dir",
        default="",
        help="keep the log here, or measure the one an earlier run with the same --runs and "
        "--tasks kept there (default: a temp dir)",
    )
    args = parser.parse_args()
    if args.dir:
        Path(args.dir).mkdir(parents=True, exist_ok=True)
        result = asyncio.run(
            measure(args.runs, args.tasks, args.repeats, Path(args.dir), args.store)
        )
    else:
        with tempfile.TemporaryDirectory(prefix="baton-console-") as directory:
            result = asyncio.run(
                measure(args.runs, args.tasks, args.repeats, Path(directory), args.store)
            )
    for key, value in result.items():
        print(f"{key:>32}: {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
