"""Bad input on every door — the orchestrator's inbox and API, an agent's subject, the
workflow file — gets a clear, typed error and changes no state."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import msgspec

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus
from bus.protocol import AssignReply, ErrorReply, TaskResult
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.api import RunAccepted, StartRunRequest
from tests.cluster import REPO, baton, cluster

SLOW = WorkflowSpec(
    name="one-slow-step",
    steps=[StepSpec(id="wait", role="worker", params={"seconds": 1.0})],
)
WORKER = [AgentSpec(role="worker", handler="agents.builtin:sleep", count=1, capacity=2)]
_replies: Decoder[ErrorReply | RunAccepted] = Decoder(ErrorReply | RunAccepted)
_assign_replies: Decoder[AssignReply] = Decoder(AssignReply)


def test_malformed_messages_are_refused_audited_and_change_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            [agent_id] = await c.add_agents(WORKER)
            run_id = await c.orchestrator.start_run(SLOW)
            before = await c.until(run_id, lambda s: s.tasks["wait"].status == "running")
            bus = await Bus.connect(c.stack.nats_url, name="intruder")
            inbox = subjects.inbox(run_id, agent_id)
            unknown_field = msgspec.msgpack.encode(
                {"kind": "task.result", "run_id": run_id, "x": 1}
            )
            await bus.publish_durable(inbox, b"\xc1 not msgpack", msg_id="bad-1")
            await bus.publish_durable(inbox, unknown_field, msg_id="bad-2")
            ghost = TaskResult("no-such-run", "wait", 1, "token", agent_id, {}, 0.1)
            await bus.publish_durable(
                subjects.inbox("no-such-run", agent_id), encode(ghost), "bad-3"
            )

            reply = await bus.request(subjects.assign(agent_id), b"garbage", timeout=5)
            agent_answer = _assign_replies.decode(reply)

            api = await bus.request(subjects.run_start("tester"), b"\x92\x01\x02", timeout=5)
            cyclic = StartRunRequest(
                WorkflowSpec(
                    name="loop",
                    steps=[
                        StepSpec(id="a", role="worker", needs=["b"]),
                        StepSpec(id="b", role="worker", needs=["a"]),
                    ],
                )
            )
            api_cycle = await bus.request(subjects.run_start("tester"), encode(cyclic), timeout=5)
            await bus.close()

            final = await c.orchestrator.wait(run_id, timeout=30)
            system = await c.stack.store.read_stream(journal.SYSTEM_STREAM)
            runs = await c.stack.store.streams(journal.RUN_PREFIX)

        assert isinstance(agent_answer, ErrorReply)
        assert agent_answer.error == "MalformedMessage"
        api_answer = _replies.decode(api)
        assert isinstance(api_answer, ErrorReply)
        assert "MalformedMessage" in api_answer.error
        cycle_answer = _replies.decode(api_cycle)
        assert isinstance(cycle_answer, ErrorReply)
        assert "cycle" in cycle_answer.detail
        assert runs == [journal.run_stream(run_id)], "no run was created by bad requests"

        rejected = [journal.decode_any(s) for s in system if s.type == "message.rejected"]
        reasons = " | ".join(getattr(e, "reason", "") for e in rejected)
        assert len(rejected) == 5, reasons
        assert "no run no-such-run" in reasons
        assert "cycle" in reasons
        assert "unknown field `x`" in reasons or "Object contains unknown field" in reasons
        assert before.version + 2 == final.version  # only the result and the completion
        assert final.status == "completed"
        assert final.rejected == 0

    asyncio.run(scenario())


def test_invalid_workflow_file_is_a_clear_error_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[[steps]]\nid = "a"\nrole = "r"\nretries = 3\n')
    state = tmp_path / "state"
    result = subprocess.run(
        baton("run", str(bad), "--state-dir", str(state)),
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert result.returncode == 2
    assert "steps[0]" in result.stderr
    assert "retries" in result.stderr
    assert not state.exists()


def test_wrong_cli_arguments_are_refused(tmp_path: Path) -> None:
    missing = subprocess.run(baton("replay"), capture_output=True, text=True)
    assert missing.returncode == 2
    assert "run_id" in missing.stderr
    no_store = subprocess.run(
        baton("replay", "r1", "--state-dir", str(tmp_path / "none")), capture_output=True, text=True
    )
    assert no_store.returncode == 2
    assert "no event store" in no_store.stderr
    agent = subprocess.run(baton("agent", "--role", "a.b", "--nats", "nats://127.0.0.1:1"),
                           capture_output=True, text=True)  # fmt: skip
    assert agent.returncode == 2
    assert "invalid subject token 'a.b'" in agent.stderr


def test_an_unreachable_nats_url_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    dead = "nats://127.0.0.1:1"  # nothing listens on port 1
    for argv in (
        baton("run", "examples/research/workflow.toml", "--nats", dead,
              "--state-dir", str(tmp_path / "state")),
        baton("agent", "--role", "writer", "--nats", dead),
    ):  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == 2, result.stderr
        assert f"cannot connect to {dead}" in result.stderr
        assert "Traceback" not in result.stderr
