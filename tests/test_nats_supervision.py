"""The embedded NATS is a supervised child with a port of its own per state directory:
kill -9 it during `baton run`, or kill -9 `baton serve` that owns it and start it again,
and the run completes with no manual step, every process reconnecting by itself. Real
processes throughout (nats-server, `baton run`/`serve`, agent processes), killed with
SIGKILL; the log is checked with `baton audit verify`."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from bus import server as server_module
from bus.server import EmbeddedNats, save_port, saved_port
from orchestrator.service.launcher import AgentProcesses
from orchestrator.service.workflow_files import load
from tests.cluster import REPO
from tests.processes import (
    admitted,
    audit_verify,
    event_types,
    failed_attempts,
    nats_pid,
    research_running,
    serving_url,
    slow_research,
    start_baton,
    submit_run,
    terminate,
    until,
)


def test_the_port_is_chosen_once_per_state_dir_and_kept_privately(tmp_path: Path) -> None:
    async def scenario() -> tuple[str, str, str]:
        first = EmbeddedNats(tmp_path)
        url = await first.start()
        first.stop()
        again = EmbeddedNats(tmp_path)  # a new owner: the one before was killed, say
        try:
            return url, await again.start(), await EmbeddedNats(tmp_path / "other").start()
        finally:
            again.stop()

    url, again, other = asyncio.run(scenario())
    assert again == url
    assert other != url  # another directory has a port of its own
    port_file = tmp_path / "nats" / "port"
    assert saved_port(tmp_path) == int(url.rpartition(":")[2])
    assert stat.S_IMODE(port_file.stat().st_mode) == 0o600


def test_a_new_server_waits_for_its_port_and_takes_another_if_it_stays_taken(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_module, "PORT_WAIT_S", 1.0)
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]
    save_port(tmp_path, port)

    async def start_when_freed() -> str:
        asyncio.get_running_loop().call_later(0.3, holder.close)  # the old one shutting down
        server = EmbeddedNats(tmp_path)
        try:
            return await server.start()
        finally:
            server.stop()

    assert asyncio.run(start_when_freed()) == f"nats://127.0.0.1:{port}"

    async def start_while_taken() -> str:
        server = EmbeddedNats(tmp_path)
        try:
            return await server.start()
        finally:
            server.stop()

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", port))
        squatter.listen()
        url = asyncio.run(start_while_taken())
    other = int(url.rpartition(":")[2])
    assert other != port
    assert saved_port(tmp_path) == other  # kept from now on


def test_a_run_completes_after_its_embedded_nats_is_killed(tmp_path: Path) -> None:
    workflow = slow_research(tmp_path, work_s=3)
    state = tmp_path / "state"
    log = tmp_path / "run.log"
    run = start_baton(log, "run", str(workflow), "--state-dir", str(state), "--timeout", "90")
    try:
        until(lambda: research_running(state), 60, "the research tasks to start")
        killed = nats_pid(state)
        os.kill(killed, signal.SIGKILL)
        code = run.wait(120)
    finally:
        terminate(run)
    output = log.read_text()
    assert code == 0, output
    assert f"nats-server (pid {killed}) exited with -9" in output
    # the outage is one line each way, not a line per try to reconnect
    assert output.count("nats (baton-orchestrator): disconnected; reconnecting") == 1, output
    assert "nats (baton-orchestrator): reconnected after" in output
    assert "completed; result:" in output
    verified = audit_verify(state)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_baton_serve_killed_and_started_again_keeps_its_port_and_the_run_completes(
    tmp_path: Path,
) -> None:
    workflow = slow_research(tmp_path, work_s=3)
    state = tmp_path / "state"
    first = start_baton(tmp_path / "serve-1.log", "serve", "--state-dir", str(state))
    agents = AgentProcesses(tmp_path / "agents")
    second: subprocess.Popen[bytes] | None = None
    try:
        url = serving_url(tmp_path / "serve-1.log", first)
        for spec in load(workflow).agents:  # agents of their own, not the service's
            agents.start(
                spec, url, REPO, url_for_agent=lambda agent, role: admitted(state, agent, role)
            )
        run_id = submit_run(workflow, state)
        until(lambda: research_running(state), 60, "the research tasks to start")
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        began = time.monotonic()
        second = start_baton(tmp_path / "serve-2.log", "serve", "--state-dir", str(state))
        assert serving_url(tmp_path / "serve-2.log", second) == url
        try:
            until(lambda: "run.completed" in event_types(state, run_id), 90, f"run {run_id} "
                  f"to complete after the restart ({time.monotonic() - began:.1f}s)")  # fmt: skip
        except AssertionError as exc:
            raise AssertionError(_what_happened(exc, tmp_path, event_types(state, run_id))) from exc
        assert not agents.exited(), "an agent gave up on the bus"
        # the agents kept the attempts they held through the restart: the orchestrator's
        # re-sends found them reconnecting and waited for them to join (an agent slower to
        # come back than the orchestrator's grace would be lost, on a starved machine)
        assert "undeliverable" not in failed_attempts(state, run_id)
    finally:
        if second is not None:
            terminate(second)
        terminate(first)
        agents.stop()
    verified = audit_verify(state)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def _what_happened(failure: AssertionError, folder: Path, events: list[str]) -> str:
    """The failure, the run's events and the end of each process's log."""
    logs = sorted(folder.glob("serve-*.log")) + sorted((folder / "agents").glob("*.log"))
    tails = [f"--- {log.name}:\n" + "\n".join(log.read_text().splitlines()[-15:]) for log in logs]
    return "\n".join([str(failure), f"events: {events}", *tails])
