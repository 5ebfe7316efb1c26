"""Tool calls that wait for a human, on a governed server (issue 12, finding 9): each agent
receives only the decisions addressed to it and asks for approval only as itself (the
server refuses the rest), and the orchestrator, which alone passes requests on to the
people watching a run, refuses and audits a request for an attempt its sender does not
hold. Refusals by the server are proven as in test_permissions: a positive control sent
afterwards on the same connection arrives, so a delivered refusal would have too.
"""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming
from bus.permissions import inbox_prefix
from bus.protocol import ToolCallRecord
from bus.server import person_credentials
from orchestrator.core.events import MessageRejected
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from tests.cluster import Cluster, cluster
from tests.test_permissions import WORKER_ROLES, Taps, governed

_record: Decoder[ToolCallRecord] = Decoder(ToolCallRecord)


def awaiting(run_id: str, task_id: str, attempt: int, agent_id: str, call_id: str) -> bytes:
    record = ToolCallRecord(
        run_id, task_id, attempt, agent_id, call_id, "publish", "awaiting", "high", "{}"
    )
    return encode(record)


def test_an_agent_receives_only_the_decisions_on_its_own_calls(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        async with governed(tmp_path) as (_, _, clients):
            alice, human = clients["alice"], clients["human"]
            taps = Taps()
            await alice.subscribe("baton.tool.decision.bob.*", taps.on)
            await alice.subscribe(subjects.TOOL_DECISIONS_ALL, taps.on)
            await alice.subscribe("baton.tool.>", taps.on)
            await alice.subscribe("baton.tool.decision.alice.*", taps.on)
            await alice.flush()
            await human.publish(subjects.tool_decision("bob", "c1"), b"bob's decision")
            await human.publish(subjects.tool_decision("alice", "c2"), b"alice's decision")
            await taps.until(subjects.tool_decision("alice", "c2"))
            return taps.seen

    seen = asyncio.run(scenario())
    assert seen == [subjects.tool_decision("alice", "c2")], "one delivery, of her own only"


def test_an_agent_asks_for_approval_only_as_itself(tmp_path: Path) -> None:
    """Nor can it pass a request on to the watchers itself, or read others' requests; a
    person reads the requests the orchestrator passes on, and cannot forge them."""

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        async with governed(tmp_path) as (_, orchestrator, clients):
            alice, human = clients["alice"], clients["human"]
            taps, alice_reads, human_reads = Taps(), Taps(), Taps()
            await orchestrator.subscribe("baton.tool.>", taps.on)
            await alice.subscribe(subjects.TOOL_APPROVALS_ALL, alice_reads.on)
            await alice.subscribe(subjects.tool_prompt("run1"), alice_reads.on)
            await human.subscribe(subjects.TOOL_APPROVALS_ALL, human_reads.on)
            await human.subscribe(subjects.tool_prompt("run1"), human_reads.on)
            await alice.subscribe(subjects.assign("alice"), alice_reads.on)  # controls
            await human.subscribe(subjects.progress("run1"), human_reads.on)
            for bus in (orchestrator, alice, human):
                await bus.flush()
            request = awaiting("run1", "s", 1, "bob", "c1")
            await alice.publish(subjects.tool_approval("run1", "bob"), request)
            await alice.publish(subjects.tool_prompt("run1"), request)
            await human.publish(subjects.tool_approval("run1", "bob"), request)
            await human.publish(subjects.tool_prompt("run1"), request)
            await orchestrator.publish(subjects.tool_approval("run1", "bob"), b"bob's own")
            await alice.publish(subjects.tool_approval("run1", "alice"), b"control")
            await human.publish(subjects.tool_decision("alice", "c1"), b"control")
            await orchestrator.publish(subjects.tool_prompt("run1"), b"passed on")
            await orchestrator.publish(subjects.assign("alice"), b"control")
            await orchestrator.publish(subjects.progress("run1"), b"control")
            await taps.until(subjects.tool_approval("run1", "alice"))
            await taps.until(subjects.tool_decision("alice", "c1"))
            await alice_reads.until(subjects.assign("alice"))
            await human_reads.until(subjects.progress("run1"))
            return taps.seen, alice_reads.seen, human_reads.seen

    seen, alice_reads, human_reads = asyncio.run(scenario())
    assert seen.count(subjects.tool_approval("run1", "bob")) == 1, "the orchestrator's only"
    assert seen.count(subjects.tool_prompt("run1")) == 1, "the orchestrator's only"
    assert alice_reads == [subjects.assign("alice")], "no one's requests, nor the prompts"
    assert human_reads == [subjects.tool_prompt("run1"), subjects.progress("run1")], (
        "a person reads only what the orchestrator passes on"
    )


def test_a_request_for_an_attempt_the_agent_does_not_hold_is_refused_and_audited(
    tmp_path: Path,
) -> None:
    """On a governed stack a second agent, with its own real credentials, asks for
    approval on its own subject for a run it holds nothing of, and for the owner's
    attempt under its own name and under the owner's: each is refused, audited and never
    shown to the person watching the run; the owner's request is shown."""
    roles = tmp_path / "roles.toml"
    roles.write_text(WORKER_ROLES)
    slow = AgentSpec("worker", "agents.builtin:sleep", capacity=2)
    state_dir = tmp_path / "state"

    async def scenario() -> tuple[list[ToolCallRecord], list[str], str]:
        async with cluster(state_dir, contracts=str(roles)) as c:
            (owner,) = await c.add_agents([slow])
            workflow = WorkflowSpec(
                "w", [StepSpec("s", "worker", params={"seconds": 5.0}, timeout_s=30)]
            )
            run_id = await c.orchestrator.start_run(workflow)
            await c.until_held(owner, run_id, "s", 1)
            person = person_credentials(state_dir)
            assert person is not None
            watcher = await Bus.connect(
                person.url, name="person", inbox_prefix=inbox_prefix(person.identity)
            )
            shown: list[ToolCallRecord] = []
            arrived = asyncio.Event()

            async def show(msg: Incoming) -> None:
                shown.append(_record.decode(msg.data))
                arrived.set()

            await watcher.subscribe(subjects.tool_prompt(run_id), show)
            await watcher.flush()
            forger_id = "worker-forger"
            forger = await Bus.connect(
                c.stack.agent_url(forger_id, "worker"),
                name=forger_id,
                inbox_prefix=inbox_prefix(forger_id),
            )
            own_subject = subjects.tool_approval(run_id, forger_id)
            await forger.publish(own_subject, awaiting(run_id, "s", 1, forger_id, "f1"))
            await forger.publish(own_subject, awaiting(run_id, "s", 1, owner, "f2"))
            await forger.publish(own_subject, awaiting(run_id, "nope", 1, forger_id, "f3"))
            await forger.publish(
                subjects.tool_approval(run_id, owner), awaiting(run_id, "s", 1, owner, "f4")
            )  # refused by the server
            await forger.flush()
            await forger.close()
            async with asyncio.timeout(10):
                while len(rejected := await _rejected(c, own_subject)) < 3:
                    await asyncio.sleep(0.05)
            # the owner's own request (sent here with the orchestrator's rights, on the
            # owner's subject) is shown
            await c.stack.bus.publish(
                subjects.tool_approval(run_id, owner), awaiting(run_id, "s", 1, owner, "o1")
            )
            async with asyncio.timeout(10):
                await arrived.wait()
            await watcher.close()
            reasons = sorted(r.reason for r in rejected)
            return shown, reasons, owner

    shown, reasons, owner = asyncio.run(scenario())
    assert [r.call_id for r in shown] == ["o1"]
    assert shown[0].agent_id == owner
    run = repr(shown[0].run_id)
    assert reasons == sorted(
        [
            f"worker-forger holds no attempt 1 of 's' in {run}",
            f"approval request for {owner} sent by worker-forger",
            f"worker-forger holds no attempt 1 of 'nope' in {run}",
        ]
    )


async def _rejected(c: Cluster, subject: str) -> list[MessageRejected]:
    stored = await c.stack.store.read_stream(journal.SYSTEM_STREAM)
    events = [journal.decode_any(s) for s in stored if s.type == "message.rejected"]
    return [e for e in events if isinstance(e, MessageRejected) and e.subject == subject]


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=cwd)


