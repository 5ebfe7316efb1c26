"""Startup benchmark (not a test): how long `baton serve` takes to start serving on a log
of many finished runs (default 400 runs of 200 events: 80,000 events) and a few
unfinished ones, against the same on an empty log. Only unfinished runs should be
rebuilt at start, so the two should differ by little, whatever the finished history.

Three figures per log, each the median of `--repeats`:
- `recover`: the orchestrator's `start()` on an open store and bus (what grows with
  history, if anything does);
- `bootstrap`: open the store, start the embedded NATS, connect, `start()`;
- `process`: a fresh `baton serve` process until it prints its serving line (adds the
  interpreter's start and the imports, which do not depend on the log).

    python -m bench.bench_startup [--finished 400] [--tasks 99] [--unfinished 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_recovery import record_run
from bus import loop
from bus.connection import Bus
from bus.server import EmbeddedNats
from eventstore import SqliteEventStore
from orchestrator.service.bootstrap import bootstrap, store_path
from orchestrator.service.service import Orchestrator

UNFINISHED_TASKS = 10
"""Tasks of each unfinished run (half of them succeeded, the rest running)."""


async def build(directory: Path, finished: int, tasks: int, unfinished: int) -> int:
    """Write `finished` completed fan-out runs of `tasks` tasks and `unfinished` open ones
    to a fresh store in `directory`; the number of events written."""
    rng = random.Random(7)
    store = await SqliteEventStore.open(store_path(directory))
    total = 0
    try:
        for n in range(unfinished):
            half = UNFINISHED_TASKS // 2
            total += await record_run(store, f"open-{n}", UNFINISHED_TASKS, half, rng)
        for n in range(finished):
            total += await record_run(store, f"done-{n}", tasks, tasks, rng)
    finally:
        await store.close()
    return total


async def recover_s(directory: Path, url: str) -> float:
    """Seconds `Orchestrator.start()` takes on an open store and connected bus."""
    store = await SqliteEventStore.open(store_path(directory))
    bus = await Bus.connect(url, name="bench-orchestrator")
    orchestrator = Orchestrator(bus, store)
    try:
        started = time.perf_counter()
        await orchestrator.start()
        return time.perf_counter() - started
    finally:
        await orchestrator.stop()
        await bus.close()
        await store.close()


async def bootstrap_s(directory: Path) -> float:
    started = time.perf_counter()
    stack = await bootstrap(directory)
    took = time.perf_counter() - started
    await stack.close()
    return took


def process_s(directory: Path) -> float:
    """Seconds from spawning `baton serve` to its serving line."""
    started = time.perf_counter()
    command = [sys.executable, "-m", "orchestrator", "serve", "--state-dir", str(directory)]
    serving = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        assert serving.stdout is not None
        line = serving.stdout.readline()
        took = time.perf_counter() - started
        if "serving" not in line:
            raise SystemExit(f"baton serve did not start: {line!r}")
        return took
    finally:
        serving.terminate()
        serving.wait(30)


async def measure(logs: dict[str, Path], repeats: int) -> dict[str, dict[str, float]]:
    """Per log, the median seconds of each figure; the logs take turns in each repeat, so
    load from elsewhere on the machine falls on both alike."""
    figures: dict[str, dict[str, list[float]]] = {
        label: {"recover": [], "bootstrap": [], "process": []} for label in logs
    }
    servers = {label: EmbeddedNats(directory / "bench-nats") for label, directory in logs.items()}
    urls = {label: await server.start() for label, server in servers.items()}
    try:
        for _ in range(repeats):
            for label, directory in logs.items():
                runs = figures[label]
                runs["recover"].append(await recover_s(directory, urls[label]))
                runs["bootstrap"].append(await bootstrap_s(directory))
                runs["process"].append(await asyncio.to_thread(process_s, directory))
    finally:
        for server in servers.values():
            server.stop()
    return {
        label: {name: statistics.median(values) for name, values in runs.items()}
        for label, runs in figures.items()
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


async def main_async(args: argparse.Namespace, tmp: Path) -> dict[str, object]:
    empty, full = tmp / "empty", tmp / "history"
    empty.mkdir()
    full.mkdir()
    built = time.perf_counter()
    events = await build(full, args.finished, args.tasks, args.unfinished)
    took = time.perf_counter() - built
    print(f"  history: {events} events, {args.finished} finished runs of {args.tasks} tasks, "
          f"{args.unfinished} unfinished ({took:.1f} s to write)")  # fmt: skip
    medians = await measure({"empty log": empty, "history": full}, args.repeats)
    base, history = medians["empty log"], medians["history"]
    for label, figures in (("empty log", base), ("history", history)):
        print(f"  {label:10} start() {_ms(figures['recover']):7.1f} ms   "
              f"bootstrap {_ms(figures['bootstrap']):7.1f} ms   "
              f"baton serve process {_ms(figures['process']):7.1f} ms")  # fmt: skip
    return {
        "events": events,
        "finished_runs": args.finished,
        "unfinished_runs": args.unfinished,
        "repeats": args.repeats,
        "empty_start_ms": _ms(base["recover"]),
        "empty_bootstrap_ms": _ms(base["bootstrap"]),
        "empty_process_ms": _ms(base["process"]),
        "start_ms": _ms(history["recover"]),
        "bootstrap_ms": _ms(history["bootstrap"]),
        "process_ms": _ms(history["process"]),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--finished", type=int, default=400)
    p.add_argument("--tasks", type=int, default=99, help="tasks per finished run (2n+2 events)")
    p.add_argument("--unfinished", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="baton-bench-"))
    try:
        print("baton startup benchmark: baton serve on a long finished history, SQLite FULL")
        result = loop.run(main_async(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"median: start() {result['start_ms']} ms on {result['events']} events "
        f"({result['empty_start_ms']} ms on an empty log); baton serve process "
        f"{result['process_ms']} ms ({result['empty_process_ms']} ms on an empty log)"
    )
    print(json.dumps({"bench": "startup", **result}))


if __name__ == "__main__":
    main()
