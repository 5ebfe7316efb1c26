"""Shutdown benchmark (not a test): how long `baton run` takes to be gone, with what it
started, in the two ways it can be cut short.

- `timeout`: `baton run --nats <external> --timeout N` of the research example with slow
  research tasks; the external nats-server is killed (-9) once they run, so the bus is
  gone for good. Timed: from the line that says the run had not ended to the exit of
  `baton run` (its agents stopped, its connection closed).
- `kill`: the same run on its embedded NATS; `baton run` is killed (-9) once the research
  tasks run. Timed: from the kill until every process it started (nats-server, five
  agents, three of them mid-task) has ended.

    python -m bench.bench_shutdown [--repeats 5] [--timeout 3]
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
from collections.abc import Callable
from pathlib import Path

from bus.server import EmbeddedNats

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = REPO / "examples" / "research"


def slow_workflow(directory: Path) -> Path:
    text = (EXAMPLE / "workflow.toml").read_text()
    text = text.replace('handler = "agents.py:', f'handler = "{EXAMPLE / "agents.py"}:')
    path = directory / "workflow.toml"
    path.write_text(text.replace("work_s = 0.2", "work_s = 60"))
    return path


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def research_running(state: Path) -> bool:
    """Whether the plan and the three research tasks have been handed out."""
    try:
        with sqlite3.connect(state / "events.db", timeout=5) as conn:
            row = conn.execute("SELECT count(*) FROM events WHERE type = 'task.assigned'")
            return int(row.fetchone()[0]) >= 4
    except sqlite3.Error:
        return False


def wait_for(check: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit("the research tasks did not start")
        time.sleep(0.01)
    time.sleep(0.5)  # recorded as assigned: the agents hold them a moment later


def baton_run(workflow: Path, state: Path, *extra: str) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "orchestrator", "run", str(workflow)]
    return subprocess.Popen(
        [*command, "--state-dir", str(state), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
    )


def one_timeout(directory: Path, timeout: float) -> float:
    server = EmbeddedNats(directory / "external")
    url = asyncio.run(server.start())
    state = directory / "state"
    run = baton_run(slow_workflow(directory), state, "--nats", url, "--timeout", str(timeout))
    try:
        wait_for(lambda: research_running(state))
        os.kill(server.pid or 0, signal.SIGKILL)
        assert run.stdout is not None
        for line in run.stdout:
            if "had not ended after" in line:
                said = time.perf_counter()
                break
        else:
            raise SystemExit("baton run ended without saying it timed out")
        run.wait()
        return time.perf_counter() - said
    finally:
        run.kill()
        server.stop()


def one_kill(directory: Path) -> float:
    state = directory / "state"
    run = baton_run(slow_workflow(directory), state)
    try:
        wait_for(lambda: research_running(state))
        started = children(run.pid)
        os.kill(run.pid, signal.SIGKILL)
        began = time.perf_counter()
        run.wait()
        while any(alive(pid) for pid in started):
            if time.perf_counter() - began > 120:
                raise SystemExit(f"processes of baton run still alive: {started}")
            time.sleep(0.01)
        return time.perf_counter() - began
    finally:
        run.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--timeout", type=float, default=3.0, help="baton run --timeout")
    args = p.parse_args()
    samples: dict[str, list[float]] = {"timeout": [], "kill": []}
    print("baton shutdown: --timeout with the bus gone, and kill -9 of baton run")
    for kind, times in samples.items():
        for n in range(args.repeats):
            tmp = Path(tempfile.mkdtemp(prefix="baton-shutdown-"))
            try:
                took = one_timeout(tmp, args.timeout) if kind == "timeout" else one_kill(tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            times.append(took)
            print(f"  {kind:7} #{n + 1}  gone {took * 1000:6.0f} ms after "
                  f"{'the timeout line' if kind == 'timeout' else 'the kill'}")  # fmt: skip
    result: dict[str, object] = {"repeats": args.repeats, "timeout_s": args.timeout}
    for kind, times in samples.items():
        median, worst = statistics.median(times), max(times)
        print(f"{kind}: median {median * 1000:.0f} ms, worst {worst * 1000:.0f} ms")
        result[kind] = {"median_ms": round(median * 1000), "worst_ms": round(worst * 1000)}
    print(json.dumps({"bench": "shutdown", **result}))


if __name__ == "__main__":
    main()
