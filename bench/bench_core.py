"""Pure-core benchmark (not a test): what `decide` plus the shell's `fold` cost per report
in a fan-out of N tasks, with no I/O at all. This is the floor under the dispatch
benchmarks: the shell decides every report in turn, and today each decision copies and
scans the run's task table, so the cost per report grows with the run's size.

    python -m bench.bench_core [--sizes 100,1000,2000] [--repeats 5] [--capacity 64]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time
from collections import Counter, deque

from bus.protocol import TaskResult
from orchestrator.commands import AgentView, Context, ReportResult, StartRun
from orchestrator.decide import decide, load_delta
from orchestrator.events import TaskAssigned
from orchestrator.state import RunState, fold
from orchestrator.workflow import StepSpec, WorkflowSpec


def per_report(n: int, capacity: int) -> tuple[float, float]:
    """(µs per report in total, of which µs in `decide`) over one fan-out of `n` on four
    agents of `capacity`: each report frees a slot, which the same decision fills."""
    workflow = WorkflowSpec(name="wide", steps=[StepSpec(id="t", role="r", fan_out=n)])
    tokens = itertools.count()
    rng = random.Random(1)
    names = [f"agent-{i}" for i in range(4)]
    loads: Counter[str] = Counter()

    def ctx() -> Context:
        agents = [AgentView(a, "r", capacity, loads[a]) for a in names]
        return Context(0.0, 0.0, agents, lambda: f"L{next(tokens)}", rng.random)

    state = RunState("wide")
    first = decide(state, StartRun("wide", workflow, {}, "0" * 32, "bench"), ctx())
    state = fold(state, first)
    loads.update(load_delta(first))
    running = deque(e for e in first if isinstance(e, TaskAssigned))
    in_decide = 0.0
    started = time.perf_counter()
    while running:
        a = running.popleft()
        result = TaskResult("wide", a.task_id, a.attempt, a.lease_token, a.agent_id, {}, 0.0)
        command = ReportResult(result, a.agent_id)
        context = ctx()
        before = time.perf_counter()
        events = decide(state, command, context)
        in_decide += time.perf_counter() - before
        state = fold(state, events)
        loads.update(load_delta(events))
        running.extend(e for e in events if isinstance(e, TaskAssigned))
    took = time.perf_counter() - started
    if state.status != "completed":
        raise SystemExit(f"fan-out of {n} ended {state.status}")
    return took / n * 1e6, in_decide / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", default="100,1000,2000")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--capacity", type=int, default=64, help="per agent (4 agents)")
    args = p.parse_args()
    print("baton core benchmark: decide + fold per report, no I/O")
    result: dict[str, float] = {}
    for n in (int(s) for s in args.sizes.split(",")):
        runs = [per_report(n, args.capacity) for _ in range(args.repeats)]
        total = statistics.median(r[0] for r in runs)
        in_decide = statistics.median(r[1] for r in runs)
        print(f"  fan-out {n:>6}: {total:7.1f} µs/report ({in_decide:.1f} in decide)")
        result[f"us_per_report_{n}"] = round(total, 1)
    print(json.dumps({"bench": "core", **result, "repeats": args.repeats}))


if __name__ == "__main__":
    main()
