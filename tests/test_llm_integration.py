"""An LLM agent as a real process on a real stack: nats-server, SQLite log, orchestrator
with role contracts, the fake OpenAI server. Tool calls are recorded as events through
the durable inbox, a human approves a call with `baton tool approve`, a forged record is
refused, and the attempt's model usage travels back on its `TaskResult`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agents.runtime import AgentRuntime
from agents.sdk import TaskContext
from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.protocol import Assignment, InboxMessage, TaskResult, ToolCallRecord, Usage
from bus.server import EmbeddedNats
from eventstore import EventQuery, EventStore
from orchestrator.cli import tool as toolcli
from orchestrator.core.events import MessageRejected
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import agentlog, journal
from tests.cluster import baton, cluster
from tests.fake_openai import FakeOpenAI

ROLES = """
[[roles]]
name = "analyst"
tools = ["lookup", "publish"]
budget = { tokens = 5000, tool_calls = 4, seconds = 60 }
concurrency = 2
"""
TOOLS = """
from agents.tools import ToolRegistry

registry = ToolRegistry()


@registry.tool()
async def lookup(topic: str) -> str:
    return f"{topic} is well studied"


@registry.tool(risk="high", needs_approval=True)
async def publish(text: str) -> str:
    return "published"
"""
SPEC = """
system_prompt = "You are an analyst. Look the topic up, publish a line, answer in JSON."
tools = "tools.py:registry"
output_schema = { type = "object", properties = { summary = { type = "string" } }, required = ["summary"] }
"""  # noqa: E501
ANSWER = json.dumps({"summary": "NATS is well studied"})


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        monkeypatch.setenv("BATON_LLM_MODEL", "fake-model")
        yield server


def files(tmp_path: Path) -> tuple[str, str]:
    (tmp_path / "roles.toml").write_text(ROLES)
    (tmp_path / "tools.py").write_text(TOOLS)
    (tmp_path / "agent.toml").write_text(SPEC)
    return str(tmp_path / "roles.toml"), str(tmp_path / "agent.toml")


async def records_of(store: EventStore, run_id: str) -> list[ToolCallRecord]:
    stored = await store.read_stream(agentlog.stream_of(run_id))
    return agentlog.tool_calls(stored)


def test_an_llm_agent_process_records_tool_calls_and_a_human_approves_one(
    tmp_path: Path, fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    roles, spec = files(tmp_path)
    fake.call("lookup", {"topic": "NATS"}).call("publish", {"text": "NATS"}).reply(ANSWER)
    monkeypatch.setenv("BATON_TOOL_APPROVAL", "human:60")
    state_dir = tmp_path / "state"

    async def scenario() -> None:
        async with cluster(state_dir, contracts=roles) as c:
            assert c.stack.server is not None
            assert c.stack.server.secured, "a governed stack's server makes everyone log in"
            await c.add_agents([AgentSpec("analyst", spec, capacity=2)])
            workflow = WorkflowSpec("llm", [StepSpec("analyse", "analyst", timeout_s=60)])
            run_id = await c.orchestrator.start_run(workflow, {"topic": "NATS"})
            async with asyncio.timeout(30):
                while not (pending := await toolcli.waiting(state_dir, run_id)):
                    await asyncio.sleep(0.05)
            (call,) = pending
            listed = await asyncio.to_thread(
                subprocess.run,
                baton("tool", "pending", "--json", "--state-dir", str(state_dir)),
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert listed.returncode == 0, listed.stderr
            (shown,) = [json.loads(line) for line in listed.stdout.splitlines()]
            assert (shown["call_id"], shown["tool"], shown["risk"]) == (
                call.call_id,
                "publish",
                "high",
            )
            assert (call.tool, call.risk, json.loads(call.arguments)) == (
                "publish", "high", {"text": "NATS"}
            )  # fmt: skip
            approve = await asyncio.to_thread(
                subprocess.run,
                baton("tool", "approve", call.call_id, "--by", "alice", "--reason", "ok",
                      "--state-dir", str(state_dir)),
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert approve.returncode == 0, approve.stderr
            assert f"tool call {call.call_id} approved" in approve.stdout
            again = await asyncio.to_thread(
                subprocess.run,
                baton("tool", "deny", call.call_id, "--state-dir", str(state_dir)),
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            state = await c.orchestrator.wait(run_id, timeout=60)
            records = await records_of(c.stack.store, run_id)
            audited = await c.stack.store.query(EventQuery(type_glob="tool.call"))

        assert again.returncode == 1, "a decided call takes no second decision"
        assert state.status == "completed"
        assert state.result == {"analyse": {"summary": "NATS is well studied"}}
        phases = [(r.tool, r.phase) for r in records]
        assert phases == [
            ("lookup", "requested"),
            ("lookup", "succeeded"),
            ("publish", "requested"),
            ("publish", "awaiting"),
            ("publish", "approved"),
            ("publish", "succeeded"),
        ]
        approved = records[4]
        assert (approved.by, approved.detail) == ("alice", "ok")
        assert {r.agent_id for r in records} == {state.tasks["analyse"].agent_id}
        assert len(audited) == len(records)
        assert {e.actor for e in audited} == {state.tasks["analyse"].agent_id}
        assert all(e.correlation_id == run_id for e in audited)

    asyncio.run(scenario())


def test_a_forged_tool_record_is_refused_and_audited(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            await c.add_agents([AgentSpec("worker", "agents.builtin:noop")])
            run_id = await c.orchestrator.start_run(WorkflowSpec("w", [StepSpec("s", "worker")]))
            await c.orchestrator.wait(run_id, timeout=30)
            bus = await Bus.connect(c.stack.nats_url, name="forger")
            forged = ToolCallRecord(run_id, "s", 1, "someone-else", "c1", "lookup", "succeeded")
            await bus.publish_durable(
                subjects.inbox(run_id, "forger"), encode(forged), msg_id="forged-1"
            )
            outsider = ToolCallRecord(run_id, "s", 1, "forger", "c2", "lookup", "succeeded")
            await bus.publish_durable(
                subjects.inbox(run_id, "forger"), encode(outsider), msg_id="forged-2"
            )
            await bus.close()
            async with asyncio.timeout(30):
                while True:
                    system = await c.stack.store.read_stream(journal.SYSTEM_STREAM)
                    rejected = [
                        e for e in map(journal.decode_any, system) if isinstance(e, MessageRejected)
                    ]
                    if len(rejected) == 2:
                        break
                    await asyncio.sleep(0.05)
            records = await records_of(c.stack.store, run_id)

        assert records == []
        assert "record by someone-else sent as forger" in rejected[0].reason
        assert f"forger has no task in run '{run_id}'" in rejected[1].reason

    asyncio.run(scenario())


def test_model_usage_travels_back_on_the_task_result(tmp_path: Path) -> None:
    """The runtime reports what the handler charged to `task.usage` on its TaskResult,
    read here straight from the durable inbox stream of a real server."""

    async def charge(task: TaskContext) -> dict[str, str]:
        task.usage.add(120, 30)
        task.usage.add(80, 10)
        return {"ok": "yes"}

    async def scenario() -> TaskResult:
        server = EmbeddedNats(tmp_path)
        url = await server.start()
        bus = await Bus.connect(url, name="test")
        try:
            await bus.ensure_inbox()
            consumer = await bus.inbox_consumer("usage-test")
            runtime = AgentRuntime(bus, agent_id="agent-1", role="r", handler=charge)
            serving = asyncio.create_task(runtime.run())
            await asyncio.sleep(0.1)
            assignment = Assignment("run1", "t1", 1, "lease", "s", "r", {}, 10.0)
            await bus.request(subjects.assign("agent-1"), encode(assignment), 5.0)
            async with asyncio.timeout(30):
                while not (batch := await consumer.fetch(1, timeout=1.0)):
                    pass
            runtime.stop()
            await serving
            decoder: Decoder[InboxMessage] = Decoder(InboxMessage)
            message = decoder.decode(batch[0].data)
            assert isinstance(message, TaskResult)
            return message
        finally:
            await bus.close()
            server.stop()

    result = asyncio.run(scenario())
    assert result.usage == Usage(input_tokens=200, output_tokens=40)
    assert result.output == {"ok": "yes"}


def test_baton_tool_says_when_nobody_waits(tmp_path: Path) -> None:
    async def scenario() -> subprocess.CompletedProcess[str]:
        server = EmbeddedNats(tmp_path)
        url = await server.start()
        try:
            return await asyncio.to_thread(
                subprocess.run,
                baton("tool", "approve", "nope", "--nats", url),
                capture_output=True, text=True, timeout=60,
            )  # fmt: skip
        finally:
            server.stop()

    done = asyncio.run(scenario())
    assert done.returncode == 1
    assert "no agent is waiting on tool call nope" in done.stderr
    bad = subprocess.run(
        baton("tool", "approve", "a.b", "--nats", "nats://127.0.0.1:1"),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "invalid subject token" in bad.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "orchestrator", "tool", "pending", "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert listed.returncode == 2
    assert "no event store" in listed.stderr
