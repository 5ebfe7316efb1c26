"""JetStream event-store backend append rate (not a test): a fresh embedded nats-server
with `sync_interval: always`, one appender, single appends and batches of 100, median of
3 runs each. Prints figures and one JSON line.

    python -m bench.bench_eventstore_jetstream
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import nats

from bus.server import EmbeddedNats
from eventstore import JetStreamEventStore, NewEvent


def _event(event_id: str) -> NewEvent:
    return NewEvent(event_id=event_id, type="bench.event", data=b"x" * 200)


async def measure(url: str, rounds: int = 3) -> dict[str, float]:
    rates: dict[str, list[float]] = {"single": [], "batch100": []}
    for r in range(rounds):
        nc = await nats.connect(url)
        store = await JetStreamEventStore.open(nc, f"BENCH{r}", subject_prefix=f"bench{r}")
        try:
            start = time.perf_counter()
            for n in range(500):
                await store.append("single", [_event(f"s{n}")], n)
            rates["single"].append(500 / (time.perf_counter() - start))
            start = time.perf_counter()
            for b in range(50):
                await store.append("batch", [_event(f"b{b}-{i}") for i in range(100)], 100 * b)
            rates["batch100"].append(5000 / (time.perf_counter() - start))
        finally:
            await store.close()
            await nc.close()
    return {name: statistics.median(values) for name, values in rates.items()}


async def _main(repeats: int) -> None:
    with tempfile.TemporaryDirectory(prefix="baton-js-bench-") as directory:
        server = EmbeddedNats(Path(directory))
        url = await server.start()
        try:
            rates = await measure(url, repeats)
        finally:
            server.stop()
    for name, rate in rates.items():
        print(f"jetstream append {name:>8}: {rate:10,.0f} events/s (median of {repeats})")
    print(json.dumps({"bench": "eventstore_jetstream", **{k: round(v) for k, v in rates.items()}}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="JetStream event-store append rate.")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each (median)")
    asyncio.run(_main(parser.parse_args().repeats))
