"""Baton against its floor (not a test): four workloads on raw nats-py request/reply
between processes (no orchestration, nothing durable: the floor) and on Baton (the
orchestrator, real agent processes, the SQLite log with `synchronous=FULL`), in one
interleaved run: every round runs each workload on each side, the order rotated from round
to round, so a busy moment of a shared machine lands on every side alike.

- fan-out: `--fan-out` no-op tasks at once, per task;
- chain: `--chain` no-op steps, each after the one before, per step;
- parallel: `--slow` tasks of `--slow-s` at once, the whole run;
- sequence: `--slow` tasks of `--slow-s` one after another, overhead per step (the run's
  time less the tasks' own, over the steps).

Both have `--workers` worker processes on uvloop that run the same handler (an
`asyncio.sleep` of the task's seconds, 0 for a no-op) and exchange messages of the same
size (those of a Baton assignment and result). Both are warmed up first. Prints each
workload's medians, the medians of the per-round ratios to the floor, and one JSON line.

A third side, the durable floor, is the floor plus the one thing append-before-act asks of
any durable orchestrator: each decision committed (SQLite, WAL, `synchronous=FULL`) before
the message it leads to leaves. A chain step commits its result and the next assignment
(two rows of their sizes), then asks; a fan-out commits every assignment, asks them all,
then commits every result. The commit runs inline on the asking loop: no thread hop, no
decoding, deciding or hashing. No step made durable by such a commit can cost less on the
machine at hand, so its ratio to the floor is the least a target can ask. (It commits to
SQLite whichever store Baton uses.)

Each round also times a durable commit alone (two rows of a step's size), back to back and
after `--slow-s` idle, so the part of a slow step's overhead that is the disk waking up
shows on the machine at hand.

`--store jetstream` puts Baton's log in JetStream instead (one replica, `sync_interval:
always`, on a nats-server of its own; the orchestrator shares the runs by partition, as
`baton serve` does on JetStream), for its figures next to SQLite's.

    python -m bench.compare [--rounds 10] [--store jetstream]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from bench._stack import agents_stack, timed_run
from bus import loop
from bus.codec import encode
from bus.protocol import Assignment, TaskResult
from bus.server import EmbeddedNats
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service.bootstrap import Stack

SUBJECT = "floor.work"
_SECONDS = struct.Struct("<d")


def _sizes() -> tuple[int, int]:
    """Bytes of a typical Baton assignment and of its result, as encoded on the wire."""
    run_id, task_id, token = "run-" + "0" * 26, "s123", "f" * 32
    assignment = Assignment(run_id, task_id, 1, token, "s123", "worker",
                            {"params": {"seconds": 0.0}, "deps": {"s122": {"task": "s122"}}},
                            60.0, "00-" + "0" * 32 + "-" + "0" * 16 + "-01", "0" * 16)  # fmt: skip
    result = TaskResult(run_id, task_id, 1, token, "worker-1-abcd", {"task": task_id}, 1e-5)
    return len(encode(assignment)), len(encode(result))


REQUEST_BYTES, REPLY_BYTES = _sizes()


# -- the floor: raw nats-py request/reply --------------------------------------------------


async def _worker(url: str) -> None:
    """A floor worker process: answers each request after sleeping its seconds."""
    nc = await nats.connect(url)
    reply = b"r" * REPLY_BYTES
    tasks: set[asyncio.Task[None]] = set()

    async def work(msg: Msg) -> None:
        await asyncio.sleep(_SECONDS.unpack_from(msg.data)[0])
        await msg.respond(reply)

    async def take(msg: Msg) -> None:  # one task per request, as an agent runs them
        task = asyncio.create_task(work(msg))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    await nc.subscribe(SUBJECT, queue="workers", cb=take)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()


def _request(seconds: float) -> bytes:
    return _SECONDS.pack(seconds) + b"a" * (REQUEST_BYTES - _SECONDS.size)


class Floor:
    """The floor's side of each workload: the bench process asks, the workers answer."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc

    async def parallel(self, n: int, seconds: float) -> float:
        data = _request(seconds)
        started = time.perf_counter()
        await asyncio.gather(*(self.nc.request(SUBJECT, data, timeout=60) for _ in range(n)))
        return time.perf_counter() - started

    async def sequence(self, n: int, seconds: float) -> float:
        data = _request(seconds)
        started = time.perf_counter()
        for _ in range(n):
            await self.nc.request(SUBJECT, data, timeout=60)
        return time.perf_counter() - started


