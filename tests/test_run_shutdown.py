"""Every shutdown of `baton run` is bounded and leaves nothing behind: `--timeout` holds
with the bus gone (exit 4, with what to run next), and the agents it started die with it
even when it is killed with SIGKILL mid-task. Real processes, real nats-server."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from bus.server import EmbeddedNats
from orchestrator.cli.main import EXIT_INTERRUPTED, EXIT_UNFINISHED
from tests.processes import (
    alive,
    children,
    research_held,
    research_running,
    slow_research,
    start_baton,
    terminate,
    until,
)


def test_a_timeout_with_the_bus_gone_exits_unfinished_and_says_how_to_resume(
    tmp_path: Path,
) -> None:
    workflow = slow_research(tmp_path, work_s=60)
    state = tmp_path / "state"
    server = EmbeddedNats(tmp_path / "external")  # --nats: nobody restarts it
    url = asyncio.run(server.start())
    log = tmp_path / "run.log"
    began = time.monotonic()
    run = start_baton(
        log, "run", str(workflow), "--state-dir", str(state), "--nats", url, "--timeout", "10"
    )
    try:
        until(lambda: research_running(state), 60, "the research tasks to start")
        agents = children(run.pid)
        assert len(agents) == 5, agents
        os.kill(server.pid or 0, signal.SIGKILL)
        code = run.wait(120)
        took = time.monotonic() - began
    finally:
        terminate(run)
        server.stop()
    output = log.read_text()
    assert code == EXIT_UNFINISHED, output
    assert "had not ended after 10s (--timeout); NATS at" in output
    run_id = output.split("\nrun ", 1)[1].split(":", 1)[0]
    assert f"baton resume {run_id} --state-dir {state} --nats {url}" in output
    assert "baton run: error" not in output
    # a generous bound (the timeout is honoured within about a second; main took 30 s
    # more, stopping three stuck agents one after another)
    assert took < 10 + 12, f"took {took:.1f}s for a 10 s timeout"
    assert not [pid for pid in agents if alive(pid)]


def test_agents_die_with_a_baton_run_killed_mid_task(tmp_path: Path) -> None:
    workflow = slow_research(tmp_path, work_s=60)
    state = tmp_path / "state"
    run = start_baton(tmp_path / "run.log", "run", str(workflow), "--state-dir", str(state))
    try:
        until(lambda: research_held(state), 60, "the agents to hold the research tasks")
        started = children(run.pid)  # nats-server and five agents, three of them busy
        assert len(started) == 6, started
        os.kill(run.pid, signal.SIGKILL)
        run.wait()
        until(
            lambda: not [pid for pid in started if alive(pid)],
            30,
            f"the processes baton run started to end ({[p for p in started if alive(p)]})",
        )
    finally:
        terminate(run)


def test_an_interrupted_run_says_how_to_resume_it(tmp_path: Path) -> None:
    workflow = slow_research(tmp_path, work_s=60)
    state = tmp_path / "state"
    log = tmp_path / "run.log"
    run = start_baton(log, "run", str(workflow), "--state-dir", str(state))
    try:
        until(lambda: research_running(state), 60, "the research tasks to start")
        started = children(run.pid)
        os.kill(run.pid, signal.SIGINT)
        code = run.wait(60)
    finally:
        terminate(run)
    output = log.read_text()
    assert code == EXIT_INTERRUPTED, output
    run_id = output.split("\nrun ", 1)[1].split(":", 1)[0]
    assert f"run {run_id} interrupted; it stays recorded: carry it on with baton resume " in output
    assert not [pid for pid in started if alive(pid)]
