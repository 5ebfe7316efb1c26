"""Many small runs against one big one (not a test): issue 18's "50 concurrent runs of 100
no-op tasks with 8 agents reach at least 80 % of the tasks/s of one 5,000-task run".

One stack (embedded nats-server, SQLite FULL, 8 agent processes), rounds alternating which
side goes first: one run fanning out to 5,000 no-op tasks, then 50 runs of 100 started at
once; each side's figure is tasks completed per second from asking to the last run's end.
Prints each round, the medians, the median of the per-round ratios (many / one) and a JSON
line.

    python -m bench.bench_many_runs [--rounds 5] [--runs 50] [--tasks 100] [--agents 8]
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


def fan_out(tasks: int) -> WorkflowSpec:
    return WorkflowSpec(name="load", steps=[StepSpec(id="t", role="noop", fan_out=tasks)])


async def one_run(stack: Stack, tasks: int) -> float:
    return tasks / await timed_run(stack, fan_out(tasks))


async def many_runs(stack: Stack, runs: int, tasks: int) -> float:
    started = time.perf_counter()
    await asyncio.gather(*(timed_run(stack, fan_out(tasks)) for _ in range(runs)))
    return runs * tasks / (time.perf_counter() - started)


async def measure(args: argparse.Namespace, directory: Path) -> dict[str, object]:
    total = args.runs * args.tasks
    one: list[float] = []
    many: list[float] = []
    async with agents_stack(directory, "noop", "agents.builtin:noop", args.agents, 64) as s:
        await one_run(s, 500)  # warm-up: agents, connections, the log's pages
        await many_runs(s, 5, 100)
        for i in range(args.rounds):
            sides = [("one", one), ("many", many)]
            for name, figures in sides if i % 2 == 0 else reversed(sides):
                rate = (
                    await one_run(s, total)
                    if name == "one"
                    else await many_runs(s, args.runs, args.tasks)
                )
                figures.append(rate)
            print(
                f"  round {i + 1}: one run of {total:,}: {one[-1]:8,.0f} tasks/s   "
                f"{args.runs} runs of {args.tasks}: {many[-1]:8,.0f} tasks/s   "
                f"ratio {many[-1] / one[-1]:.2f}"
            )
    ratios = [m / o for m, o in zip(many, one, strict=True)]
    return {
        "agents": args.agents,
        "runs": args.runs,
        "tasks_per_run": args.tasks,
        "rounds": args.rounds,
        "one_run_tasks_per_s_median": round(statistics.median(one)),
        "many_runs_tasks_per_s_median": round(statistics.median(many)),
        "ratio_median": round(statistics.median(ratios), 3),
        "ratio_min": round(min(ratios), 3),
        "ratio_max": round(max(ratios), 3),
        "target_ratio": 0.8,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=50, help="small runs started at once")
    p.add_argument("--tasks", type=int, default=100, help="no-op tasks per small run")
    p.add_argument("--agents", type=int, default=8)
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        print(f"baton many-runs benchmark: {args.agents} agent processes, real NATS, SQLite FULL")
        result = loop.run(measure(args, Path(tmp)))
    print(
        f"median: one run {result['one_run_tasks_per_s_median']:,} tasks/s, "
        f"{args.runs} runs {result['many_runs_tasks_per_s_median']:,} tasks/s, "
        f"ratio {result['ratio_median']} (range {result['ratio_min']}-{result['ratio_max']}; "
        "target >= 0.8)"
    )
    print(json.dumps({"bench": "many_runs", **result}))


if __name__ == "__main__":
    main()
