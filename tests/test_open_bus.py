"""An orchestrator on a bus that let it in without a login says so at start, naming the
server: whoever reaches such a server may act as any agent or person. The embedded
server (every client logs in) and a server that asks for a login get no such line."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bus.permissions import shown_url
from orchestrator.service.bootstrap import OPEN_BUS, bootstrap
from tests.nats_cluster import nats_server


async def _start_and_stop(directory: Path, url: str = "") -> None:
    stack = await bootstrap(directory, url)
    await stack.close()


def test_only_a_bus_open_to_anyone_is_named(
    nats_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    login = 'authorization { user: "baton", password: "s3cret-pass" }'
    with nats_server(tmp_path / "guarded", login) as guarded, caplog.at_level(logging.WARNING):
        asyncio.run(_start_and_stop(tmp_path / "open", nats_url))
        asyncio.run(_start_and_stop(tmp_path / "embedded"))
        with_login = guarded.replace("nats://", "nats://baton:s3cret-pass@")
        asyncio.run(_start_and_stop(tmp_path / "guarded-state", with_login))
    said = [r.getMessage() for r in caplog.records if "without a login" in r.getMessage()]
    assert said == [OPEN_BUS % shown_url(nats_url)], said
    assert all("s3cret" not in r.getMessage() for r in caplog.records)
