"""Agent liveness against a real nats-server and real agent processes (issue 13,
findings 5 and 7): an agent id is owned by one live process (a second `baton agent
--id` with it is refused, audited, and runs nothing, while the first keeps working; a
restarted agent gets its id back), an orchestrator cut off from the bus for longer
than the TTL does not declare the agents lost nor re-run their work, and the heartbeat
interval and TTL options of `baton serve` take effect."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path
from typing import IO

import pytest

from agents.runtime import AgentRuntime
from agents.sdk import TaskContext
from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming
from bus.errors import NoResponders, RequestFailed
from bus.protocol import AssignAck, Assignment, Heartbeat, HeartbeatAck
from bus.server import EmbeddedNats, die_with_parent
from orchestrator.core.events import AgentLost, AgentRefused, TaskAttemptFailed
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.api import AgentsReply, AgentsRequest
from orchestrator.service.serve import submit
from tests.cluster import REPO, Cluster, baton, cluster
from tests.processes import terminate

SLOW = "tests.crash_handlers:slow"
_ack: Decoder[HeartbeatAck] = Decoder(HeartbeatAck)
_assign_ack: Decoder[AssignAck] = Decoder(AssignAck)
_agents: Decoder[AgentsReply] = Decoder(AgentsReply)


def _agent(c: Cluster, agent_id: str, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """`baton agent --id <agent_id>` as its own process, as a person would start it."""
    command = baton("agent", "--role", "worker", "--id", agent_id, "--handler", SLOW,
                    "--capacity", "2", "--heartbeat", "0.2",
                    "--nats", c.stack.nats_url)  # fmt: skip
    return subprocess.Popen(
        command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
    )


def _receipts(folder: Path) -> list[dict[str, object]]:
    """Every attempt a handler started, with the process that ran it."""
    lines = []
    for file in folder.glob("*.jsonl"):
        for line in file.read_text().splitlines():
            lines.append({**json.loads(line), "pid": int(file.stem)})
    return lines


async def _system(c: Cluster) -> list[object]:
    return [journal.decode_any(e) for e in await c.stack.store.read_stream(journal.SYSTEM_STREAM)]


def test_a_second_process_with_a_live_agents_id_is_refused_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    receipts = tmp_path / "receipts"
    receipts.mkdir()
    monkeypatch.setenv("BATON_TEST_RECEIPTS", str(receipts))
    workflow = WorkflowSpec("dup", [StepSpec("t", "worker", fan_out=16, params={"seconds": 0.4})])

    async def scenario() -> None:
        async with cluster(tmp_path / "state") as c:
            with (
                (tmp_path / "first.log").open("wb") as log1,
                (tmp_path / "second.log").open("wb") as log2,
            ):
                first = _agent(c, "dup", log1)
                second: subprocess.Popen[bytes] | None = None
                try:
                    await c.orchestrator.wait_for_agents(Counter(worker=1), 30)
                    run_id = await c.orchestrator.start_run(workflow)
                    await c.until(run_id, lambda s: s.tasks["t[0]"].status != "pending")
                    second = _agent(c, "dup", log2)  # while the first has work going out
                    code = await asyncio.to_thread(second.wait, 30)
                    assert first.poll() is None, "the first process keeps working"
                    state = await c.orchestrator.wait(run_id, timeout=60)
                    system = await _system(c)
                    run_events = await c.stack.store.read_stream(journal.run_stream(run_id))
                finally:
                    terminate(first)
                    if second is not None:
                        terminate(second)

        assert code != 0
        said = (tmp_path / "second.log").read_text().splitlines()
        errors = [line for line in said if line.startswith("baton agent: error:")]
        assert errors == [
            "baton agent: error: agent id 'dup' is in use by another live agent process "
            "(refused by the orchestrator); stop that one or give this one another --id"
        ], said
        refused = [e for e in system if isinstance(e, AgentRefused)]
        assert len(refused) == 1, refused
        assert refused[0].agent_id == "dup"
        assert "duplicate agent id" in refused[0].reason
        assert state.status == "completed"
        assert all(t.attempt == 1 for t in state.tasks.values())
        failed = [
            e for e in map(journal.decode_any, run_events) if isinstance(e, TaskAttemptFailed)
        ]
        assert not failed
        ran = _receipts(receipts)
        assert Counter(str(r["task_id"]) for r in ran) == Counter(f"t[{i}]" for i in range(16))
        assert {r["pid"] for r in ran} == {first.pid}, "the refused process ran nothing"

    asyncio.run(scenario())


def test_a_restarted_agent_gets_its_id_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Killed, and started again at once (within the TTL): the new process waits until
    the old one is lost, then owns the id and works (a guard: refusing duplicates must
    not refuse a restart)."""
    receipts = tmp_path / "receipts"
    receipts.mkdir()
    monkeypatch.setenv("BATON_TEST_RECEIPTS", str(receipts))
    workflow = WorkflowSpec("again", [StepSpec("t", "worker", fan_out=2, params={"seconds": 0.1})])

    async def scenario() -> None:
        async with cluster(tmp_path / "state") as c:
            with (
                (tmp_path / "old.log").open("wb") as log1,
                (tmp_path / "new.log").open("wb") as log2,
            ):
                old = _agent(c, "again", log1)
                await c.orchestrator.wait_for_agents(Counter(worker=1), 30)
                (was,) = {hb.instance for hb in c.orchestrator.agents()}
                os.kill(old.pid, signal.SIGKILL)
                old.wait()
                new = _agent(c, "again", log2)
                try:
                    async with asyncio.timeout(30):  # the new process owns the id
                        while {hb.instance for hb in c.orchestrator.agents()} in ({was}, set()):
                            await asyncio.sleep(0.02)
                    run_id = await c.orchestrator.start_run(workflow)
                    state = await c.orchestrator.wait(run_id, timeout=60)
                    assert new.poll() is None, (tmp_path / "new.log").read_text()
                finally:
                    terminate(new)
        assert state.status == "completed", (state.reason, state.tasks)
        assert {r["pid"] for r in _receipts(receipts)} == {new.pid}

    asyncio.run(scenario())


