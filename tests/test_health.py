"""An operator sees what is wrong: the event store refusing writes, the bus down, a loop
that stopped, a run nothing moves, each with since-when, in `baton status` and on the
health subject (`baton health` exits by it); a full disk logs one line and a count, not a
traceback per append; a state directory that cannot be written is refused at startup."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import ClassVar

import pytest

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.server import EmbeddedNats
from eventstore import NewEvent, SqliteEventStore, StorageError, StoredEvent
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.api import (
    HealthIssue,
    HealthReply,
    HealthRequest,
    StatusReply,
    StatusRequest,
)
from orchestrator.service.bootstrap import store_path
from orchestrator.service.health import SETTLE_S, STUCK_AFTER_S, Condition
from orchestrator.service.intake import Intake
from orchestrator.service.launcher import AgentProcesses
from orchestrator.service.service import Orchestrator
from tests.cluster import REPO, baton

_health: Decoder[HealthReply] = Decoder(HealthReply)
_status: Decoder[StatusReply] = Decoder(StatusReply)
WORKERS = AgentSpec(role="worker", handler="agents.builtin:sleep", count=2, capacity=8)


class FullDisk(SqliteEventStore):
    """The real store; while `full`, every append to a run stream is refused as a full
    disk refuses it."""

    full: ClassVar[bool] = False
    refused: ClassVar[int] = 0

    async def append(
        self, stream: str, events: Sequence[NewEvent], expected_version: int
    ) -> list[StoredEvent]:
        if FullDisk.full and stream.startswith(journal.RUN_PREFIX):
            FullDisk.refused += 1
            raise StorageError("append failed: database or disk is full")
        return await super().append(stream, events, expected_version)


class Stack:
    def __init__(
        self, server: EmbeddedNats, url: str, store: SqliteEventStore, o: Orchestrator, bus: Bus
    ) -> None:
        self.server, self.url, self.store, self.orchestrator, self.bus = server, url, store, o, bus

    async def ask_health(self) -> HealthReply:
        return _health.decode(
            await self.bus.request(subjects.API_HEALTH, encode(HealthRequest()), 5)
        )

    async def until(
        self, check: Callable[[list[HealthIssue]], bool], timeout: float = 30.0
    ) -> list[HealthIssue]:
        deadline = time.monotonic() + timeout
        while not check(issues := self.orchestrator.health()):
            if time.monotonic() > deadline:
                raise AssertionError(f"health never showed it: {issues}")
            await asyncio.sleep(0.05)
        return issues


@asynccontextmanager
async def stack(
    directory: Path,
    store_class: type[SqliteEventStore] = SqliteEventStore,
    stuck_after_s: float = STUCK_AFTER_S,
) -> AsyncIterator[Stack]:
    server = EmbeddedNats(directory / "nats")
    url = await server.start()
    store = await store_class.open(directory / "events.db")
    bus = await Bus.connect(url, name="orchestrator")
    orchestrator = Orchestrator(bus, store, agent_ttl=1.0, tick_s=0.05, stuck_after_s=stuck_after_s)
    client = await Bus.connect(url, name="probe")
    try:
        await orchestrator.start()
        yield Stack(server, url, store, orchestrator, client)
    finally:
        await orchestrator.stop()
        await client.close()
        await bus.close()
        await store.close()
        server.stop()


def _kinds(issues: list[HealthIssue], kind: str, *, going: bool = True) -> list[HealthIssue]:
    return [i for i in issues if i.kind == kind and (i.until == 0.0) == going]


def test_a_full_disk_shows_in_status_and_health_and_logs_one_line_with_a_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    workflow = WorkflowSpec(
        name="wide", steps=[StepSpec(id="t", role="worker", fan_out=6, params={"seconds": 0.3})]
    )

    async def scenario() -> None:
        async with stack(tmp_path, FullDisk) as s:
            agents = AgentProcesses(tmp_path / "logs")
            try:
                agents.start(WORKERS, s.url, REPO, heartbeat_s=0.2)
                await s.orchestrator.wait_for_agents(AgentProcesses.roles([WORKERS]), 30)
                assert (await s.ask_health()).healthy
                run_id = await s.orchestrator.start_run(workflow)
                began = time.time()
                FullDisk.full = True  # the agents' results cannot be recorded now
                issues = await s.until(lambda i: any(x.count >= 3 for x in _kinds(i, "storage")))
                (disk,) = _kinds(issues, "storage")
                assert disk.subject == "event store"
                assert began - 1 <= disk.since <= time.time()
                assert "database or disk is full" in disk.detail

                reply = await s.ask_health()
                assert not reply.healthy
                assert [i.kind for i in reply.issues] == ["storage"]
                status = _status.decode(
                    await s.bus.request(subjects.API_STATUS, encode(StatusRequest()), 5)
                )
                assert [i.kind for i in status.health] == ["storage"]
                assert [r.run_id for r in status.runs] == [run_id]

                FullDisk.full = False  # space again: the run completes
                final = await s.orchestrator.wait(run_id, timeout=60)
                assert final.status == "completed"
                await s.until(lambda i: bool(_kinds(i, "storage", going=False)))
                after = await s.ask_health()
                assert after.healthy, after
                (recovered,) = _kinds(after.issues, "storage", going=False)
                assert recovered.until >= recovered.since + SETTLE_S
            finally:
                agents.stop()
                FullDisk.full = False

        assert FullDisk.refused >= 3
        failing = [r for r in caplog.records if "failing" in r.getMessage()]
        assert len(failing) == 1, [r.getMessage() for r in failing]
        assert failing[0].exc_info is None, "one line, no traceback"
        assert not [r for r in caplog.records if r.exc_info], "no traceback at all"
        ended = [r for r in caplog.records if "recovered after" in r.getMessage()]
        assert len(ended) == 1
        assert f"after {FullDisk.refused} failures" in ended[0].getMessage()

    asyncio.run(scenario())


def test_a_bus_outage_shows_with_since_when_and_its_end(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with stack(tmp_path) as s:
            assert not s.orchestrator.health()
            s.server.stop()
            down = await s.until(lambda i: bool(_kinds(i, "bus")))
            (bus,) = _kinds(down, "bus")
            assert bus.subject == "nats"
            assert "disconnected" in bus.detail
            await s.server.start()  # the same port: everyone reconnects
            up = await s.until(lambda i: bool(_kinds(i, "bus", going=False)))
            (back,) = _kinds(up, "bus", going=False)
            assert back.since == bus.since
            assert back.until > back.since
            assert (await s.ask_health()).healthy

    asyncio.run(scenario())


def test_a_loop_that_stopped_and_a_run_nothing_moves_are_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(self: Intake) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(Intake, "next_batch", broken)
    workflow = WorkflowSpec(name="nobody", steps=[StepSpec(id="t", role="absent")])

    async def scenario() -> None:
        async with stack(tmp_path, stuck_after_s=0.3) as s:
            issues = await s.until(lambda i: bool(_kinds(i, "loop")))
            (loop,) = _kinds(issues, "loop")  # supervised: restarted, and shown while it crashes
            assert loop.subject == "reports"
            assert re.fullmatch(
                r"crashed \d+ time\(s\), restarted; last: RuntimeError: boom", loop.detail
            )

            run_id = await s.orchestrator.start_run(workflow)
            issues = await s.until(lambda i: bool(_kinds(i, "run")))
            (stuck,) = _kinds(issues, "run")
            assert stuck.subject == run_id
            assert "tasks ready for absent, which no live agent serves" in stuck.detail
            reply = await s.ask_health()
            assert not reply.healthy
            assert {i.kind for i in reply.issues} == {"loop", "run"}

    asyncio.run(scenario())


def test_baton_health_and_status_show_it_and_health_exits_by_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    workflow = WorkflowSpec(name="nobody", steps=[StepSpec(id="t", role="absent")])

    async def scenario() -> None:
        async with stack(state, stuck_after_s=0.3) as s:

            def cli(*args: str) -> subprocess.CompletedProcess[str]:
                command = baton(*args, "--nats", s.url)
                return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=60)

            well = await asyncio.to_thread(cli, "health")
            assert (well.returncode, well.stdout.strip()) == (0, "health: ok")
            run_id = await s.orchestrator.start_run(workflow)
            await s.until(lambda i: bool(_kinds(i, "run")))
            ill = await asyncio.to_thread(cli, "health")
            assert ill.returncode == 1
            assert ill.stdout.startswith("health: DEGRADED")
            assert f"run      {run_id}" in ill.stdout
            assert "since 20" in ill.stdout
            as_json = json.loads((await asyncio.to_thread(cli, "health", "--json")).stdout)
            assert as_json["healthy"] is False
            status = await asyncio.to_thread(cli, "status")
            assert status.returncode == 0
            assert "health: DEGRADED" in status.stdout
            assert "no live agent serves" in status.stdout
        gone = subprocess.run(
            baton("health", "--nats", s.url, "--timeout", "1"),
            capture_output=True, text=True, cwd=REPO, timeout=60,
        )  # fmt: skip
        assert gone.returncode == 2, "no orchestrator to ask: a probe fails"

    asyncio.run(scenario())


@contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make `path` unwritable for this process: chmod, or for root (whom modes do not
    stop) the immutable attribute."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)]).returncode != 0:
        pytest.skip("cannot make a file unwritable for root here (no chattr +i)")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


@pytest.mark.parametrize("what", ["directory", "store file"])
def test_startup_refuses_an_unwritable_state_dir_in_one_line(tmp_path: Path, what: str) -> None:
    state = tmp_path / "state"

    async def make() -> None:
        store = await SqliteEventStore.open(store_path(state))
        await store.close()

    asyncio.run(make())
    target = state if what == "directory" else store_path(state)
    with read_only(target):
        refused = subprocess.run(
            baton("serve", "--state-dir", str(state)),
            capture_output=True, text=True, cwd=REPO, timeout=30,
        )  # fmt: skip
    assert refused.returncode == 2
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("baton serve: error: ")
    assert "not writable" in line
    assert str(target) in line


def test_a_flapping_condition_is_one_condition_logged_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    now = [1000.0]
    condition = Condition("storage", "event store", wall=lambda: now[0], clock=lambda: now[0])
    for _ in range(50):  # every other append fails, 10 a second
        condition.fail("append failed: disk I/O error")
        now[0] += 0.1
        condition.ok()
        now[0] += 0.1
    issue = condition.issue()
    assert issue is not None
    assert (issue.since, issue.count, issue.until) == (1000.0, 50, 0.0)
    now[0] += SETTLE_S
    condition.settle()  # it has worked, with no failure, for long enough
    ended = condition.issue()
    assert ended is not None
    assert ended.until == now[0]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert "failing" in lines[0]
    assert "recovered after 50 failures" in lines[1]
