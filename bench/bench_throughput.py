"""Sustained throughput benchmark (not a test): 8 agent processes kept busy with no-op
tasks for a while (real NATS, SQLite FULL). Several fan-out runs are in flight at once and
a new one starts as each ends; the figure is completed tasks per second over the window,
per repeat, and their median. Prints one JSON line at the end.

    python -m bench.bench_throughput [--seconds 10] [--repeats 3] [--runs 4] [--fan-out 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench._stack import agents_stack, timed_run
from bus import loop
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service.bootstrap import Stack


async def window(stack: Stack, workflow: WorkflowSpec, runs: int, seconds: float) -> float:
    """Tasks per second completed by `runs` concurrent run loops over `seconds`."""
    tasks_per_run = len(workflow.steps) * (workflow.steps[0].fan_out or 1)
    done = 0
    started = time.perf_counter()
    deadline = started + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await timed_run(stack, workflow)
            done += tasks_per_run

    await asyncio.gather(*(loop() for _ in range(runs)))
    return done / (time.perf_counter() - started)


async def measure(args: argparse.Namespace, directory: Path) -> dict[str, float | int]:
    workflow = WorkflowSpec(
        name="load", steps=[StepSpec(id="t", role="noop", fan_out=args.fan_out)]
    )
    rates: list[float] = []
    async with agents_stack(directory, "noop", "agents.builtin:noop", args.agents, 64) as s:
        await timed_run(s, workflow)  # warm-up
        for _ in range(args.repeats):
            rates.append(await window(s, workflow, args.runs, args.seconds))
            print(f"  {rates[-1]:9,.0f} tasks/s over {args.seconds:.0f} s")
    return {
        "agents": args.agents,
        "concurrent_runs": args.runs,
        "fan_out": args.fan_out,
        "window_s": args.seconds,
        "tasks_per_s_median": round(statistics.median(rates)),
        "repeats": args.repeats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs", type=int, default=4, help="runs in flight at once")
    p.add_argument("--fan-out", type=int, default=2000, help="no-op tasks per run")
    p.add_argument("--agents", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        print(f"baton throughput benchmark: {args.agents} agent processes, real NATS, SQLite FULL")
        result = loop.run(measure(args, Path(tmp)))
    print(f"median: {result['tasks_per_s_median']:,} tasks/s sustained")
    print(json.dumps({"bench": "throughput", **result}))


if __name__ == "__main__":
    main()