def test_an_orchestrator_cut_off_longer_than_the_ttl_loses_no_agent_and_reruns_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bus goes away (the nats-server stops) for several TTLs while four attempts are
    in flight, and comes back on the same port: everyone reconnects, the agents are heard
    again within the grace, and each attempt's result is the one recorded."""
    receipts = tmp_path / "receipts"
    receipts.mkdir()
    monkeypatch.setenv("BATON_TEST_RECEIPTS", str(receipts))
    spec = AgentSpec(role="worker", handler=SLOW, count=2, capacity=2)
    workflow = WorkflowSpec("cut", [StepSpec("t", "worker", fan_out=4, params={"seconds": 6})])

    async def scenario() -> None:
        async with cluster(tmp_path / "state", agent_ttl=1.5) as c:
            await c.add_agents([spec], heartbeat_s=0.2)
            run_id = await c.orchestrator.start_run(workflow)
            state = await c.until(run_id, lambda s: all(t.agent_id for t in s.tasks.values()))
            for task in state.tasks.values():  # every attempt is in its agent's hands
                await c.until_held(task.agent_id, run_id, task.task_id, 1)
            assert c.stack.server is not None
            c.stack.server.stop()
            async with asyncio.timeout(30):
                while c.stack.bus.connected:
                    await asyncio.sleep(0.02)
            await asyncio.sleep(4.0)  # over two TTLs with no heartbeat heard
            await c.stack.server.start()
            state = await c.orchestrator.wait(run_id, timeout=60)
            system = await _system(c)
            run_events = await c.stack.store.read_stream(journal.run_stream(run_id))

        assert not [e for e in system if isinstance(e, AgentLost)]
        assert state.status == "completed"
        events = [journal.decode_any(e) for e in run_events]
        assert not [e for e in events if isinstance(e, TaskAttemptFailed)]
        assert {t.task_id: t.attempt for t in state.tasks.values()} == {
            f"t[{i}]": 1 for i in range(4)
        }, [(type(e).__name__, getattr(e, "task_id", "")) for e in events]
        ran = Counter(str(r["task_id"]) for r in _receipts(receipts))
        assert ran == Counter(f"t[{i}]" for i in range(4)), "no attempt ran twice"

    asyncio.run(scenario())


