"""How fast the SQLite event store is on this machine: durable single-append latency,
group-commit throughput under concurrent appenders, and replay (read + decode) rate.

Run: `PYTHONPATH=. python bench/bench_eventstore.py`. It prints figures, then one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec

from eventstore import NewEvent, SqliteEventStore

PAYLOAD = msgspec.msgpack.encode(
    {"task_id": "t-000123", "attempt": 1, "agent": "agent:writer", "note": "x" * 120}
)


def event(event_id: str) -> NewEvent:
    return NewEvent(
        event_id=event_id,
        type="task.progressed",
        data=PAYLOAD,
        correlation_id="run-1",
        actor="orchestrator",
        trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
        span_id="00f067aa0ba902b7",
    )


async def single_append_latency(directory: Path, count: int = 500) -> dict[str, float]:
    store = await SqliteEventStore.open(directory / "latency.db")
    try:
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
    directory: Path, writers: int = 8, batch: int = 100, seconds: float = 2.0
) -> dict[str, float]:
    store = await SqliteEventStore.open(directory / "throughput.db")
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
    return {
        "events_per_s": written / elapsed,
        "appends_per_s": appends / elapsed,
        "events": float(written),
    }


async def replay_rate(directory: Path, count: int = 100_000) -> dict[str, float]:
    store = await SqliteEventStore.open(directory / "replay.db")
    try:
        for start in range(0, count, 1_000):
            await store.append(
                "run-big", [event(f"r{n}") for n in range(start, start + 1_000)], start
            )
        decoder = msgspec.msgpack.Decoder(dict[str, Any])
        start_time = time.perf_counter()
        events = await store.read_stream("run-big")
        read_done = time.perf_counter()
        decoded = [decoder.decode(e.data) for e in events]
        end = time.perf_counter()
        assert len(decoded) == count
        verify_start = time.perf_counter()
        assert (await store.verify()).ok
        verify_end = time.perf_counter()
    finally:
        await store.close()
    return {
        "read_stream_events_per_s": count / (read_done - start_time),
        "read_and_decode_events_per_s": count / (end - start_time),
        "verify_events_per_s": count / (verify_end - verify_start),
    }


async def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as name:
        directory = Path(name)
        latency = await single_append_latency(directory)
        print(
            f"single append (durable): p50 {latency['p50_ms']:.2f} ms, "
            f"p99 {latency['p99_ms']:.2f} ms"
        )
        throughput = await concurrent_throughput(directory)
        print(
            f"8 appenders x 100-event batches: {throughput['events_per_s']:,.0f} events/s "
            f"({throughput['appends_per_s']:,.0f} appends/s, {throughput['events']:,.0f} events)"
        )
        replay = await replay_rate(directory)
        print(
            f"read_stream 100k: {replay['read_stream_events_per_s']:,.0f} events/s; "
            f"with msgpack decode: {replay['read_and_decode_events_per_s']:,.0f} events/s; "
            f"verify: {replay['verify_events_per_s']:,.0f} events/s"
        )
    return {"single_append": latency, "concurrent": throughput, "replay": replay}


def main() -> None:
    """Print the figures, then one JSON line with all of them."""
    results = asyncio.run(run())
    print(json.dumps({"bench": "eventstore", **results}, sort_keys=True))


if __name__ == "__main__":
    main()