def test_baton_tool_decides_for_the_agent_it_is_told(tmp_path: Path) -> None:
    """Without a log that records the call, `baton tool approve` needs `--agent`: it says
    so (exit 1, nobody is known to wait), and with it reaches the waiting agent."""
    from agents.gateway import HumanApprover
    from agents.tools import ToolRegistry
    from bus.server import EmbeddedNats
    from tests.cluster import baton

    tools = ToolRegistry()

    @tools.tool(risk="high", needs_approval=True)
    async def publish(title: str) -> str:
        return title

    record = ToolCallRecord("run1", "s", 1, "agent-1", "c1", "publish", "awaiting", "high")

    async def scenario() -> tuple[subprocess.CompletedProcess[str], ...]:
        server = EmbeddedNats(tmp_path / "server")
        url = await server.start()
        agent = await Bus.connect(url, name="agent-1")
        watcher = await Bus.connect(url, name="watcher")
        asked = Taps()
        await watcher.subscribe(subjects.TOOL_APPROVALS_ALL, asked.on)
        await watcher.flush()
        try:
            waiting = asyncio.create_task(
                HumanApprover(agent, timeout_s=30).decide(record, tools.get("publish"))
            )
            await asked.until(subjects.tool_approval("run1", "agent-1"))  # it subscribed first
            cwd = tmp_path / "elsewhere"
            cwd.mkdir()
            args = ("tool", "approve", "c1", "--nats", url, "--by", "human:op")
            unnamed, named = [
                await asyncio.to_thread(run, baton(*args, *extra), cwd)
                for extra in ((), ("--agent", "agent-1"))
            ]
            verdict = await waiting
            assert (verdict.approve, verdict.by) == (True, "human:op")
            return unnamed, named
        finally:
            await watcher.close()
            await agent.close()
            server.stop()

    unnamed, named = asyncio.run(scenario())
    assert unnamed.returncode == 1
    assert "no agent is waiting on tool call c1" in unnamed.stderr
    assert "name it with --agent" in unnamed.stderr
    assert named.returncode == 0, named.stderr
    assert "tool call c1 approved" in named.stdout