def _serve(state: Path, *options: str, env: dict[str, str]) -> tuple[subprocess.Popen[str], str]:
    """`baton serve` with these options, and its NATS URL once it serves."""
    process = subprocess.Popen(
        baton("serve", "--state-dir", str(state), *options),
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **env},
        preexec_fn=die_with_parent,
    )
    assert process.stdout is not None
    said = ""  # a warning may come first (the test's bus asks for no login)
    while "serving on NATS" not in (line := process.stdout.readline()):
        said += line
        if not line or said.count("\n") > 20:
            process.kill()
            raise AssertionError(f"baton serve did not start: {said}{process.stdout.read()}")
    return process, line.split("serving on NATS ", 1)[1].split(",", 1)[0]


def test_the_heartbeat_interval_and_ttl_options_take_effect(tmp_path: Path) -> None:
    """`--agent-ttl` and `$BATON_HEARTBEAT_S` reach what the orchestrator tells agents in
    its answer to a heartbeat, and an agent given no interval keeps the one it is told."""
    server = EmbeddedNats(tmp_path / "nats")  # an open bus: the probe heartbeats as anyone
    process, url = _serve(
        tmp_path, "--nats", asyncio.run(server.start()), "--agent-ttl", "1.5",
        env={"BATON_HEARTBEAT_S": "0.3"},
    )  # fmt: skip

    async def scenario() -> tuple[HeartbeatAck, float]:
        bus = await Bus.connect(url, name="probe")
        agent_bus = await Bus.connect(url, name="follower")
        runtime = AgentRuntime(agent_bus, agent_id="follower", role="worker", handler=_noop)
        serving = asyncio.create_task(runtime.run())
        try:
            answers: asyncio.Queue[HeartbeatAck] = asyncio.Queue()

            async def on_ack(msg: Incoming) -> None:
                await answers.put(_ack.decode(msg.data))

            await bus.subscribe(subjects.registry("probe"), on_ack)
            await bus.flush()
            beat = Heartbeat("probe", "worker", ["worker"], 1, 0, instance="probe-1")
            await bus.publish(subjects.heartbeat("probe"), encode(beat))
            ack = await asyncio.wait_for(answers.get(), 30)
            async with asyncio.timeout(30):
                while runtime.verdict != "owner":
                    await asyncio.sleep(0.02)
            return ack, runtime.heartbeat_s
        finally:
            runtime.stop()
            await serving
            await agent_bus.close()
            await bus.close()

    try:
        ack, followed = asyncio.run(scenario())
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        server.stop()
    assert ack == HeartbeatAck("probe-1", "owner", heartbeat_s=0.3, ttl_s=1.5)
    assert followed == 0.3


async def _noop(task: object) -> dict[str, object]:
    return {}


