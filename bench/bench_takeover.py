"""Takeover after an orchestrator is killed (not a test): three `baton serve` processes
share the runs of a JetStream log on one nats-server; runs go on (agents in this
process); one orchestrator, chosen at random among those holding partitions, gets
SIGKILL at a random moment, again and again, and a new one is started in its place.
Measured: how long until every partition the killed one held is held by another (the
lease bucket says), median and worst; then that every run completed with each task
succeeded exactly once. Prints figures and one JSON line.

    python -m bench.bench_takeover [--kills 10]

`measure` also runs on servers it is given (tests/test_cluster.py: a three-node cluster
with every stream at 3 replicas).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import nats
import nats.js.errors

from agents.runtime import AgentRuntime
from agents.sdk import TaskContext
from bus.config import Config
from bus.connection import Bus
from bus.leases import LEASES_BUCKET
from bus.nats_options import login_options
from bus.server import EmbeddedNats
from orchestrator.core.events import TaskSucceeded
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.bootstrap import open_store
from orchestrator.service.serve import submit

WORKFLOW = WorkflowSpec(
    "takeover",
    [
        StepSpec("split", role="worker"),
        StepSpec("work", role="worker", needs=["split"], fan_out=4),
        StepSpec("join", role="worker", needs=["work"]),
    ],
)


class Serving:
    """One `baton serve` process and the orchestrator id it said it serves as."""

    def __init__(self, work: Path, name: str) -> None:
        self.log = work / f"{name}.log"
        self.process = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "serve", "--state-dir", str(work / name)],
            cwd=work, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
            env={k: v for k, v in os.environ.items() if not k.startswith("BATON_")},
        )  # fmt: skip
        self.id = ""

    async def ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not (found := re.search(r"as orchestrator (\w+)", self.log.read_text())):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"baton serve did not start: {self.log.read_text()}")
            await asyncio.sleep(0.05)
        self.id = found.group(1)


async def _holders(js: object) -> dict[int, str]:
    kv = await js.key_value(LEASES_BUCKET)  # type: ignore[attr-defined]
    held: dict[int, str] = {}
    for partition in range(16):
        try:
            entry = await kv.get(f"p.{partition}")
        except nats.js.errors.KeyNotFoundError:  # deleted, or never written: free
            continue
        held[partition] = entry.value.decode()
    return held


async def measure(
    kills: int, seed: int, servers: list[str] | None = None, replicas: int = 1, settings: str = ""
) -> dict[str, object]:
    """SIGKILL one of three `baton serve` `kills` times, on `servers` (default: an
    embedded nats-server started here) with every stream at `replicas`; `settings`, if
    given, is the `baton.toml` the services read (its login and TLS files; this process
    logs in with those `$BATON_NATS_*` / `$BATON_TLS_*` name)."""
    rng = random.Random(seed)
    ran: Counter[tuple[str, str]] = Counter()

    async def handler(ctx: TaskContext) -> dict[str, str]:
        ran[(ctx.run_id, ctx.task_id)] += 1
        await asyncio.sleep(rng.uniform(0.1, 0.5))
        return {"done": ctx.task_id}

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = EmbeddedNats(work / "nats")
        urls = servers or [await server.start()]
        url = ",".join(urls)
        listed = ", ".join(json.dumps(u) for u in urls)
        (work / "baton.toml").write_text(
            settings or f'store = "jetstream"\nreplicas = {replicas}\nnats = [{listed}]\n'
        )
        serving = [Serving(work, f"o{n}") for n in range(3)]
        for s in serving:
            await s.ready()
        nc = await nats.connect(servers=urls, **login_options())
        js = nc.jetstream()
        agents = []
        for n in range(3):
            bus = await Bus.connect(url, name=f"agent-{n}")
            agent = AgentRuntime(bus, agent_id=f"worker-{n}", role="worker", handler=handler)
            agents.append((bus, agent, asyncio.create_task(agent.run())))
        run_ids: list[str] = []
        takeovers: list[float] = []
        killed_logs: list[Path] = []
        try:
            for kill in range(kills):
                for n in range(3):
                    accepted = await submit(url, WORKFLOW, request_id=f"k{kill}-{n}", timeout=30)
                    run_ids.append(accepted.run_id)
                await asyncio.sleep(rng.uniform(0.2, 1.0))
                holders = await _holders(js)  # a victim that holds partitions: a real takeover
                victim = rng.choice([s for s in serving if s.id in holders.values()])
                held = {p for p, owner in holders.items() if owner == victim.id}
                victim.process.send_signal(signal.SIGKILL)
                began = time.monotonic()
                victim.process.wait()
                while True:
                    now = await _holders(js)
                    if all(now.get(p, victim.id) != victim.id for p in held):
                        break
                    await asyncio.sleep(0.02)
                takeovers.append(time.monotonic() - began)
                killed_logs.append(victim.log)
                serving.remove(victim)
                serving.append(Serving(work, f"new{kill}"))
                await serving[-1].ready()
            config = Config(store="jetstream", nats=tuple(urls), replicas=replicas)
            store = await open_store(work, config)
            deadline = time.monotonic() + 120
            for run_id in run_ids:
                while not await journal.has_ended(store, journal.run_stream(run_id)):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"run {run_id} never ended")
                    await asyncio.sleep(0.1)
            completed, once, taken = 0, 0, 0
            for run_id in run_ids:
                state = await journal.load_run(store, run_id)
                completed += state.status == "completed"
                events = await store.read_stream(journal.run_stream(run_id))
                taken += sum(e.type == "run.taken_over" for e in events)
                succeeded = Counter(
                    e.task_id
                    for e in map(journal.decode_run_event, events)
                    if isinstance(e, TaskSucceeded)
                )
                once += len(succeeded) == 6 and set(succeeded.values()) == {1}
            await store.close()
        finally:
            for bus, agent, task in agents:
                agent.stop()
                task.cancel()
                await bus.close()
            await nc.close()
            for s in serving:
                s.process.send_signal(signal.SIGTERM)
                s.process.wait(20)
            server.stop()
            tracebacks = sum(
                "Traceback" in log.read_text() for log in [*killed_logs, *(s.log for s in serving)]
            )
    return {
        "kills": kills,
        "runs": len(run_ids),
        "completed": completed,
        "each_task_succeeded_once": once,
        "runs_taken_over": taken,
        "logs_with_a_traceback": tracebacks,
        "takeover_median_s": round(statistics.median(takeovers), 2),
        "takeover_worst_s": round(max(takeovers), 2),
        "takeovers_s": [round(t, 2) for t in takeovers],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--seed", type=int, default=14)
    args = parser.parse_args()
    figures = asyncio.run(measure(args.kills, args.seed))
    print(
        f"{figures['kills']} SIGKILLs of one of three baton serve: takeover median "
        f"{figures['takeover_median_s']}s, worst {figures['takeover_worst_s']}s; "
        f"{figures['completed']}/{figures['runs']} runs completed, "
        f"{figures['each_task_succeeded_once']} with each task succeeded exactly once, "
        f"{figures['runs_taken_over']} takeovers of runs under way"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
