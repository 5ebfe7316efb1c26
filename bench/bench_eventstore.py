"""How fast the SQLite event store is on this machine (synchronous=FULL, WAL).

Figures, each the median of `--repeats` runs (default 3):
- single append latency (one event per append, durable commit): p50 and p99;
- group-commit throughput: 8 concurrent appenders, 100-event batches, 2 s;
- replay: `read_stream_rows` of a 1,000,000-event stream, msgpack decode and a fold
  (and the same through `read_stream`, which builds full `StoredEvent`s);
- audit query: `query(EventQuery(correlation_id=...))` for one run (1,000 events) in a
  1,000,000-event log of 1,000 interleaved runs.

The two 1,000,000-event logs are built in a temporary directory through the store's own
`append` (10,000-event batches); every measurement goes through the public store API.

Run: `PYTHONPATH=. python bench/bench_eventstore.py`. It prints figures, then one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import msgspec

from eventstore import EventQuery, NewEvent, SqliteEventStore


class Progressed(msgspec.Struct, frozen=True):
    task_id: str
    attempt: int
    agent: str
    note: str


PAYLOAD = msgspec.msgpack.encode(
    Progressed(task_id="t-000123", attempt=1, agent="agent:writer", note="x" * 120)
)
LOG_SIZE = 1_000_000
RUNS = 1_000


def event(event_id: str, run: str = "run-1") -> NewEvent:
    return NewEvent(
        event_id=event_id,
        type="task.progressed",
        data=PAYLOAD,
        correlation_id=run,
        actor="orchestrator",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
    )


async def single_append_latency(path: Path, count: int = 1_000) -> dict[str, float]:
    store = await SqliteEventStore.open(path)
    try:
        for n in range(50):  # warm up
            await store.append("warm", [event(f"warm-{n}")], n)
        samples = []
        for n in range(count):
            start = time.perf_counter()
            await store.append("run-1", [event(f"lat-{n}")], n)
            samples.append(time.perf_counter() - start)
    finally:
        await store.close()
    samples.sort()
    return {
        "p50_ms": statistics.median(samples) * 1e3,
        "p99_ms": samples[int(len(samples) * 0.99) - 1] * 1e3,
    }


async def concurrent_throughput(
    path: Path, writers: int = 8, batch: int = 100, seconds: float = 2.0
) -> dict[str, float]:
    store = await SqliteEventStore.open(path)
    deadline = time.perf_counter() + seconds
    appends = 0

    async def writer(k: int) -> int:
        nonlocal appends
        version = 0
        while time.perf_counter() < deadline:
            events = [event(f"w{k}-{version + i}") for i in range(batch)]
            stored = await store.append(f"writer-{k}", events, version)
            version = stored[-1].version
            appends += 1
        return version

    try:
        start = time.perf_counter()
        written = sum(await asyncio.gather(*(writer(k) for k in range(writers))))
        elapsed = time.perf_counter() - start
        report = await store.verify()
        assert report.ok, report
        assert report.checked == written, report
    finally:
        await store.close()
    return {"events_per_s": written / elapsed, "appends_per_s": appends / elapsed}


async def build_replay_log(path: Path) -> float:
    """One stream of LOG_SIZE events; returns the build rate in events/s."""
    store = await SqliteEventStore.open(path)
    try:
        start = time.perf_counter()
        for first in range(0, LOG_SIZE, 10_000):
            events = [event(f"r{n}") for n in range(first, first + 10_000)]
            await store.append("run-big", events, first)
        return LOG_SIZE / (time.perf_counter() - start)
    finally:
        await store.close()


async def build_audit_log(path: Path) -> float:
    """RUNS runs of LOG_SIZE / RUNS events each, interleaved in 100-event batches,
    appended by 10 concurrent appenders; returns the build rate in events/s."""
    store = await SqliteEventStore.open(path)
    per_run = LOG_SIZE // RUNS

    async def appender(k: int) -> None:
        for version in range(0, per_run, 100):
            for run in range(k, RUNS, 10):
                name = f"run-{run:04d}"
                events = [event(f"{name}:{version + i}", name) for i in range(100)]
                await store.append(name, events, version)

    try:
        start = time.perf_counter()
        await asyncio.gather(*(appender(k) for k in range(10)))
        return LOG_SIZE / (time.perf_counter() - start)
    finally:
        await store.close()


async def replay_rate(path: Path) -> dict[str, float]:
    decoder = msgspec.msgpack.Decoder(Progressed)
    store = await SqliteEventStore.open(path)
    try:
        start = time.perf_counter()
        rows = await store.read_stream_rows("run-big")
        read_done = time.perf_counter()
        attempts = 0
        types: Counter[str] = Counter()
        version = 0
        for _position, at, type_, _schema, data in rows:  # the fold
            assert at == version + 1
            version = at
            types[type_] += 1
            attempts += decoder.decode(data).attempt
        end = time.perf_counter()
        assert version == LOG_SIZE
        assert attempts == LOG_SIZE
        del rows
        full_start = time.perf_counter()
        events = await store.read_stream("run-big")
        full_read = time.perf_counter()
        for e in events:
            attempts += decoder.decode(e.data).attempt
        full_end = time.perf_counter()
        assert len(events) == LOG_SIZE
    finally:
        await store.close()
    return {
        "rows_read_events_per_s": LOG_SIZE / (read_done - start),
        "replay_events_per_s": LOG_SIZE / (end - start),
        "full_read_stream_events_per_s": LOG_SIZE / (full_read - full_start),
        "full_replay_events_per_s": LOG_SIZE / (full_end - full_start),
    }


async def audit_query(path: Path, samples: int = 20) -> dict[str, float]:
    store = await SqliteEventStore.open(path)
    try:
        times = []
        for n in range(samples):
            run = f"run-{(n * 37) % RUNS:04d}"
            start = time.perf_counter()
            found = await store.query(EventQuery(correlation_id=run))
            times.append(time.perf_counter() - start)
            assert len(found) == LOG_SIZE // RUNS
            assert all(e.correlation_id == run for e in found)
        start = time.perf_counter()
        narrowed = await store.query(
            EventQuery(correlation_id="run-0500", type_glob="task.*", text="agent:writer")
        )
        narrowed_s = time.perf_counter() - start
        assert len(narrowed) == LOG_SIZE // RUNS
    finally:
        await store.close()
    return {
        "one_run_ms": statistics.median(times) * 1e3,
        "one_run_with_glob_and_text_ms": narrowed_s * 1e3,
        "events_per_run": float(LOG_SIZE // RUNS),
    }


def median_of(results: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(r[key] for r in results) for key in results[0]}


async def run(repeats: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as name:
        directory = Path(name)
        latency = median_of(
            [await single_append_latency(directory / f"latency-{n}.db") for n in range(repeats)]
        )
        print(
            f"single append (durable), median of {repeats}: p50 {latency['p50_ms']:.3f} ms, "
            f"p99 {latency['p99_ms']:.3f} ms"
        )
        throughput = median_of(
            [await concurrent_throughput(directory / f"tp-{n}.db") for n in range(repeats)]
        )
        print(
            f"8 appenders x 100-event batches, median of {repeats}: "
            f"{throughput['events_per_s']:,.0f} events/s "
            f"({throughput['appends_per_s']:,.0f} appends/s)"
        )
        build = await build_replay_log(directory / "replay.db")
        print(f"built a {LOG_SIZE:,}-event stream via append(10k batches): {build:,.0f} events/s")
        replay = median_of([await replay_rate(directory / "replay.db") for _ in range(repeats)])
        print(
            f"replay of a {LOG_SIZE:,}-event stream, median of {repeats}: "
            f"read_stream_rows + decode + fold {replay['replay_events_per_s']:,.0f} events/s "
            f"(read alone {replay['rows_read_events_per_s']:,.0f}/s); with full StoredEvents "
            f"(read_stream): {replay['full_replay_events_per_s']:,.0f} events/s "
            f"(read alone {replay['full_read_stream_events_per_s']:,.0f}/s)"
        )
        audit_build = await build_audit_log(directory / "audit.db")
        print(
            f"built a {LOG_SIZE:,}-event log of {RUNS} runs via 10 appenders: "
            f"{audit_build:,.0f} events/s"
        )
        audit = median_of([await audit_query(directory / "audit.db") for _ in range(repeats)])
        print(
            f"audit query for one run ({audit['events_per_run']:,.0f} events) in "
            f"{LOG_SIZE:,}: {audit['one_run_ms']:.2f} ms (median); with a type glob and "
            f"text: {audit['one_run_with_glob_and_text_ms']:.2f} ms"
        )
    return {
        "single_append": latency,
        "concurrent": throughput,
        "replay": replay,
        "audit": audit,
        "build_events_per_s": {"one_stream": build, "many_runs": audit_build},
        "repeats": repeats,
    }


def main() -> None:
    """Print the figures, then one JSON line with all of them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    results = asyncio.run(run(args.repeats))
    print(json.dumps({"bench": "eventstore", **results}, sort_keys=True))


if __name__ == "__main__":
    main()
