"""The tool registry and gateway without I/O: schemas from type hints, strict argument
decoding, and a gateway that never runs a call outside the caller's contract, budget or
approval, and records request, decision and outcome in that order.

The recorder here is a list (the gateway's own port, not the bus); that records reach
the event log through the real inbox is tested in tests/test_llm_integration.py.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest

from agents.errors import (
    ToolArgumentsInvalid,
    ToolDefinitionError,
    ToolDenied,
    ToolFailed,
    ToolRefused,
)
from agents.gateway import ApprovalPolicy, PolicyApprover, ToolGateway, Verdict
from agents.tools import Tool, ToolRegistry
from bus.contracts import Budget, RoleContract
from bus.protocol import ToolCallRecord

ran: list[tuple[str, dict[str, Any]]] = []
registry = ToolRegistry()


@registry.tool(description="Search the web for a query.")
async def web_search(query: str, limit: int = 3) -> list[str]:
    ran.append(("web_search", {"query": query, "limit": limit}))
    return [f"{query} #{i}" for i in range(limit)]


@registry.tool(risk="high", needs_approval=True)
async def send_email(to: str, body: str) -> str:
    """Send an email."""
    ran.append(("send_email", {"to": to}))
    return "sent"


@registry.tool(risk="low", needs_approval=True)
async def read_file(path: str) -> str:
    ran.append(("read_file", {"path": path}))
    return "contents"


@registry.tool()
async def explode() -> None:
    raise RuntimeError("boom")


class Records:
    def __init__(self) -> None:
        self.records: list[ToolCallRecord] = []

    async def record(self, record: ToolCallRecord) -> None:
        self.records.append(record)

    def phases(self) -> list[tuple[str, str]]:
        return [(r.tool, r.phase) for r in self.records]


def gateway(
    tools: list[str], *, calls: int = 0, approver: Any = None
) -> tuple[ToolGateway, Records]:
    records = Records()
    contract = RoleContract(name="r", tools=tools, budget=Budget(tool_calls=calls))
    ids = iter(f"c{i}" for i in range(100))
    g = ToolGateway(
        registry,
        contract,
        approver or PolicyApprover("medium"),
        records,
        run_id="run1",
        task_id="t1",
        attempt=1,
        agent_id="a1",
        new_id=lambda: next(ids),
    )
    return g, records


@pytest.fixture(autouse=True)
def _clear() -> None:
    ran.clear()


def test_a_tool_schema_comes_from_its_type_hints() -> None:
    tool = registry.get("web_search")
    assert tool.description == "Search the web for a query."
    assert tool.parameters() == {
        "type": "object",
        "properties": {"query": {"type": "string"}, "limit": {"type": "integer", "default": 3}},
        "required": ["query"],
        "additionalProperties": False,
    }
    assert tool.openai_spec()["function"]["name"] == "web_search"
    assert registry.get("send_email").description == "Send an email."
    assert registry.get("send_email").risk == "high"


def test_bad_tool_definitions_are_refused() -> None:
    r = ToolRegistry()

    def sync(x: int) -> int:
        return x

    async def unhinted(x):  # type: ignore[no-untyped-def]
        return x

    async def star(*args: int) -> None:
        pass

    with pytest.raises(ToolDefinitionError, match="async"):
        r.add(sync)  # type: ignore[arg-type]
    with pytest.raises(ToolDefinitionError, match="no type hint"):
        r.add(unhinted)
    with pytest.raises(ToolDefinitionError, match=r"\*args"):
        r.add(star)
    with pytest.raises(ToolDefinitionError, match="letters"):
        r.add(web_search, name="web search")
    with pytest.raises(ToolDefinitionError, match="risk"):
        r.add(web_search, risk="extreme")  # type: ignore[arg-type]
    r.add(web_search)
    with pytest.raises(ToolDefinitionError, match="already registered"):
        r.add(web_search)


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ('{"query": 3}', "Expected `str`, got `int` - at `$.query`"),
        ('{"limit": 2}', "missing required field `query`"),
        ('{"query": "x", "shell": "rm"}', "unknown field `shell`"),
        ("[1]", "Expected `object`"),
        ("not json", "malformed"),
    ],
)
def test_arguments_decode_strictly_naming_the_bad_field(raw: str, words: str) -> None:
    with pytest.raises(ToolArgumentsInvalid) as info:
        registry.get("web_search").decode(raw)
    assert words in str(info.value)


def test_a_call_within_the_contract_runs_and_is_recorded() -> None:
    g, records = gateway(["web_search"])
    result = asyncio.run(g.call("web_search", '{"query": "nats"}'))
    assert result == ["nats #0", "nats #1", "nats #2"]
    assert ran == [("web_search", {"query": "nats", "limit": 3})]
    assert records.phases() == [("web_search", "requested"), ("web_search", "succeeded")]
    assert {(r.run_id, r.task_id, r.attempt, r.agent_id, r.call_id) for r in records.records} == {
        ("run1", "t1", 1, "a1", "c0")
    }
    assert records.records[0].arguments == '{"query": "nats"}'


def test_a_call_outside_the_contract_never_runs() -> None:
    g, records = gateway(["web_search"])
    with pytest.raises(ToolRefused, match="not allowed by the 'r' contract"):
        asyncio.run(g.call("send_email", '{"to": "x", "body": "y"}'))
    assert ran == []
    assert records.phases() == [("send_email", "requested"), ("send_email", "refused")]
    assert g.calls_made == 0


def test_an_unregistered_tool_and_bad_arguments_never_run() -> None:
    g, records = gateway(["web_search", "ghost"])
    with pytest.raises(ToolRefused, match="no such tool"):
        asyncio.run(g.call("ghost", "{}"))
    with pytest.raises(ToolArgumentsInvalid, match="query"):
        asyncio.run(g.call("web_search", '{"query": ["a"]}'))
    with pytest.raises(ToolRefused):
        asyncio.run(g.call("web search; rm -rf", "{}"))
    assert ran == []
    assert [p for _, p in records.phases()] == ["requested", "refused"] * 3
    assert records.records[-1].tool == "(invalid name)"


def test_the_tool_call_budget_is_never_exceeded() -> None:
    g, records = gateway(["web_search"], calls=2)
    for _ in range(2):
        asyncio.run(g.call("web_search", '{"query": "q", "limit": 1}'))
    with pytest.raises(ToolRefused, match="budget of 2"):
        asyncio.run(g.call("web_search", '{"query": "q"}'))
    assert len(ran) == 2
    assert records.records[-1].phase == "refused"


def test_approval_by_policy_approves_low_risk_and_denies_high() -> None:
    g, records = gateway(["send_email", "read_file"])
    assert asyncio.run(g.call("read_file", '{"path": "a"}')) == "contents"
    with pytest.raises(ToolDenied, match=r"policy:risk<=medium: risk high is over medium"):
        asyncio.run(g.call("send_email", '{"to": "x", "body": "y"}'))
    assert ran == [("read_file", {"path": "a"})]
    assert records.phases() == [
        ("read_file", "requested"),
        ("read_file", "awaiting"),
        ("read_file", "approved"),
        ("read_file", "succeeded"),
        ("send_email", "requested"),
        ("send_email", "awaiting"),
        ("send_email", "denied"),
    ]
    assert records.records[1].risk == "low"
    assert records.records[2].by == "policy:risk<=medium"


def test_an_approver_sees_the_request_before_the_tool_runs() -> None:
    seen: list[tuple[str, int]] = []

    class Human:
        async def decide(self, request: ToolCallRecord, tool: Tool) -> Verdict:
            seen.append((request.arguments, len(ran)))
            return Verdict(True, "alice", "looks fine")

    g, records = gateway(["send_email"], approver=Human())
    assert asyncio.run(g.call("send_email", '{"to": "bob", "body": "hi"}')) == "sent"
    assert seen == [('{"to": "bob", "body": "hi"}', 0)]
    approved = records.records[2]
    assert (approved.phase, approved.by, approved.detail) == ("approved", "alice", "looks fine")


def test_a_failing_tool_is_recorded_as_failed() -> None:
    g, records = gateway(["explode"])
    with pytest.raises(ToolFailed, match="RuntimeError: boom"):
        asyncio.run(g.call("explode", "{}"))
    assert records.phases()[-1] == ("explode", "failed")


def test_approval_policies_parse_or_say_why_not() -> None:
    assert ApprovalPolicy.parse("policy") == ApprovalPolicy("policy", "medium")
    assert ApprovalPolicy.parse("policy:high").max_risk == "high"
    assert ApprovalPolicy.parse("human:2.5").timeout_s == 2.5
    assert ApprovalPolicy.parse("deny").kind == "deny"
    for bad in ("policy:extreme", "human:soon", "human:-1", "yes", "deny:x"):
        with pytest.raises(ValueError, match="approval"):
            ApprovalPolicy.parse(bad)


def test_a_tool_call_record_round_trips_on_the_wire() -> None:
    record = ToolCallRecord("r", "t", 1, "a", "c", "tool", "awaiting", risk="high")
    data = msgspec.msgpack.encode(record)
    assert msgspec.msgpack.decode(data, type=ToolCallRecord) == record


TRACED_CALLS = """
import asyncio, json
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from agents.errors import ToolDenied, ToolRefused
from agents.gateway import PolicyApprover, ToolGateway
from bus.contracts import RoleContract
from tests.test_tools import Records, registry

