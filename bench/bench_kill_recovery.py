"""Kill-recovery benchmark (not a test): how long Baton takes to serve again after a
kill -9 of the embedded NATS, of `baton serve` itself (started again at once on the
same state directory), and of an agent in the middle of a task, with no manual step:
the server comes back on its port, the orchestrator, the agents and this client
reconnect by themselves, a dead agent's task goes to another.

One `baton serve` (no `--nats`) with two agent processes; each NATS or serve sample
kills, then submits a one-task run (retrying, as `baton submit` does) and times kill ->
that run recorded as completed in the log. An agent sample submits a run whose task
takes 0.5 s, kills the agent running it once it is assigned, and times kill -> the run
completed (by the other agent, once the dead one is declared lost after its TTL); a new
agent then takes the dead one's place. The run is what an operator waits for: it needs
the server back, the orchestrator serving and the agents reconnected. Kills are
`--settle` apart after each recovery: a server that exits within a second of its start
is taken for a crash loop and started again after a growing backoff, which is not what
one kill costs.

    python -m bench.bench_kill_recovery [--repeats 20] [--settle 1.0] [--kind nats|serve|agent]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec

from bus import loop
from bus.permissions import inbox_prefix
from bus.server import PersonCredentials, person_credentials
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.launcher import AgentProcesses
from orchestrator.service.serve import submit

REPO = Path(__file__).resolve().parent.parent

WORKFLOW = WorkflowSpec(name="recovery", steps=[StepSpec(id="t", role="worker")])
SLOW = WorkflowSpec(name="slow", steps=[StepSpec(id="t", role="worker", params={"seconds": 0.5})])


def nats_pid(directory: Path) -> int:
    """The embedded nats-server running for the state directory (from its ports file)."""
    for path in (directory / "nats" / "ports").glob("nats-server_*.ports"):
        pid = int(path.stem.rsplit("_", 1)[1])
        try:
            os.kill(pid, 0)
        except OSError:
            continue
        return pid
    raise SystemExit(f"no nats-server running for {directory}")


def completed(directory: Path, run_id: str) -> bool:
    return bool(_types(directory, run_id, "run.completed"))


def _types(directory: Path, run_id: str, type_: str) -> list[bytes]:
    """The data of the run's events of this type, in order."""
    with sqlite3.connect(directory / "events.db", timeout=5) as conn:
        rows = conn.execute(
            "SELECT data FROM events WHERE stream = ? AND type = ? ORDER BY position",
            (journal.run_stream(run_id), type_),
        ).fetchall()
    return [bytes(row[0]) for row in rows]


async def start_serving(directory: Path) -> tuple[subprocess.Popen[str], str]:
    """`baton serve` on its embedded server; with the server's address (no login)."""
    command = [sys.executable, "-m", "orchestrator", "serve", "--state-dir", str(directory)]
    serving = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert serving.stdout is not None
    line = await asyncio.to_thread(serving.stdout.readline)
    if "serving on NATS" not in line:
        serving.kill()
        raise SystemExit(f"baton serve did not start: {line!r}")
    return serving, line.split("serving on NATS ")[1].split(",")[0]


def admit(directory: Path, agent_id: str, role: str) -> str:
    """The agent's own login, from `baton admit` (kept across restarts of the server)."""
    out = directory / f"{agent_id}.url"
    command = [sys.executable, "-m", "orchestrator", "admit", agent_id, "--role", role,
               "-o", str(out), "--state-dir", str(directory)]  # fmt: skip
    subprocess.run(command, check=True, capture_output=True, cwd=REPO)
    return out.read_text().strip()


async def start_run(person: PersonCredentials, n: int, workflow: WorkflowSpec) -> str:
    """Submit a run, retrying until an orchestrator takes it."""
    run_id = f"recovery-{n}"
    await submit(person.url, workflow, run_id=run_id, requested_by=person.identity,
                 inbox_prefix=inbox_prefix(person.identity), timeout=120)  # fmt: skip
    return run_id


