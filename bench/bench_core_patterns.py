"""Pure-core benchmark (not a test): `decide` + `fold` per task, no I/O, for a plain
fan-out and chain and for the coordination patterns (a group chat's turns, a loop's
rounds, a budgeted fan-out that reserves and charges tokens). It shows what the core
itself costs per task, apart from the bus and the store. Prints medians and a JSON line.

    python -m bench.bench_core_patterns [--repeats 5]
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import statistics
import time

from bus.protocol import TaskResult, Usage
from orchestrator.core.commands import AgentView, Context, ReportResult, StartRun, Tick
from orchestrator.core.decide import decide
from orchestrator.core.state import RunState, fold
from orchestrator.core.workflow import Chat, Limits, Loop, StepSpec, WorkflowSpec

LOOP_ROUNDS = 200
LOOP = Loop(back_to="w", until="ok", max_rounds=LOOP_ROUNDS)


def _workloads() -> dict[str, WorkflowSpec]:
    chain = [StepSpec(id="s0", role="r")]
    chain += [StepSpec(id=f"s{i}", role="r", needs=[f"s{i - 1}"]) for i in range(1, 200)]
    return {
        "fan_out_1000": WorkflowSpec(name="f", steps=[StepSpec(id="t", role="r", fan_out=1000)]),
        "chain_200": WorkflowSpec(name="c", steps=chain),
        "chat_200_turns": WorkflowSpec(
            name="chat", steps=[StepSpec(id="c", chat=Chat(participants=["r"], max_turns=200))]
        ),
        "loop_200_rounds": WorkflowSpec(
            name="loop",
            steps=[
                StepSpec(
                    id="w", role="r", loop=Loop(back_to="w", until="ok", max_rounds=LOOP_ROUNDS)
                )
            ],
        ),
        "budgeted_fan_out_1000": WorkflowSpec(
            name="b",
            steps=[StepSpec(id="t", role="r", fan_out=1000, tokens=10)],
            limits=Limits(tokens=10**9),
        ),
    }


def per_task_us(workflow: WorkflowSpec) -> float:
    """Drive a run to its end through the pure core, answering every attempt."""
    agents = [AgentView(f"a{i}", "r", 64, 0) for i in range(4)]
    tokens = itertools.count()
    rng = random.Random(1)

    def ctx() -> Context:
        return Context(1.0, 1.0, agents, lambda: f"L{next(tokens)}", rng.random)

    state = RunState("bench")
    done = 0
    began = time.perf_counter()
    state = fold(state, decide(state, StartRun("bench", workflow, {}, "t", "bench"), ctx()))
    while state.status == "running":
        running = [t for t in state.tasks.values() if t.status == "running"]
        if not running:
            state = fold(state, decide(state, Tick(), ctx()))
            continue
        for t in running[:64]:
            output = {"ok": state.graph[t.task_id].round >= LOOP_ROUNDS}  # the loop's last
            result = TaskResult(
                "bench", t.task_id, t.attempt, t.lease_token, t.agent_id, output, 0.0, Usage(5)
            )
            state = fold(state, decide(state, ReportResult(result, t.agent_id), ctx()))
            done += 1
    assert state.status == "completed", state.reason
    return (time.perf_counter() - began) / done * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    medians: dict[str, float] = {}
    for name, workflow in _workloads().items():
        runs = [per_task_us(workflow) for _ in range(args.repeats)]
        medians[name] = round(statistics.median(runs), 1)
        print(f"  {name:<24} {medians[name]:8.1f} µs/task (median of {args.repeats})")
    print(json.dumps({"bench": "core_patterns", "us_per_task_median": medians}))


if __name__ == "__main__":
    main()
