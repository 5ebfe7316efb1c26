"""SIGKILL the orchestrator process at random moments (seeded) while it runs the research
example, at least 20 times, starting it again each time: every run completes, each task
succeeds exactly once in the log, and no agent is ever handed an attempt that had already
been fenced out (every attempt an agent ran was recorded for that agent, and had not
ended before the agent got it).

Real processes throughout: nats-server, five agent processes, and `baton serve` as the
orchestrator, each cycle a new process on the same SQLite log.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest
from msgspec.structs import replace

from bus.errors import BusError
from bus.server import EmbeddedNats, die_with_parent
from eventstore import SqliteEventStore
from orchestrator.core.events import (
    RunEvent,
    TaskAssigned,
    TaskAttemptFailed,
    TaskCancelled,
    TaskSucceeded,
)
from orchestrator.core.workflow import WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.bootstrap import store_path
from orchestrator.service.launcher import AgentProcesses
from orchestrator.service.serve import RunRefused, submit
from orchestrator.service.workflow_files import load
from tests.cluster import EXAMPLE, REPO, baton

SEED = int(os.environ.get("BATON_CRASH_SEED", "4242"))
CYCLES = 20
TASKS = ("plan", "research[0]", "research[1]", "research[2]", "write")


class OrchestratorProcess:
    """`baton serve` on one state directory; killed and started again by the test."""

    def __init__(self, state: Path, nats_url: str) -> None:
        self.state = state
        self.nats_url = nats_url
        self.starts = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.starts += 1
        with (self.state / f"orchestrator-{self.starts}.log").open("ab") as log:
            self.process = subprocess.Popen(
                baton("serve", "--nats", self.nats_url, "--state-dir", str(self.state)),
                cwd=REPO, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
            )  # fmt: skip

    def kill(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _last_type(db: Path, run_id: str) -> str:
    with sqlite3.connect(db, timeout=5) as conn:
        row = conn.execute(
            "SELECT type FROM events WHERE stream = ? ORDER BY version DESC LIMIT 1",
            (journal.run_stream(run_id),),
        ).fetchone()
    return str(row[0]) if row else ""


async def _until_ended(db: Path, run_id: str, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while (last := _last_type(db, run_id)) not in journal.ENDINGS:
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} did not end within {timeout}s (last: {last})")
        await asyncio.sleep(0.05)
    return last


async def _start_run(nats_url: str, workflow: WorkflowSpec, run_id: str) -> None:
    """Submit until the (re)starting orchestrator takes it; durable once accepted."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await submit(nats_url, workflow, run_id=run_id, requested_by="crash-test")
            return
        except BusError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)
        except RunRefused as exc:  # an earlier try was recorded but its answer lost
            if "already exists" not in str(exc):
                raise
            return


def _check_receipts(
    receipts: list[dict[str, object]], events: dict[str, list[tuple[RunEvent, float]]]
) -> None:
    """Each attempt an agent ran was recorded as assigned to it, ran once, and had not
    ended (been fenced out) before the agent got it."""
    ran = Counter((r["run_id"], r["task_id"], r["attempt"]) for r in receipts)
    assert max(ran.values()) == 1, f"an attempt ran twice: {ran.most_common(1)}"
    for r in receipts:
        run = events[str(r["run_id"])]
        key = (r["task_id"], r["attempt"])
        assigned = [
            e for e, _ in run if isinstance(e, TaskAssigned) and (e.task_id, e.attempt) == key
        ]
        assert len(assigned) == 1, f"ran an attempt that was never recorded: {r}"
        assert assigned[0].agent_id == r["agent_id"], f"ran by an agent not assigned it: {r}"
        ended = [
            at for e, at in run
            if isinstance(e, TaskSucceeded | TaskAttemptFailed)
            and (e.task_id, e.attempt) == key
        ]  # fmt: skip
        cancelled = [
            at for e, at in run if isinstance(e, TaskCancelled) and e.task_id == r["task_id"]
        ]
        for at in ended + cancelled:
            assert float(str(r["at"])) <= at + 0.001, f"fenced-out attempt handed out: {r}"


@pytest.mark.timeout(240)
def test_orchestrator_killed_at_random_moments_loses_and_doubles_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receipts_dir = tmp_path / "receipts"
    receipts_dir.mkdir()
    monkeypatch.setenv("BATON_TEST_RECEIPTS", str(receipts_dir))
    state = tmp_path / "state"
    state.mkdir()
    db = store_path(state)
    example = load(EXAMPLE)
    handlers = str(REPO / "tests" / "crash_handlers.py")
    specs = [replace(a, handler=f"{handlers}:{a.handler.split(':')[1]}") for a in example.agents]
    workflow = replace(example, agents=specs)
    rng = random.Random(SEED)
    run_ids = [f"crash-{SEED}-{n}" for n in range(CYCLES)]

    async def scenario() -> int:
        server = EmbeddedNats(tmp_path / "nats-home")
        url = await server.start()
        agents = AgentProcesses(tmp_path / "logs")
        orchestrator = OrchestratorProcess(state, url)
        interrupted = 0
        try:
            for spec in specs:
                agents.start(spec, url, REPO, heartbeat_s=0.2)
            orchestrator.start()
            for run_id in run_ids:
                await _start_run(url, workflow, run_id)
                await asyncio.sleep(rng.uniform(0.0, 0.4))
                orchestrator.kill()
                interrupted += _last_type(db, run_id) not in journal.ENDINGS
                orchestrator.start()
                if rng.random() < 0.25:  # and now and then once more, while it recovers
                    await asyncio.sleep(rng.uniform(0.0, 0.8))
                    orchestrator.kill()
                    orchestrator.start()
                await _until_ended(db, run_id, timeout=60)
        finally:
            orchestrator.stop()
            agents.stop()
            server.stop()
        return interrupted

    interrupted = asyncio.run(scenario())
    print(f"crash test: seed {SEED}, {interrupted}/{CYCLES} kills inside a run")
    assert interrupted >= CYCLES // 2, f"only {interrupted} kills landed inside a run"

    async def read() -> tuple[dict[str, list[tuple[RunEvent, float]]], bool]:
        store = await SqliteEventStore.open(db)
        try:
            events = {}
            for run_id in run_ids:
                stored = await store.read_stream(journal.run_stream(run_id))
                events[run_id] = [(journal.decode_run_event(s), s.recorded_at) for s in stored]
            return events, (await store.verify()).ok
        finally:
            await store.close()

    events, chain_ok = asyncio.run(read())
    assert chain_ok
    for run_id in run_ids:
        kinds = [type(e).__name__ for e, _ in events[run_id]]
        assert kinds[-1] == "RunCompleted", (run_id, kinds)
        done = Counter(e.task_id for e, _ in events[run_id] if isinstance(e, TaskSucceeded))
        assert done == Counter(TASKS), (run_id, done)
    receipts = [
        json.loads(line)
        for path in receipts_dir.glob("*.jsonl")
        for line in path.read_text().splitlines()
    ]
    assert {r["run_id"] for r in receipts} == set(run_ids)
    _check_receipts(receipts, events)
