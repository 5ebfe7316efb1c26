"""Agent process benchmark (not a test): how fast one agent process starts and how much
it holds, and how many no-op tasks one agent sustains at its concurrency limit.

Cold start: from spawning `python -m agents` (under a role contract) to its first
heartbeat on a real nats-server, and its RSS then. Throughput: assignments sent straight to
one agent (request/reply, as the orchestrator does) with at most `capacity` outstanding,
until every result has come back on the agent's report subject and been answered as the
orchestrator answers it once durable; no orchestrator or store, so this is the agent's own
ceiling. Prints medians and one JSON line.

    python -m bench.bench_agent [--repeats 5] [--tasks 2000] [--capacity 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bus import loop, subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming
from bus.protocol import Assignment, InboxMessage, ReportAck, ReportBatch
from bus.server import EmbeddedNats, die_with_parent

ROLES = """
[[roles]]
name = "noop"
concurrency = {capacity}
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def spawn(agent_id: str, url: str, roles: Path, capacity: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "agents", "--role", "noop", "--id", agent_id,
        "--handler", "agents.builtin:noop", "--contracts", str(roles),
        "--capacity", str(capacity), "--heartbeat", "0.2",
    ]  # fmt: skip
    return subprocess.Popen(
        command,
        env={**os.environ, "BATON_NATS_URL": url},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=die_with_parent,
    )


async def first_heartbeat(bus: Bus, agent_id: str) -> asyncio.Event:
    seen = asyncio.Event()

    async def on_beat(msg: Incoming) -> None:
        seen.set()

    await bus.subscribe(subjects.heartbeat(agent_id), on_beat)
    await bus.flush()
    return seen


async def cold_start(bus: Bus, url: str, roles: Path, n: int) -> tuple[float, float]:
    seen = await first_heartbeat(bus, f"cold-{n}")
    started = time.perf_counter()
    process = spawn(f"cold-{n}", url, roles, 4)
    try:
        async with asyncio.timeout(60):
            await seen.wait()
        took = time.perf_counter() - started
        return took, rss_mb(process.pid)
    finally:
        process.terminate()
        process.wait(10)


async def throughput(bus: Bus, url: str, roles: Path, n: int, tasks: int, capacity: int) -> float:
    agent_id = f"busy-{n}"
    seen = await first_heartbeat(bus, agent_id)
    process = spawn(agent_id, url, roles, capacity)
    try:
        async with asyncio.timeout(60):
            await seen.wait()
        slots = asyncio.Semaphore(capacity)
        done = 0
        all_done = asyncio.Event()
        reports: Decoder[InboxMessage] = Decoder(InboxMessage)
        acked = encode(ReportAck())

        async def on_report(msg: Incoming) -> None:
            nonlocal done
            decoded = reports.decode(msg.data)
            count = len(decoded.reports) if isinstance(decoded, ReportBatch) else 1
            await msg.reply(acked)
            done += count
            for _ in range(count):
                slots.release()
            if done >= tasks:
                all_done.set()

        run_id = f"bench{n}"
        await bus.subscribe(subjects.report(run_id, agent_id), on_report)
        await bus.flush()
        started = time.perf_counter()
        for i in range(tasks):
            await slots.acquire()
            a = Assignment(run_id, f"t{i}", 1, "lease", "s", "noop", {}, 30.0)
            await bus.request(subjects.assign(agent_id), encode(a), 10.0)
        async with asyncio.timeout(300):
            await all_done.wait()
        return tasks / (time.perf_counter() - started)
    finally:
        process.terminate()
        process.wait(10)


async def measure(args: argparse.Namespace, directory: Path) -> dict[str, float | int]:
    roles = directory / "roles.toml"
    roles.write_text(ROLES.format(capacity=args.capacity))
    server = EmbeddedNats(directory)
    url = await server.start()
    bus = await Bus.connect(url, name="bench")
    try:
        await bus.ensure_inbox()
        starts, rss, rates = [], [], []
        for n in range(args.repeats):
            took, mb = await cold_start(bus, url, roles, n)
            starts.append(took)
            rss.append(mb)
            print(f"  cold start {took * 1000:7.1f} ms   RSS {mb:6.1f} MB")
        for n in range(args.repeats):
            rate = await throughput(bus, url, roles, n, args.tasks, args.capacity)
            rates.append(rate)
            print(f"  {args.tasks} no-op tasks at capacity {args.capacity}: {rate:8.0f} tasks/s")
    finally:
        await bus.close()
        server.stop()
    return {
        "cold_start_ms_median": round(statistics.median(starts) * 1000, 1),
        "rss_mb_median": round(statistics.median(rss), 1),
        "tasks_per_s_median": round(statistics.median(rates)),
        "tasks": args.tasks,
        "capacity": args.capacity,
        "repeats": args.repeats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--tasks", type=int, default=2000)
    p.add_argument("--capacity", type=int, default=64)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        print("baton agent benchmark: one agent process, real NATS + JetStream inbox")
        result = loop.run(measure(args, Path(tmp)))
    print(
        f"median: cold start {result['cold_start_ms_median']} ms, RSS {result['rss_mb_median']} "
        f"MB, {result['tasks_per_s_median']} tasks/s at capacity {result['capacity']}"
    )
    print(json.dumps({"bench": "agent", **result}))


if __name__ == "__main__":
    main()
