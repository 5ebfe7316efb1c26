"""Tools served on the bus, on a governed server: a call within the contract goes through
the gateway to the tool service and back, recorded; a call outside it is refused by the
gateway and, sent around the gateway, never reaches the service because the server
refuses the publish. The service validates arguments again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agents.errors import ToolRefused
from agents.gateway import PolicyApprover, ToolGateway
from agents.tools import ToolRegistry
from agents.toolservice import ToolService
from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.contracts import RoleContract
from bus.errors import RequestFailed
from bus.permissions import agent_permissions, inbox_prefix, new_user, url_for
from bus.protocol import ToolCallRecord, ToolInvocation, ToolOutcome
from bus.server import EmbeddedNats

ran: list[str] = []
served = ToolRegistry()


@served.tool()
async def web_search(query: str) -> list[str]:
    ran.append(f"web_search:{query}")
    return [f"result for {query}"]


@served.tool(risk="high")
async def shell(cmd: str) -> str:
    ran.append(f"shell:{cmd}")
    return "ran"


# what the agent knows of them: declarations only, served remotely
declared = ToolRegistry()


async def web_search_stub(query: str) -> list[str]:
    raise AssertionError("a remote tool never runs in the agent")


declared.add(web_search_stub, name="web_search", remote=True)


@declared.tool(remote=True, name="shell")
async def shell_stub(cmd: str) -> str:
    raise AssertionError("a remote tool never runs in the agent")


class Records:
    def __init__(self) -> None:
        self.records: list[ToolCallRecord] = []

    async def record(self, record: ToolCallRecord) -> None:
        self.records.append(record)


def test_tools_served_on_the_bus_within_and_outside_the_contract(tmp_path: Path) -> None:
    contract = RoleContract(name="researcher", tools=["web_search"])
    outcome: Decoder[ToolOutcome] = Decoder(ToolOutcome)

    async def scenario() -> tuple[list[str], Records, str]:
        admin = new_user("tools", None)
        server = EmbeddedNats(tmp_path, users=[admin])
        base = await server.start()
        alice_user = new_user("alice", agent_permissions("alice", contract))
        server.add_users([alice_user])
        service_bus = await Bus.connect(url_for(base, admin), name="tools")
        alice = await Bus.connect(
            url_for(base, alice_user), name="alice", inbox_prefix=inbox_prefix("alice")
        )
        service = ToolService(service_bus, served)
        await service.start()
        await service_bus.flush()
        records = Records()
        gateway = ToolGateway(
            declared, contract, PolicyApprover(), records,
            run_id="r1", task_id="t1", attempt=1, agent_id="alice", bus=alice,
        )  # fmt: skip
        try:
            result = await gateway.call("web_search", {"query": "nats"})
            with pytest.raises(ToolRefused, match="not allowed"):
                await gateway.call("shell", {"cmd": "rm -rf /"})
            # around the gateway: the server drops the request, no service ever sees it
            around = ToolInvocation("r1", "t1", 1, "alice", "c9", '{"cmd": "rm -rf /"}')
            with pytest.raises(RequestFailed):
                await alice.request(subjects.tool_call("shell"), encode(around), 1.0)
            # the service checks arguments itself
            bad = ToolInvocation("r1", "t1", 1, "alice", "c8", '{"query": 1}')
            reply = await alice.request(subjects.tool_call("web_search"), encode(bad), 5.0)
            refused = outcome.decode(reply).error
        finally:
            await service.stop()
            await alice.close()
            await service_bus.close()
            server.stop()
        return result, records, refused

    result, records, refused = asyncio.run(scenario())
    assert result == ["result for nats"]
    assert ran == ["web_search:nats"], "shell never ran, by either path"
    assert [(r.tool, r.phase) for r in records.records] == [
        ("web_search", "requested"),
        ("web_search", "succeeded"),
        ("shell", "requested"),
        ("shell", "refused"),
    ]
    assert "invalid arguments" in refused
