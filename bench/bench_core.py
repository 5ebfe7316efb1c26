"""Pure-core benchmark (not a test): what deciding and folding cost per report in a
fan-out of N tasks, with no I/O at all: the floor under the dispatch benchmarks. Each
decision works on one copy of the run, so a report decided alone pays for copying the
run's task table (its cost grows with the run's size), while the shell decides the
reports that arrive together as one batch into one copy (`decide_into`, a `Folding`).
Both are measured: one report per decision, and `--batch` reports per decision.

    python -m bench.bench_core [--sizes 100,1000,2000] [--repeats 5] [--capacity 64]
                               [--batch 16]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time
from collections import deque

from bus.protocol import TaskResult
from orchestrator.core.commands import AgentView, Context, ReportResult, StartRun
from orchestrator.core.decide import decide_into, load_delta
from orchestrator.core.events import TaskAssigned
from orchestrator.core.state import Folding, RunState
from orchestrator.core.workflow import StepSpec, WorkflowSpec


def per_report(n: int, capacity: int, batch: int) -> float:
    """µs per report over one fan-out of `n` on four agents of `capacity`, reports decided
    `batch` at a time into one copy of the run: each frees a slot the decision fills."""
    workflow = WorkflowSpec(name="wide", steps=[StepSpec(id="t", role="r", fan_out=n)])
    tokens = itertools.count()
    rng = random.Random(1)
    names = [f"agent-{i}" for i in range(4)]
    loads: dict[str, int] = {}

    def ctx() -> Context:
        agents = [AgentView(a, "r", capacity, loads.get(a, 0)) for a in names]
        return Context(0.0, 0.0, agents, lambda: f"L{next(tokens)}", rng.random)

    folding = Folding(RunState("wide"))
    first = decide_into(folding, StartRun("wide", workflow, {}, "0" * 32, "bench"), ctx())
    state = folding.state
    load_delta(first, loads)
    running = deque(e for e in first if isinstance(e, TaskAssigned))
    started = time.perf_counter()
    while running:
        folding = Folding(state)
        for _ in range(min(batch, len(running))):
            a = running.popleft()
            result = TaskResult("wide", a.task_id, a.attempt, a.lease_token, a.agent_id, {}, 0.0)
            events = decide_into(folding, ReportResult(result, a.agent_id), ctx())
            load_delta(events, loads)
            running.extend(e for e in events if isinstance(e, TaskAssigned))
        state = folding.state
    took = time.perf_counter() - started
    if state.status != "completed":
        raise SystemExit(f"fan-out of {n} ended {state.status}")
    return took / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", default="100,1000,2000")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--capacity", type=int, default=64, help="per agent (4 agents)")
    p.add_argument("--batch", type=int, default=16, help="reports decided together")
    args = p.parse_args()
    print("baton core benchmark: deciding and folding per report, no I/O")
    result: dict[str, float] = {}
    for n in (int(s) for s in args.sizes.split(",")):
        for batch in (1, args.batch):
            took = statistics.median(
                per_report(n, args.capacity, batch) for _ in range(args.repeats)
            )
            print(f"  fan-out {n:>6}, {batch:>3} report(s) per decision: {took:7.1f} µs/report")
            result[f"us_per_report_{n}_batch_{batch}"] = round(took, 1)
    print(json.dumps({"bench": "core", **result, "repeats": args.repeats}))


if __name__ == "__main__":
    main()
