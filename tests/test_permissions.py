"""The NATS server itself enforces role contracts: on a governed embedded server each
agent logs in as its own user, and the server refuses (drops, never delivers) what its
permissions do not allow. Each refusal is proven against a real nats-server, next to a
positive control sent afterwards on the same connection: NATS keeps one connection's
messages in order, so once the control arrives, a delivered refusal would have too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from bus import subjects
from bus.codec import encode
from bus.connection import Bus, Incoming
from bus.contracts import RoleContract
from bus.errors import BusError
from bus.permissions import (
    agent_permissions,
    authorization_block,
    human_permissions,
    inbox_prefix,
    new_user,
    url_for,
)
from bus.protocol import Heartbeat, TaskResult
from bus.server import EmbeddedNats

RESEARCHER = RoleContract(name="researcher", tools=["web_search"])


class Taps:
    """An all-seeing connection (the orchestrator's rights) that keeps what arrives."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.arrived = asyncio.Event()

    async def on(self, msg: Incoming) -> None:
        self.seen.append(msg.subject)
        self.arrived.set()

    async def until(self, subject: str) -> None:
        async with asyncio.timeout(10):
            while subject not in self.seen:
                self.arrived.clear()
                await self.arrived.wait()


@asynccontextmanager
async def governed(tmp_path: Path) -> AsyncIterator[tuple[EmbeddedNats, Bus, dict[str, Bus]]]:
    admin = new_user("orchestrator", None)
    server = EmbeddedNats(tmp_path, users=[admin])
    base = await server.start()
    users = {
        "alice": new_user("alice", agent_permissions("alice", RESEARCHER)),
        "bob": new_user("bob", agent_permissions("bob", RESEARCHER)),
        "human": new_user("human", human_permissions("human")),
    }
    server.add_users(list(users.values()))
    orchestrator = await Bus.connect(url_for(base, admin), name="orchestrator")
    clients = {
        name: await Bus.connect(url_for(base, user), name=name, inbox_prefix=inbox_prefix(name))
        for name, user in users.items()
    }
    try:
        yield server, orchestrator, clients
    finally:
        for bus in [*clients.values(), orchestrator]:
            await bus.close()
        server.stop()


def test_without_credentials_nobody_gets_in(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with governed(tmp_path) as (server, _, _):
            with pytest.raises(BusError, match="cannot connect") as info:
                await Bus.connect(server.url, name="anonymous", tries=1)
            forged = new_user("alice", None)  # right name, wrong password
            with pytest.raises(BusError) as wrong:
                await Bus.connect(url_for(server.url, forged), name="alice", tries=1)
            assert forged.password not in str(wrong.value), "errors never echo a password"
            assert "authorization" in str(info.value).lower()

    asyncio.run(scenario())


def test_an_agent_cannot_publish_as_another_agent(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        async with governed(tmp_path) as (_, orchestrator, clients):
            taps = Taps()
            await orchestrator.subscribe("baton.>", taps.on)
            await orchestrator.flush()
            alice = clients["alice"]
            forged_result = subjects.inbox("run1", "bob")
            forged_beat = subjects.heartbeat("bob")
            beat = Heartbeat("bob", "researcher", ["researcher"], 1, 0)
            await alice.publish(forged_result, b"forged result")
            await alice.publish(forged_beat, encode(beat))
            await alice.publish(subjects.inbox("run1", "alice"), b"own result")
            await alice.publish(subjects.heartbeat("alice"), b"own beat")
            await taps.until(subjects.heartbeat("alice"))
            await taps.until(subjects.inbox("run1", "alice"))
            return taps.seen

    seen = asyncio.run(scenario())
    assert subjects.inbox("run1", "bob") not in seen
    assert subjects.heartbeat("bob") not in seen


def test_an_agent_cannot_call_a_tool_its_contract_does_not_list(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        async with governed(tmp_path) as (_, orchestrator, clients):
            taps = Taps()
            await orchestrator.subscribe("baton.tool.call.>", taps.on)
            await orchestrator.flush()
            alice = clients["alice"]
            await alice.publish(subjects.tool_call("shell"), b'{"cmd": "rm -rf /"}')
            await alice.publish(subjects.tool_call("web_search"), b'{"query": "nats"}')
            await taps.until(subjects.tool_call("web_search"))
            return taps.seen

    seen = asyncio.run(scenario())
    assert subjects.tool_call("shell") not in seen


def test_an_agent_cannot_read_runs_or_other_agents_traffic(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], list[str]]:
        async with governed(tmp_path) as (_, orchestrator, clients):
            alice, human = Taps(), Taps()
            for subject in (
                subjects.progress("run1"),  # a run's live progress
                "baton.inbox.>",  # everyone's results
                subjects.assign("bob"),  # another agent's assignments
                f"{inbox_prefix('bob')}.>",  # another agent's replies
                "_INBOX.>",
            ):
                await clients["alice"].subscribe(subject, alice.on)
            await clients["alice"].subscribe(subjects.assign("alice"), alice.on)
            await clients["human"].subscribe(subjects.progress("run1"), human.on)
            await clients["alice"].flush()
            await clients["human"].flush()
            await orchestrator.publish(subjects.progress("run1"), b"progress")
            await orchestrator.publish(subjects.inbox("run1", "bob"), b"bob's result")
            await orchestrator.publish(subjects.assign("bob"), b"bob's task")
            await orchestrator.publish(f"{inbox_prefix('bob')}.x", b"bob's reply")
            await orchestrator.publish("_INBOX.x", b"someone's reply")
            await orchestrator.publish(subjects.assign("alice"), b"alice's task")
            await alice.until(subjects.assign("alice"))
            await human.until(subjects.progress("run1"))
            return alice.seen, human.seen

    alice_seen, human_seen = asyncio.run(scenario())
    assert alice_seen == [subjects.assign("alice")]
    assert human_seen == [subjects.progress("run1")]


def test_replies_and_requests_work_within_the_permissions(tmp_path: Path) -> None:
    """The orchestrator's assignment request reaches its agent, and the agent's reply
    (allowed as a response only) comes back; the agent's durable inbox publish is acked."""

    async def scenario() -> bytes:
        async with governed(tmp_path) as (_, orchestrator, clients):
            alice = clients["alice"]

            async def answer(msg: Incoming) -> None:
                await msg.reply(b"taken")

            await alice.subscribe(subjects.assign("alice"), answer)
            await alice.flush()
            reply = await orchestrator.request(subjects.assign("alice"), b"task", 5.0)
            await orchestrator.ensure_inbox()
            await alice.publish_durable(
                subjects.inbox("run1", "alice"), b"result", msg_id="m1", attempts=5
            )
            return reply

    assert asyncio.run(scenario()) == b"taken"


def test_the_authorization_block_lists_each_users_rights() -> None:
    block = authorization_block(
        [new_user("orchestrator", None), new_user("a1", agent_permissions("a1", RESEARCHER))]
    )
    assert '"user": "orchestrator"' in block
    assert '"baton.inbox.*.a1"' in block
    assert '"baton.tool.call.web_search"' in block
    assert '"allow_responses": true' in block
    with pytest.raises(BusError):
        agent_permissions("a.b", RESEARCHER)


WORKER_ROLES = """
[[roles]]
name = "worker"
concurrency = 2
"""


def test_forged_results_are_rejected_and_audited_on_a_governed_stack(tmp_path: Path) -> None:
    """A second agent (with its own real credentials) forges results for a task another
    agent holds: on its own subject it is rejected and audited by the core, and on the
    owner's subject the server never delivers it. A wrong lease token and a stale attempt
    from the owner's subject are rejected too; the owner's real result still wins."""
    from orchestrator.core.events import ResultRejected, TaskAssigned
    from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
    from orchestrator.service import journal
    from tests.cluster import cluster

    roles = tmp_path / "roles.toml"
    roles.write_text(WORKER_ROLES)
    slow = AgentSpec("worker", "agents.builtin:sleep", capacity=2)

    async def scenario() -> tuple[list[ResultRejected], str, str, dict[str, object]]:
        async with cluster(tmp_path / "state", contracts=str(roles)) as c:
            (owner,) = await c.add_agents([slow])
            workflow = WorkflowSpec(
                "w", [StepSpec("s", "worker", params={"seconds": 3.0}, timeout_s=30)]
            )
            run_id = await c.orchestrator.start_run(workflow)
            await c.until_held(owner, run_id, "s", 1)
            token = c.orchestrator.run(run_id).tasks["s"].lease_token
            forger_id = "worker-forger"
            forger = await Bus.connect(
                c.stack.agent_url(forger_id, "worker"),
                name=forger_id,
                inbox_prefix=inbox_prefix(forger_id),
            )
            claim = TaskResult(run_id, "s", 1, "guessed", owner, {"forged": True}, 0.1)
            # on the owner's subject: the server refuses it, so it never reaches the stream
            # (attempt 7 would be audited as stale if it did)
            as_owner = TaskResult(run_id, "s", 7, "guessed", owner, {"forged": True}, 0.1)
            await forger.publish(subjects.inbox(run_id, owner), encode(as_owner))
            # on the forger's own subject, after it on the same connection: delivered,
            # rejected and audited by the core
            await forger.publish_durable(
                subjects.inbox(run_id, forger_id), encode(claim), msg_id="f1", attempts=1
            )
            await forger.close()
            # from the owner's subject (as a confused owner would): wrong token, stale attempt
            wrong = TaskResult(run_id, "s", 1, "not-the-token", owner, {"forged": True}, 0.1)
            stale = TaskResult(run_id, "s", 0, token, owner, {"forged": True}, 0.1)
            for n, report in enumerate((wrong, stale)):
                await c.stack.bus.publish_durable(
                    subjects.inbox(run_id, owner), encode(report), msg_id=f"o{n}", attempts=1
                )
            state = await c.orchestrator.wait(run_id, timeout=60)
            stored = await c.stack.store.read_stream(journal.run_stream(run_id))
            events = [journal.decode_run_event(e) for e in stored]
            assigned = [e for e in events if isinstance(e, TaskAssigned)]
            assert len(assigned) == 1, "the owner's result was decided, not masked"
            rejected = [e for e in events if isinstance(e, ResultRejected)]
            return rejected, owner, forger_id, dict(state.result or {})

    rejected, owner, forger_id, result = asyncio.run(scenario())
    assert result == {"s": {"task": "s", "slept_s": 3.0}}, "the owner's real result won"
    reasons = sorted((r.sender, r.reason) for r in rejected)
    assert reasons == sorted(
        [
            (forger_id, f"sent by {forger_id} but claims to be from {owner}"),
            (owner, "lease token does not match the attempt's"),
            (owner, "stale attempt 0; the current attempt is 1"),
        ]
    )
