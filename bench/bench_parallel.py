"""Parallel latency benchmark (not a test): 20 tasks of 100 ms each, fanned out at once
to 4 agent processes (real NATS, SQLite FULL). Without latency compounding the run takes
100 ms plus the dispatch and recording overhead; prints the run's wall time (median of
several runs) and one JSON line.

    python -m bench.bench_parallel [--repeats 7] [--tasks 20] [--seconds 0.1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from bench._stack import agents_stack, timed_run
from bus import loop
from orchestrator.core.workflow import StepSpec, WorkflowSpec


async def measure(args: argparse.Namespace, directory: Path) -> dict[str, float | int]:
    workflow = WorkflowSpec(
        name="parallel",
        steps=[StepSpec(id="t", role="sleeper", fan_out=args.tasks,
                        params={"seconds": args.seconds})],
    )  # fmt: skip
    capacity = -(-args.tasks // args.agents)
    took: list[float] = []
    async with agents_stack(
        directory, "sleeper", "agents.builtin:sleep", args.agents, capacity
    ) as s:
        await timed_run(s, workflow)  # warm-up: connections, first-use imports
        for _ in range(args.repeats):
            took.append(await timed_run(s, workflow))
            print(f"  {args.tasks} x {args.seconds * 1000:.0f} ms: {took[-1] * 1000:7.1f} ms")
    return {
        "tasks": args.tasks,
        "task_ms": args.seconds * 1000,
        "agents": args.agents,
        "run_ms_median": round(statistics.median(took) * 1000, 1),
        "run_ms_min": round(min(took) * 1000, 1),
        "run_ms_max": round(max(took) * 1000, 1),
        "repeats": args.repeats,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--tasks", type=int, default=20)
    p.add_argument("--seconds", type=float, default=0.1)
    p.add_argument("--agents", type=int, default=4)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        print(f"baton parallel benchmark: {args.agents} agent processes, real NATS, SQLite FULL")
        result = loop.run(measure(args, Path(tmp)))
    print(f"median: {result['run_ms_median']} ms for {args.tasks} tasks of "
          f"{result['task_ms']:.0f} ms in parallel")  # fmt: skip
    print(json.dumps({"bench": "parallel", **result}))


if __name__ == "__main__":
    main()
