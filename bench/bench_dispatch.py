"""Dispatch benchmark (not a test): N no-op tasks through the full stack — embedded
nats-server with JetStream, 4 agent processes, the durable SQLite event store — as a
fan-out of 1,000 and as a sequential chain of 200. Prints medians and one JSON line.

    python -m bench.bench_dispatch [--repeats 5] [--fan-out 1000] [--chain 200]
                                   [--telemetry on|off|file]

`--telemetry` (for the orchestrator and the agent processes): `off` is no OpenTelemetry
SDK at all (no-op spans, what the default `auto` does with no exporter configured), `on`
the SDK's spans and metrics with no exporter (`BATON_TELEMETRY=on`), `file` also writes
every span to a JSON-lines file (the cost of exporting each span).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from bus import loop
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service.bootstrap import bootstrap
from orchestrator.service.launcher import AgentProcesses


def fan_out(n: int) -> WorkflowSpec:
    return WorkflowSpec(name="fan-out", steps=[StepSpec(id="t", role="noop", fan_out=n)])


def chain(n: int) -> WorkflowSpec:
    steps = [StepSpec(id="s0", role="noop")]
    steps += [StepSpec(id=f"s{i}", role="noop", needs=[f"s{i - 1}"]) for i in range(1, n)]
    return WorkflowSpec(name="chain", steps=steps)


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system) these processes have used, from /proc (Linux)."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


async def measure(args: argparse.Namespace, directory: Path) -> dict[str, float | int]:
    stack = await bootstrap(directory)
    agents = AgentProcesses(directory / "logs")
    spec = AgentSpec(
        role="noop", handler="agents.builtin:noop", count=args.agents, capacity=args.capacity
    )
    try:
        agents.start(spec, stack.nats_url, Path.cwd())
        await stack.orchestrator.wait_for_agents(AgentProcesses.roles([spec]), timeout=60)
        figures: dict[str, list[float]] = {"fan_out": [], "chain": [], "cpu": [], "agent_cpu": []}
        pids = [p.pid for p in agents.processes.values()]
        for _ in range(args.repeats):
            for kind, workflow, n in (
                ("fan_out", fan_out(args.fan_out), args.fan_out),
                ("chain", chain(args.chain), args.chain),
            ):
                started, cpu, agent_cpu = time.perf_counter(), time.process_time(), _cpu_s(pids)
                run_id = await stack.orchestrator.start_run(workflow, requested_by="bench")
                state = await stack.orchestrator.wait(run_id, timeout=600)
                took = time.perf_counter() - started
                if state.status != "completed":
                    raise SystemExit(f"{kind} run {run_id} ended {state.status}: {state.reason}")
                figures[kind].append(took / n * 1e6)
                if kind == "fan_out":  # CPU is less disturbed than wall time on a busy machine
                    figures["cpu"].append((time.process_time() - cpu) / n * 1e6)
                    figures["agent_cpu"].append((_cpu_s(pids) - agent_cpu) / n * 1e6)
                unit = "task" if kind == "fan_out" else "step"
                per = took / n * 1e6
                print(f"  {kind:<8} n={n:<5} {took * 1000:9.1f} ms  {per:8.1f} µs/{unit}")
    finally:
        agents.stop()
        await stack.close()
    return {
        "fan_out_tasks": args.fan_out,
        "fan_out_us_per_task_median": round(statistics.median(figures["fan_out"]), 1),
        "fan_out_orchestrator_cpu_us_per_task_median": round(statistics.median(figures["cpu"]), 1),
        "fan_out_agents_cpu_us_per_task_median": round(statistics.median(figures["agent_cpu"]), 1),
        "chain_steps": args.chain,
        "chain_us_per_step_median": round(statistics.median(figures["chain"]), 1),
        "agents": args.agents,
        "capacity": args.capacity,
        "repeats": args.repeats,
        "telemetry": args.telemetry,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--fan-out", type=int, default=1000)
    p.add_argument("--chain", type=int, default=200)
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--capacity", type=int, default=64, help="tasks each agent runs at once")
    p.add_argument("--telemetry", choices=["on", "off", "file"], default="off")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="baton-bench-") as tmp:
        # set before anything starts, so the agent processes inherit it too
        os.environ["BATON_TELEMETRY"] = "off" if args.telemetry == "off" else "on"
        if args.telemetry == "file":
            os.environ["BATON_TRACE_FILE"] = str(Path(tmp) / "spans.jsonl")
        print(f"baton dispatch benchmark: {args.agents} agent processes, real NATS, SQLite FULL, "
              f"telemetry {args.telemetry}")  # fmt: skip
        result = loop.run(measure(args, Path(tmp)))
    print(
        f"median: fan-out {result['fan_out_us_per_task_median']} µs/task, "
        f"chain {result['chain_us_per_step_median']} µs/step"
    )
    print(json.dumps({"bench": "dispatch", **result}))


if __name__ == "__main__":
    main()
