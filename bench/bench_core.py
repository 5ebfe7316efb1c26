"""Pure-core benchmark (not a test): what `decide` plus the shell's `fold` cost per report
in a fan-out of N tasks, with no I/O at all. This is the floor under the dispatch
benchmarks: the shell decides every report in turn, and today each decision copies and
scans the run's task table, so the cost per report grows with the run's size.

    python -m bench.bench_core [--sizes 100,1000,2000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time

from bus.protocol import TaskResult
from orchestrator.commands import AgentView, Context, ReportResult, StartRun
from orchestrator.decide import decide
from orchestrator.state import RunState, fold
from orchestrator.workflow import StepSpec, WorkflowSpec


def per_report(n: int) -> tuple[float, float]:
    """(µs per report in total, of which µs in `decide`) over one fan-out of `n`."""
    workflow = WorkflowSpec(name="wide", steps=[StepSpec(id="t", role="r", fan_out=n)])
    tokens = itertools.count()
    rng = random.Random(1)
    agents = [AgentView(f"agent-{i}", "r", n, 0) for i in range(4)]
    ctx = Context(0.0, 0.0, agents, lambda: f"L{next(tokens)}", rng.random)
    state = RunState("wide")
    state = fold(state, decide(state, StartRun("wide", workflow, {}, "0" * 32, "bench"), ctx))
    running = list(state.tasks.values())
    in_decide = 0.0
    started = time.perf_counter()
    for task in running:
        result = TaskResult("wide", task.task_id, 1, task.lease_token, task.agent_id, {}, 0.0)
        before = time.perf_counter()
        events = decide(state, ReportResult(result, task.agent_id), ctx)
        in_decide += time.perf_counter() - before
        state = fold(state, events)
    took = time.perf_counter() - started
    if state.status != "completed":
        raise SystemExit(f"fan-out of {n} ended {state.status}")
    return took / n * 1e6, in_decide / n * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--sizes", default="100,1000,2000")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    print("baton core benchmark: decide + fold per report, no I/O")
    result: dict[str, float] = {}
    for n in (int(s) for s in args.sizes.split(",")):
        runs = [per_report(n) for _ in range(args.repeats)]
        total = statistics.median(r[0] for r in runs)
        in_decide = statistics.median(r[1] for r in runs)
        print(f"  fan-out {n:>6}: {total:7.1f} µs/report ({in_decide:.1f} in decide)")
        result[f"us_per_report_{n}"] = round(total, 1)
    print(json.dumps({"bench": "core", **result, "repeats": args.repeats}))


if __name__ == "__main__":
    main()
