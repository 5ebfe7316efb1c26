"""An orchestrator, or a `baton agent`, on a bus that let it in without a login says so at
start (the orchestrator naming the server): whoever reaches such a server may act as any
agent or person. The embedded server (every client logs in) and a server that asks for a
login get no such line."""

from __future__ import annotations

import asyncio
import logging
import subprocess
from pathlib import Path

import pytest

from agents.cli import OPEN_BUS as OPEN_TO_AGENT
from bus.permissions import shown_url
from orchestrator.service.bootstrap import OPEN_BUS, bootstrap
from tests.cluster import REPO, baton
from tests.nats_cluster import nats_server

LOGIN = 'authorization { user: "baton", password: "s3cret-pass" }'


async def _start_and_stop(directory: Path, url: str = "") -> None:
    stack = await bootstrap(directory, url)
    await stack.close()


def test_only_a_bus_open_to_anyone_is_named(
    nats_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with nats_server(tmp_path / "guarded", LOGIN) as guarded, caplog.at_level(logging.WARNING):
        asyncio.run(_start_and_stop(tmp_path / "open", nats_url))
        asyncio.run(_start_and_stop(tmp_path / "embedded"))
        with_login = guarded.replace("nats://", "nats://baton:s3cret-pass@")
        asyncio.run(_start_and_stop(tmp_path / "guarded-state", with_login))
    said = [r.getMessage() for r in caplog.records if "without a login" in r.getMessage()]
    assert said == [OPEN_BUS % shown_url(nats_url)], said
    assert all("s3cret" not in r.getMessage() for r in caplog.records)


def _agent_says(url: str) -> str:
    """What `baton agent` prints on `url` up to the line that says it serves (a warning
    comes before it)."""
    agent = subprocess.Popen(
        baton("agent", "--role", "worker", "--handler", "agents.builtin:noop", "--nats", url),
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert agent.stderr is not None
    try:
        said = ""
        while "serving role worker" not in said:
            line = agent.stderr.readline()
            assert line, f"the agent ended: {said}"
            said += line
        return said
    finally:
        agent.kill()
        agent.wait(10)


def test_an_agent_on_a_bus_open_to_anyone_says_so(nats_url: str, tmp_path: Path) -> None:
    assert OPEN_TO_AGENT in _agent_says(nats_url)
    with nats_server(tmp_path / "guarded", LOGIN) as guarded:
        said = _agent_says(guarded.replace("nats://", "nats://baton:s3cret-pass@"))
    assert "without a login" not in said, said
