"""MCP tools under governance (issue 19): a real MCP server, built with the official `mcp`
SDK and served over stdio (tests/mcp_server.py), offers two tools; an agent whose role's
contract allows one of them calls both through its gateway. The allowed call reaches the
server and is recorded in the run's `agents-` stream; the other is refused by the gateway
and never reaches the server (the server leaves a file per call it runs). Arguments are
checked against the schema the server gave, before the server sees them."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

import msgspec
import pytest

from agents.errors import ToolFailed, ToolRefused
from agents.gateway import PolicyApprover, ToolGateway
from agents.mcp_tools import McpServer, McpServerError
from agents.tools import ToolRegistry
from bus.contracts import RoleContract
from bus.protocol import ToolCallRecord
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from tests.asgi import loopback
from tests.cluster import REPO, cluster

pytestmark = pytest.mark.interop

ROLES = """
[[roles]]
name = "librarian"
capabilities = ["librarian"]
tools = ["lookup"]
budget = { tool_calls = 5 }
"""


def test_an_mcp_tool_outside_the_contract_never_reaches_the_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = tmp_path / "calls"
    calls.mkdir()
    monkeypatch.setenv("MCP_CALLS_DIR", str(calls))
    roles = tmp_path / "roles.toml"
    roles.write_text(ROLES)

    async def scenario() -> tuple[dict[str, object], list[tuple[str, str, str]]]:
        async with cluster(tmp_path / "state", contracts=str(roles)) as c:
            spec = AgentSpec("librarian", "tests/mcp_handlers.py:use_both")
            await c.add_agents([spec], base=REPO)
            workflow = WorkflowSpec("mcp", [StepSpec("ask", "librarian", timeout_s=60)])
            run_id = await c.orchestrator.start_run(workflow)
            state = await c.until(run_id, lambda s: s.status != "running", timeout=60)
            assert state.status == "completed", state.reason
            assert state.result is not None
            stored = await c.stack.store.read_stream(f"agents-{run_id}")
            records = [msgspec.msgpack.decode(e.data) for e in stored if e.type == "tool.call"]
            return state.result["ask"], [
                (r["tool"], r["phase"], r.get("detail", "")) for r in records
            ]

    output, records = asyncio.run(scenario())
    assert output["lookup"] == {"result": "lease: a word (3 senses)"}
    assert str(output["wipe"]).startswith("ToolRefused: not allowed by the 'librarian' contract")
    assert "invalid arguments at term" in str(output["bad"])
    assert output["again"] == {"result": "fence: a word (1 senses)"}
    ran = {p.name.split("-")[0]: p.read_text().split()[0] for p in calls.iterdir()}
    served = [p.read_text() for p in calls.iterdir()]
    assert sorted(p.split()[1] for p in served) == ["fence", "lease"], (
        "only the allowed calls with good arguments reached the server"
    )
    assert set(ran) == {"lookup"}
    assert len({p.split()[0] for p in served}) == 1, "one server process served both"
    assert [(tool, phase) for tool, phase, _ in records] == [
        ("lookup", "requested"),
        ("lookup", "succeeded"),
        ("wipe", "requested"),
        ("wipe", "refused"),
        ("lookup", "requested"),
        ("lookup", "refused"),
        ("lookup", "requested"),
        ("lookup", "succeeded"),
    ]


def test_an_mcp_server_that_dies_is_a_clear_error_not_a_hang() -> None:
    dead = McpServer(command=sys.executable, args=["-c", "import sys; sys.exit(3)"], timeout_s=10)
    registry = ToolRegistry()
    registry.mcp(dead)
    started = time.monotonic()
    with pytest.raises(McpServerError, match=r"MCP server .*python"):
        asyncio.run(registry.resolve())
    assert time.monotonic() - started < 10, "failed at once, not at its timeout"
    assert registry.names() == []


CRASHING = "\n".join(
    [
        "import os",
        "from mcp.server.mcpserver import MCPServer",
        "server = MCPServer('crashing')",
        "@server.tool()",
        "def crash(why: str) -> str:",
        "    os._exit(1)  # the server's process ends in the middle of the call",
        "@server.tool()",
        "def pid() -> int:",
        "    return os.getpid()",
        "server.run()",
    ]
)


def test_an_mcp_server_that_dies_mid_call_fails_that_call_and_the_next_starts_anew() -> None:
    crashing = McpServer(command=sys.executable, args=["-c", CRASHING], timeout_s=20)

    async def scenario() -> tuple[ToolFailed, Records, float, list[object]]:
        registry = ToolRegistry()
        registry.mcp(crashing)
        await registry.resolve()
        records = Records()
        gateway = ToolGateway(
            registry, RoleContract(name="r", tools=["crash", "pid"]), PolicyApprover(),
            records, run_id="r1", task_id="t1", attempt=1, agent_id="a-1",
        )  # fmt: skip
        before = await gateway.call("pid", {})
        started = time.monotonic()
        with pytest.raises(ToolFailed) as failed:
            await gateway.call("crash", {"why": "test"})
        took = time.monotonic() - started
        after = await gateway.call("pid", {})  # a new session, a new server process
        return failed.value, records, took, [before, after]

    failed, records, took, pids = asyncio.run(scenario())
    assert "McpServerError" in failed.reason
    assert took < 20, "failed when the server died, not at its timeout"
    assert pids[0] != pids[1], "the next call started the server again"
    assert [(r.tool, r.phase) for r in records.records] == [
        ("pid", "requested"),
        ("pid", "succeeded"),
        ("crash", "requested"),
        ("crash", "failed"),
        ("pid", "requested"),
        ("pid", "succeeded"),
    ]


class Records:
    """The gateway's records, kept in order (a recorder is all the gateway needs)."""

    def __init__(self) -> None:
        self.records: list[ToolCallRecord] = []

    async def record(self, record: ToolCallRecord) -> None:
        self.records.append(record)


def test_an_mcp_server_over_streamable_http_under_the_gateway(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same server over streamable HTTP, its tools renamed with a prefix: the contract
    names the Baton name; the refused call never reaches the server."""
    monkeypatch.setenv("MCP_CALLS_DIR", str(tmp_path))
    from tests import mcp_server

    async def scenario() -> tuple[object, Records, list[str]]:
        app = mcp_server.server.streamable_http_app()
        async with loopback(app, lifespan="on") as url:
            registry = ToolRegistry()
            registry.mcp(McpServer(url=f"{url}/mcp", prefix="web_", timeout_s=20))
            await registry.resolve()
            contract = RoleContract(name="reader", tools=["web_lookup"])
            records = Records()
            gateway = ToolGateway(
                registry, contract, PolicyApprover(), records,
                run_id="r1", task_id="t1", attempt=1, agent_id="reader-1",
            )  # fmt: skip
            result = await gateway.call("web_lookup", {"term": "fence", "limit": 2})
            with pytest.raises(ToolRefused, match="not allowed"):
                await gateway.call("web_wipe", {"path": "/"})
            return result, records, registry.names()

    result, records, names = asyncio.run(scenario())
    assert names == ["web_lookup", "web_wipe"]
    assert result == {"result": "fence: a word (2 senses)"}
    assert sorted(p.name.split("-")[0] for p in tmp_path.iterdir()) == ["lookup"]
    assert [(r.tool, r.phase) for r in records.records] == [
        ("web_lookup", "requested"),
        ("web_lookup", "succeeded"),
        ("web_wipe", "requested"),
        ("web_wipe", "refused"),
    ]
