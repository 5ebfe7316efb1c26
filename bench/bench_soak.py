"""Memory soak benchmark (not a test): a `baton serve` process takes run after run (default
1,000 fan-outs of 100 no-op tasks, 4 in flight, 4 agents) and its resident memory is read
after each hundred. A long-lived service must not keep what it needs no more: the RSS
after 1,000 runs should be within 10 % of the RSS after 100.

Runs are submitted over `baton.api.run.start` like `baton submit` does, and seen to end
on their progress subject. RSS is read from /proc once no run is in flight.

    python -m bench.bench_soak [--runs 1000] [--tasks 100] [--in-flight 4] [--agents 4]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bus import loop, subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming
from bus.protocol import ErrorReply, ProgressBatch
from bus.server import EmbeddedNats
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service.api import AgentsReply, AgentsRequest, RunAccepted, StartRunRequest
from orchestrator.service.launcher import AgentProcesses

_accepted: Decoder[RunAccepted | ErrorReply] = Decoder(RunAccepted | ErrorReply)
_agents: Decoder[AgentsReply | ErrorReply] = Decoder(AgentsReply | ErrorReply)
_progress: Decoder[ProgressBatch] = Decoder(ProgressBatch)
ENDINGS = {"run.completed", "run.failed", "run.stopped"}


def rss_kb(pid: int) -> int:
    """The process's resident set size in KiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no VmRSS for process {pid}")


class Ends:
    """Waiters for runs' ends, fed by the progress subjects of every run."""

    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[str]] = {}
        self.ended: dict[str, str] = {}
        """Runs that ended before anyone waited for them (their submit not yet answered)."""
        self.failed = 0

    async def end_of(self, run_id: str) -> str:
        if run_id in self.ended:
            return self.ended.pop(run_id)
        waiter = self.waiting[run_id] = asyncio.get_running_loop().create_future()
        return await asyncio.wait_for(waiter, 300)

    async def __call__(self, msg: Incoming) -> None:
        for line in _progress.decode(msg.data).lines:
            if line.event in ENDINGS:
                waiter = self.waiting.pop(line.run_id, None)
                if waiter is None:
                    self.ended[line.run_id] = line.event
                elif not waiter.done():
                    waiter.set_result(line.event)


async def start_serving(directory: Path, url: str) -> subprocess.Popen[str]:
    """`baton serve` on a bus of the benchmark's own (so the agents and the benchmark's
    client need no logins; the embedded server is a child process of its own anyway, so
    it was never in the orchestrator's RSS)."""
    command = [sys.executable, "-m", "orchestrator", "serve", "--state-dir", str(directory),
               "--nats", url]  # fmt: skip
    serving = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert serving.stdout is not None
    line = await asyncio.to_thread(serving.stdout.readline)
    if "serving on NATS" not in line:
        serving.kill()
        raise SystemExit(f"baton serve did not start: {line!r}")
    return serving


async def wait_for_agents(bus: Bus, count: int) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        reply = _agents.decode(await bus.request(subjects.API_AGENTS, encode(AgentsRequest()), 5))
        if isinstance(reply, AgentsReply) and len(reply.agents) >= count:
            return
        await asyncio.sleep(0.2)
    raise SystemExit(f"{count} agents did not register in 60 s")


async def one_run(bus: Bus, ends: Ends, workflow: WorkflowSpec) -> None:
    request = StartRunRequest(workflow)
    answer = _accepted.decode(await bus.request(subjects.run_start("bench"), encode(request), 30))
    if isinstance(answer, ErrorReply):
        raise SystemExit(f"run refused: {answer.detail}")
    if await ends.end_of(answer.run_id) != "run.completed":
        ends.failed += 1


async def soak(args: argparse.Namespace, directory: Path) -> dict[str, object]:
    server = EmbeddedNats(directory / "bench-nats")
    url = await server.start()
    serving = await start_serving(directory, url)
    agents = AgentProcesses(directory / "logs")
    workflow = WorkflowSpec(
        name="soak", steps=[StepSpec(id="t", role="worker", fan_out=args.tasks)]
    )
    spec = AgentSpec(role="worker", handler="agents.builtin:noop", count=args.agents, capacity=64)
    samples: dict[int, int] = {}
    bus = await Bus.connect(url, name="bench-soak")
    ends = Ends()
    began = time.perf_counter()
    try:
        await bus.subscribe("baton.events.*", ends, inline=True)
        agents.start(spec, url, Path.cwd())
        await wait_for_agents(bus, args.agents)
        samples[0] = rss_kb(serving.pid)
        print(f"  {0:5} runs   RSS {samples[0] / 1024:7.1f} MB")
        done = 0
        while done < args.runs:
            batch = min(args.every, args.runs - done)
            for start in range(0, batch, args.in_flight):
                size = min(args.in_flight, batch - start)
                await asyncio.gather(*(one_run(bus, ends, workflow) for _ in range(size)))
            done += batch
            await asyncio.sleep(args.settle)  # answers and background sends finish
            samples[done] = rss_kb(serving.pid)
            rate = done * args.tasks / (time.perf_counter() - began)
            print(f"  {done:5} runs   RSS {samples[done] / 1024:7.1f} MB   ({rate:.0f} tasks/s)")
    finally:
        await bus.close()
        agents.stop()
        serving.terminate()
        serving.wait(30)
        server.stop()
    first = samples.get(args.baseline, samples[min(k for k in samples if k)])
    last = samples[max(samples)]
    return {
        "runs": args.runs,
        "tasks_per_run": args.tasks,
        "in_flight": args.in_flight,
        "agents": args.agents,
        "failed_runs": ends.failed,
        "rss_mb": {str(k): round(v / 1024, 1) for k, v in samples.items()},
        "rss_baseline_mb": round(first / 1024, 1),
        "rss_last_mb": round(last / 1024, 1),
        "growth_pct": round(100 * (last - first) / first, 1),
        "seconds": round(time.perf_counter() - began, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=100, help="tasks per run (one fan-out)")
    p.add_argument("--in-flight", type=int, default=4, help="runs at once")
    p.add_argument("--agents", type=int, default=4)
    p.add_argument("--every", type=int, default=100, help="read the RSS every so many runs")
    p.add_argument("--baseline", type=int, default=100, help="the RSS compared against")
    p.add_argument("--settle", type=float, default=1.0, help="seconds before each reading")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="baton-soak-"))
    try:
        print("baton memory soak: one baton serve process, run after run, RSS per hundred")
        result = loop.run(soak(args, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(
        f"RSS {result['rss_baseline_mb']} MB after {args.baseline} runs, "
        f"{result['rss_last_mb']} MB after {args.runs}: {result['growth_pct']:+} % "
        f"({result['failed_runs']} runs did not complete)"
    )
    print(json.dumps({"bench": "soak", **result}))


if __name__ == "__main__":
    main()
