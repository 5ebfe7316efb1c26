"""The coordination overhead of sharing the runs (not a test): the same load (runs of a
fan-out workflow submitted on the bus, agents in this process) on a JetStream log served
by 1, 2 and 3 `baton serve` processes on one nats-server; measured, the orchestrators'
CPU seconds (user + system, from /proc) per task, from the first submit to the last run's
end, and the wall time; and their CPU with nothing to do (lease upkeep, ticks), per
second, and the per-task figure without it. Prints figures and one JSON line.

    python -m bench.bench_sharing_cpu [--runs 40]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import tempfile
import time
from pathlib import Path

from agents.runtime import AgentRuntime
from agents.sdk import TaskContext
from bench.bench_takeover import WORKFLOW, Serving
from bus.config import Config
from bus.connection import Bus
from bus.server import EmbeddedNats
from orchestrator.service import journal
from orchestrator.service.bootstrap import open_store
from orchestrator.service.serve import submit

TASKS_PER_RUN = 6
IDLE_S = 3.0
"""How long the orchestrators' CPU is measured with nothing to do (leases, ticks)."""


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(orchestrators: int, runs: int) -> dict[str, float]:
    async def handler(ctx: TaskContext) -> dict[str, str]:
        return {"done": ctx.task_id}

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = EmbeddedNats(work / "nats")
        url = await server.start()
        (work / "baton.toml").write_text(f'store = "jetstream"\nnats = ["{url}"]\n')
        serving = [Serving(work, f"o{n}") for n in range(orchestrators)]
        for s in serving:
            await s.ready()
        agents = []
        for n in range(2):
            bus = await Bus.connect(url, name=f"agent-{n}")
            agent = AgentRuntime(bus, agent_id=f"w{n}", role="worker", handler=handler, capacity=16)
            agents.append((bus, agent, asyncio.create_task(agent.run())))
        store = await open_store(work, Config(store="jetstream", nats=(url,)))
        try:
            await asyncio.sleep(2.0)  # the leases settle (shares agreed), the agents known
            idle = sum(_cpu_s(s.process.pid) for s in serving)
            await asyncio.sleep(IDLE_S)
            cpu = sum(_cpu_s(s.process.pid) for s in serving)
            idle = (cpu - idle) / IDLE_S
            began = time.perf_counter()
            accepted = await asyncio.gather(
                *(submit(url, WORKFLOW, request_id=f"r{n}", timeout=60) for n in range(runs))
            )
            for run in accepted:
                while not await journal.has_ended(store, journal.run_stream(run.run_id)):
                    await asyncio.sleep(0.05)
            wall = time.perf_counter() - began
            cpu = sum(_cpu_s(s.process.pid) for s in serving) - cpu
        finally:
            await store.close()
            for bus, agent, task in agents:
                agent.stop()
                task.cancel()
                await bus.close()
            for s in serving:
                s.process.send_signal(signal.SIGTERM)
                s.process.wait(20)
            server.stop()
    tasks = runs * TASKS_PER_RUN
    return {"orchestrators": orchestrators, "tasks": tasks, "wall_s": round(wall, 2),
            "cpu_ms_per_task": round(1000 * cpu / tasks, 2),
            "idle_cpu_ms_per_s": round(1000 * idle, 1),
            "busy_cpu_ms_per_task": round(1000 * (cpu - idle * wall) / tasks, 2)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    figures = [asyncio.run(measure(n, args.runs)) for n in (1, 2, 3)]
    base = figures[0]["cpu_ms_per_task"]
    for f in figures:
        print(
            f"{f['orchestrators']} orchestrator(s): {f['cpu_ms_per_task']} ms CPU per task "
            f"({100 * (f['cpu_ms_per_task'] / base - 1):+.0f}% against one), "
            f"{f['tasks']} tasks in {f['wall_s']}s; idle {f['idle_cpu_ms_per_s']} ms CPU "
            f"per second, without it {f['busy_cpu_ms_per_task']} ms per task"
        )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