async def one_run(directory: Path, person: PersonCredentials, n: int) -> None:
    """Submit a run and wait until it completed."""
    await until_completed(directory, await start_run(person, n, WORKFLOW))


async def until_completed(directory: Path, run_id: str) -> None:
    deadline = time.monotonic() + 120
    while not completed(directory, run_id):
        if time.monotonic() > deadline:
            raise SystemExit(f"run {run_id} did not complete in 120 s")
        await asyncio.sleep(0.005)


async def measure(
    kinds: list[str], repeats: int, settle: float, directory: Path
) -> dict[str, list[float]]:
    serving, url = await start_serving(directory)
    person = person_credentials(directory)  # its login stays valid across restarts
    if person is None:
        raise SystemExit("baton serve saved no credentials for this user")
    agents = AgentProcesses(directory / "logs")
    spec = AgentSpec(role="worker", handler="agents.builtin:sleep")

    def start_agents(count: int) -> None:
        agents.start(msgspec.structs.replace(spec, count=count), url, REPO,
                     url_for_agent=lambda agent, role: admit(directory, agent, role))  # fmt: skip

    start_agents(2)
    samples: dict[str, list[float]] = {kind: [] for kind in kinds}
    runs = 0
    try:
        await one_run(directory, person, runs)  # everything up before the first kill
        for kind in samples:
            for _ in range(repeats):
                runs += 1
                await asyncio.sleep(settle)
                if kind == "agent":
                    run_id = await start_run(person, runs, SLOW)
                    while not (assigned := _types(directory, run_id, "task.assigned")):
                        await asyncio.sleep(0.002)
                    holder = msgspec.msgpack.decode(assigned[0])["agent_id"]
                    os.kill(agents.processes[holder].pid, signal.SIGKILL)
                    began = time.perf_counter()
                    await until_completed(directory, run_id)
                    took = time.perf_counter() - began
                    agents.processes.pop(holder).wait()
                    start_agents(1)  # a new one in the dead one's place
                    samples[kind].append(took)
                    print(f"  kill -9 {kind:5}  #{len(samples[kind]):2}  its task done in "
                          f"{took * 1000:7.0f} ms")  # fmt: skip
                    continue
                if kind == "nats":
                    os.kill(nats_pid(directory), signal.SIGKILL)
                    began = time.perf_counter()
                else:
                    os.kill(serving.pid, signal.SIGKILL)
                    began = time.perf_counter()
                    serving.wait()
                    serving, again = await start_serving(directory)
                    if again != url:
                        raise SystemExit(f"baton serve came back on {again}, not {url}")
                await one_run(directory, person, runs)
                took = time.perf_counter() - began
                samples[kind].append(took)
                print(f"  kill -9 {kind:5}  #{len(samples[kind]):2}  serving again in "
                      f"{took * 1000:7.0f} ms")  # fmt: skip
    finally:
        agents.stop()
        serving.terminate()
        try:
            serving.wait(30)
        except subprocess.TimeoutExpired:
            serving.kill()
    return samples


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=20, help="kills of each kind")
    p.add_argument("--settle", type=float, default=1.0, help="seconds between recovery and kill")
    p.add_argument("--kind", choices=["nats", "serve", "agent"],
                   help="only this kill (default: all three)")  # fmt: skip
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="baton-kill-"))
    try:
        print("baton kill recovery: kill -9, then a one-task run until it completed")
        kinds = [args.kind] if args.kind else ["nats", "serve", "agent"]
        samples = loop.run(measure(kinds, args.repeats, args.settle, tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result: dict[str, object] = {"repeats": args.repeats, "settle_s": args.settle}
    for kind, times in samples.items():
        median, worst = statistics.median(times), max(times)
        print(f"kill -9 {kind}: median {median * 1000:.0f} ms, worst {worst * 1000:.0f} ms "
              f"over {len(times)}")  # fmt: skip
        result[kind] = {"median_ms": round(median * 1000), "worst_ms": round(worst * 1000)}
    print(json.dumps({"bench": "kill_recovery", **result}))


if __name__ == "__main__":
    main()