@pytest.mark.parametrize(
    ("options", "said"),
    [
        (["--agent-ttl", "0.4", "--heartbeat", "0.5"], "must be longer than the heartbeat"),
        (["--heartbeat", "0"], "heartbeat interval must be a positive number"),
    ],
)
def test_timings_that_cannot_work_are_refused_in_one_line(
    tmp_path: Path, options: list[str], said: str
) -> None:
    done = subprocess.run(
        baton("serve", "--state-dir", str(tmp_path), *options),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("baton serve: error:")
    assert said in lines[0]


def test_a_process_takes_and_answers_only_what_is_sent_to_its_own_instance(
    tmp_path: Path,
) -> None:
    """Two processes share an id's subjects until one is refused: an assignment for the
    owner's instance must be answered by the owner alone, or its reply (and its work) could
    come from the other."""
    ran: list[str] = []

    async def handler(task: TaskContext) -> dict[str, object]:
        ran.append(task.task_id)
        return {}

    async def scenario() -> tuple[AssignAck | None, AssignAck | None]:
        server = EmbeddedNats(tmp_path / "nats")
        url = await server.start()
        agent_bus = await Bus.connect(url, name="one")
        bus = await Bus.connect(url, name="sender")
        await bus.ensure_inbox()  # where the result goes, with no orchestrator to ask
        runtime = AgentRuntime(agent_bus, agent_id="one", role="worker", handler=handler)
        serving = asyncio.create_task(runtime.run())
        try:

            async def assign(task_id: str, instance: str) -> AssignAck | None:
                a = Assignment("r", task_id, 1, "lease", "s", "worker", {}, 5.0, instance=instance)
                async with asyncio.timeout(30):
                    while True:
                        try:
                            reply = await bus.request(subjects.assign("one"), encode(a), 1.0)
                        except NoResponders:  # the agent has not subscribed yet
                            await asyncio.sleep(0.02)
                        except RequestFailed:  # subscribed, and silent
                            return None
                        else:
                            return _assign_ack.decode(reply)

            foreign = await assign("for-another", "someone-else")
            own = await assign("for-me", runtime.instance)
            async with asyncio.timeout(30):
                while not ran:
                    await asyncio.sleep(0.02)
            return foreign, own
        finally:
            runtime.stop()
            await serving
            await agent_bus.close()
            await bus.close()
            server.stop()

    foreign, own = asyncio.run(scenario())
    assert foreign is None, "no answer for another instance"
    assert own == AssignAck(True)
    assert ran == ["for-me"]


def _types(db: Path, stream: str) -> list[str]:
    with sqlite3.connect(db, timeout=5) as conn:
        rows = conn.execute(
            "SELECT type FROM events WHERE stream = ? ORDER BY version", (stream,)
        ).fetchall()
    return [str(r[0]) for r in rows]


def test_an_orchestrator_paused_longer_than_the_ttl_loses_no_agent_and_reruns_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`baton serve` stopped (SIGSTOP) for over two TTLs while four attempts are in flight,
    then continued: the agents' heartbeats wait unread in its socket meanwhile, so their
    silence is its own, and nothing is lost or run again."""
    receipts = tmp_path / "receipts"
    receipts.mkdir()
    monkeypatch.setenv("BATON_TEST_RECEIPTS", str(receipts))
    state = tmp_path / "state"
    workflow = WorkflowSpec("paused", [StepSpec("t", "worker", fan_out=4, params={"seconds": 6})])
    out = (tmp_path / "serve.log").open("wb")
    server = EmbeddedNats(tmp_path / "nats")  # a bus of its own: the agents join it by hand
    serve = subprocess.Popen(
        baton("serve", "--state-dir", str(state), "--agent-ttl", "1.5", "--heartbeat", "0.3",
              "--nats", asyncio.run(server.start())),
        cwd=REPO, stdout=out, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
    )  # fmt: skip
    agents: list[subprocess.Popen[bytes]] = []

    async def scenario() -> str:
        async with asyncio.timeout(60):
            while "serving on NATS" not in (said := (tmp_path / "serve.log").read_text()):
                await asyncio.sleep(0.05)
        url = said.split("serving on NATS ", 1)[1].split(",", 1)[0]
        for n in (1, 2):
            command = baton("agent", "--role", "worker", "--id", f"w{n}", "--handler", SLOW,
                            "--capacity", "2", "--nats", url)  # fmt: skip
            agents.append(subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                           preexec_fn=die_with_parent))  # fmt: skip
        accepted = await _submit_when_served(url, workflow)
        async with asyncio.timeout(60):  # every attempt is in its agent's hands
            while len(_receipts(receipts)) < 4:
                await asyncio.sleep(0.05)
        serve.send_signal(signal.SIGSTOP)
        await asyncio.sleep(4.0)  # over two TTLs in which it hears nothing
        serve.send_signal(signal.SIGCONT)
        db = state / "events.db"
        async with asyncio.timeout(60):
            while _types(db, journal.run_stream(accepted))[-1:] != ["run.completed"]:
                await asyncio.sleep(0.1)
        return accepted

    try:
        run_id = asyncio.run(scenario())
    finally:
        serve.send_signal(signal.SIGCONT)
        for process in [*agents, serve]:
            terminate(process)
        server.stop()
        out.close()
    db = state / "events.db"
    assert "agent.lost" not in _types(db, journal.SYSTEM_STREAM)
    assert "task.attempt_failed" not in _types(db, journal.run_stream(run_id))
    ran = Counter(str(r["task_id"]) for r in _receipts(receipts))
    assert ran == Counter(f"t[{i}]" for i in range(4)), "no attempt ran twice"


async def _submit_when_served(url: str, workflow: WorkflowSpec) -> str:
    """Submit once the agents are there to take the run's tasks."""
    async with asyncio.timeout(60):
        bus = await Bus.connect(url, name="probe")
        try:
            while True:
                reply = await bus.request(subjects.API_AGENTS, encode(AgentsRequest()), 5)
                if len(_agents.decode(reply).agents) == 2:
                    break
                await asyncio.sleep(0.05)
        finally:
            await bus.close()
    return (await submit(url, workflow)).run_id