def _log(path: Path) -> sqlite3.Connection:
    """A table on SQLite, WAL, `synchronous=FULL`: what Baton's log commits to."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, data BLOB)")
    return conn


def _commit(conn: sqlite3.Connection, rows: list[tuple[bytes]]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany("INSERT INTO t (data) VALUES (?)", rows)
    conn.execute("COMMIT")


class DurableFloor(Floor):
    """The floor with each decision committed before the message it leads to leaves (see
    the module docstring)."""

    def __init__(self, nc: Client, path: Path) -> None:
        super().__init__(nc)
        self.conn = _log(path)
        self.assignment = [(os.urandom(REQUEST_BYTES),)]
        self.result = [(os.urandom(REPLY_BYTES),)]

    async def parallel(self, n: int, seconds: float) -> float:
        data = _request(seconds)
        started = time.perf_counter()
        _commit(self.conn, self.assignment * n)
        await asyncio.gather(*(self.nc.request(SUBJECT, data, timeout=60) for _ in range(n)))
        _commit(self.conn, self.result * n)
        return time.perf_counter() - started

    async def sequence(self, n: int, seconds: float) -> float:
        data = _request(seconds)
        step = self.result + self.assignment
        started = time.perf_counter()
        for _ in range(n):
            _commit(self.conn, step)
            await self.nc.request(SUBJECT, data, timeout=60)
        return time.perf_counter() - started

    def close(self) -> None:
        self.conn.close()


# -- Baton ---------------------------------------------------------------------------------


def _fan_out(n: int, seconds: float) -> WorkflowSpec:
    step = StepSpec(id="t", role="worker", fan_out=n, params={"seconds": seconds})
    return WorkflowSpec(name="fan-out", steps=[step])


def _chain(n: int, seconds: float) -> WorkflowSpec:
    params = {"seconds": seconds}
    steps = [StepSpec(id="s0", role="worker", params=params)]
    steps += [
        StepSpec(id=f"s{i}", role="worker", needs=[f"s{i - 1}"], params=params) for i in range(1, n)
    ]
    return WorkflowSpec(name="chain", steps=steps)


class Baton:
    """Baton's side: one run of a workflow, timed from asking for it to its end."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    async def parallel(self, n: int, seconds: float) -> float:
        return await timed_run(self.stack, _fan_out(n, seconds))

    async def sequence(self, n: int, seconds: float) -> float:
        return await timed_run(self.stack, _chain(n, seconds))


# -- the run -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    name: str
    label: str
    unit: str
    measure: Callable[[Floor | Baton], Awaitable[float]]
    figure: Callable[[float], float]
    """The reported figure of a run that took this many seconds."""


def workloads(args: argparse.Namespace) -> list[Workload]:
    n, m, k, s = args.fan_out, args.chain, args.slow, args.slow_s
    return [
        Workload("fan_out", f"fan-out of {n:,} no-op tasks, per task", "µs",
                 lambda side: side.parallel(n, 0.0), lambda t: t / n * 1e6),
        Workload("chain", f"chain of {m} no-op steps, per step", "µs",
                 lambda side: side.sequence(m, 0.0), lambda t: t / m * 1e6),
        Workload("parallel", f"{k} x {s * 1000:.0f} ms tasks in parallel", "ms",
                 lambda side: side.parallel(k, s), lambda t: t * 1e3),
        Workload("sequence", f"{k} x {s * 1000:.0f} ms in sequence, overhead per step", "ms",
                 lambda side: side.sequence(k, s), lambda t: (t - k * s) / k * 1e3),
    ]  # fmt: skip


def _start_workers(url: str, count: int) -> list[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "bench.compare", "--floor-worker", url]
    workers = [subprocess.Popen(command, stdout=subprocess.PIPE, env=env) for _ in range(count)]
    for worker in workers:
        assert worker.stdout is not None
        if worker.stdout.readline().strip() != b"ready":
            raise SystemExit("a floor worker did not start")
    return workers


Figures = dict[str, dict[str, list[float]]]
"""Per workload, per side ("floor", "durable", "baton") and per ratio to the floor
("ratio": Baton's, "durable_ratio"), one figure per round; and for "commit", the median
commit of each round "back_to_back" and "after_idle" (µs)."""

SIDES = ("floor", "durable", "baton")


def commit_probe(path: Path, idle_s: float, back_to_back: int = 50, idle: int = 5) -> list[float]:
    """Median µs of a durable commit of two step-sized rows: back to back, after idle."""
    conn = _log(path)
    rows = [(os.urandom(REQUEST_BYTES + REPLY_BYTES),)] * 2
    figures = []
    try:
        for count, pause in ((back_to_back, 0.0), (idle, idle_s)):
            took = []
            for _ in range(count):
                time.sleep(pause)
                began = time.perf_counter_ns()
                _commit(conn, rows)
                took.append(time.perf_counter_ns() - began)
            figures.append(statistics.median(took) / 1000)
    finally:
        conn.close()
    return figures