exporter = InMemorySpanExporter()
provider = TracerProvider()
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
contract = RoleContract(name="r", tools=["web_search", "send_email", "read_file"])
gateway = ToolGateway(registry, contract, PolicyApprover("low"), Records(),
                      run_id="r1", task_id="t1", attempt=1, agent_id="a1")

async def main():
    await gateway.call("web_search", {"query": "q"})
    await gateway.call("read_file", {"path": "p"})
    refused = ("shell", {}, ToolRefused)
    denied = ("send_email", {"to": "x", "body": "y"}, ToolDenied)
    for name, args, error in (refused, denied):
        try:
            await gateway.call(name, args)
        except error:
            pass

asyncio.run(main())
print(json.dumps([
    (s.name, s.attributes["baton.governance.decision"], s.status.status_code.name)
    for s in exporter.get_finished_spans()
]))
"""


def test_every_governed_call_is_a_span_with_its_decision() -> None:
    """Run in a child process: the gateway uses the global tracer provider, which a
    process may set only once."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", TRACED_CALLS], capture_output=True, text=True, cwd=root, timeout=60
    )
    assert done.returncode == 0, done.stderr
    spans = [tuple(s) for s in json.loads(done.stdout)]
    assert spans == [
        ("execute_tool web_search", "allowed", "UNSET"),
        ("execute_tool read_file", "approved", "UNSET"),
        ("execute_tool shell", "refused", "ERROR"),
        ("execute_tool send_email", "denied", "ERROR"),
    ]