async def compare(args: argparse.Namespace, directory: Path) -> Figures:
    server = EmbeddedNats(directory / "floor-nats")
    url = await server.start()
    workers = _start_workers(url, args.workers)
    nc = await nats.connect(url)
    todo = workloads(args)
    figures: Figures = {w.name: {k: [] for k in (*SIDES, "ratio", "durable_ratio")} for w in todo}
    figures["commit"] = {"back_to_back": [], "after_idle": []}
    durable = DurableFloor(nc, directory / "durable-floor.db")
    try:
        async with agents_stack(
            directory / "baton", "worker", "agents.builtin:sleep", args.workers, 64, args.store
        ) as stack:
            sides: dict[str, Floor | Baton] = {
                "floor": Floor(nc), "durable": durable, "baton": Baton(stack)
            }  # fmt: skip
            for w in todo:  # warm-up: connections, first-use imports, caches
                for side in sides.values():
                    await w.measure(side)
            for r in range(args.rounds):
                order = todo[r % len(todo) :] + todo[: r % len(todo)]
                names = SIDES[r % len(SIDES) :] + SIDES[: r % len(SIDES)]
                for w in order:
                    got = {name: w.figure(await w.measure(sides[name])) for name in names}
                    for name, value in got.items():
                        figures[w.name][name].append(value)
                    figures[w.name]["ratio"].append(got["baton"] / got["floor"])
                    figures[w.name]["durable_ratio"].append(got["durable"] / got["floor"])
                probe = directory / "commit.db"
                busy, idle = await asyncio.to_thread(commit_probe, probe, args.slow_s)
                figures["commit"]["back_to_back"].append(busy)
                figures["commit"]["after_idle"].append(idle)
                ratios = [f"{w.name} {figures[w.name]['ratio'][-1]:.2f}x" for w in todo]
                print(f"  round {r + 1}/{args.rounds}: {', '.join(ratios)}", flush=True)
    finally:
        durable.close()
        await nc.close()
        for worker in workers:
            worker.kill()
            worker.wait()
        server.stop()
    return figures


def _fmt(value: float, unit: str) -> str:
    return f"{value:,.1f} {unit}" if unit == "ms" or value < 100 else f"{value:,.0f} {unit}"


def _spread(ratios: list[float]) -> str:
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--fan-out", type=int, default=1000)
    p.add_argument("--chain", type=int, default=200)
    p.add_argument("--slow", type=int, default=20, help="tasks of the two slow workloads")
    p.add_argument("--slow-s", type=float, default=0.1, help="seconds each slow task takes")
    p.add_argument("--workers", type=int, default=4, help="worker (agent) processes per side")
    p.add_argument("--store", choices=("sqlite", "jetstream"), default="sqlite",
                   help="Baton's log: SQLite FULL, or JetStream (sync_interval always, one "
                        "replica, on a nats-server of its own)")  # fmt: skip
    p.add_argument("--floor-worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.floor_worker:
        loop.run(_worker(args.floor_worker))
        return
    os.environ.setdefault("BATON_TELEMETRY", "off")  # as `baton run` with no exporter
    load_before = os.getloadavg()
    on = "SQLite FULL" if args.store == "sqlite" else "JetStream (sync always, 1 replica)"
    print(f"baton vs raw nats-py: {args.workers} worker processes a side, uvloop, Baton on "
          f"{on}; {args.rounds} rounds; messages {REQUEST_BYTES} B / {REPLY_BYTES} B; "
          f"load average {load_before[0]:.2f}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="baton-compare-") as tmp:
        figures = loop.run(compare(args, Path(tmp)))
    result: dict[str, object] = {}
    print("\n| workload | raw NATS (floor) | durable floor | Baton | durable floor / floor "
          "| Baton / floor (median of rounds) |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- |")
    for w in workloads(args):
        f = figures[w.name]
        medians = {side: statistics.median(f[side]) for side in SIDES}
        ratio, least = statistics.median(f["ratio"]), statistics.median(f["durable_ratio"])
        print(f"| {w.label} | {' | '.join(_fmt(medians[s], w.unit) for s in SIDES)} | "
              f"{least:.2f}x ({_spread(f['durable_ratio'])}) | "
              f"{ratio:.2f}x ({_spread(f['ratio'])}) |")  # fmt: skip
        result[w.name] = {
            "unit": w.unit,
            **{f"{side}_median": round(medians[side], 2) for side in SIDES},
            "ratio_median": round(ratio, 3),
            "ratios": [round(x, 3) for x in f["ratio"]],
            "durable_ratio_median": round(least, 3),
            "durable_ratios": [round(x, 3) for x in f["durable_ratio"]],
        }
    commit = {k: round(statistics.median(v), 1) for k, v in figures["commit"].items()}
    idle_ms = args.slow_s * 1000
    print(f"\ndurable commit (SQLite FULL), median: {commit['back_to_back']:,.0f} µs back to "
          f"back, {commit['after_idle']:,.0f} µs after {idle_ms:.0f} ms idle")  # fmt: skip
    load_after = os.getloadavg()
    print(json.dumps({"bench": "compare", "store": args.store, "rounds": args.rounds,
                      "workers": args.workers,
                      "load_before": round(load_before[0], 2),
                      "load_after": round(load_after[0], 2), **result,
                      "sqlite_commit_us": commit}))  # fmt: skip


if __name__ == "__main__":
    main()
