"""A2A agents join Baton runs (issue 19): real A2A agents built with the official `a2a-sdk`
(tests/a2a_agents.py, HTTP on loopback ports) serve workflow steps through bridge agents,
`baton agent --a2a URL`, each an ordinary agent process on the cluster's bus.

One cluster serves four runs at once: a step whose first A2A agent fails is retried on
another (which answers by polling, its card offers no streaming) and completes, with the
artifacts and the token usage the remote reported, recorded with the bridge as the actor;
a step whose agent asks for input is escalated and `baton approve` resolves it; a cancel
of a run reaches the A2A agent working on it. A card whose skills do not cover the role,
or no card at all, stops the bridge at start with a clear error."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections import Counter
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest

from bus.server import PARENT_ENV, die_with_parent
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service.api import RunControlRequest
from tests.cluster import Cluster, baton, cluster

pytestmark = pytest.mark.interop


def bridge(c: Cluster, agent_id: str, role: str, url: str, log: Path) -> None:
    """Start `baton agent --a2a URL` as the cluster's own agent processes are started."""
    env = {**os.environ, "BATON_NATS_URL": c.stack.agent_url(agent_id, role)}
    env[PARENT_ENV] = str(os.getpid())
    command = [sys.executable, "-m", "agents", "--role", role, "--id", agent_id,
               "--a2a", url, "--heartbeat", "0.2"]  # fmt: skip
    with log.open("ab") as out:
        c.agents.processes[agent_id] = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent
        )


def test_a2a_agents_serve_steps_under_baton(tmp_path: Path) -> None:
    from tests.a2a_agents import a2a_agent

    state_dir = tmp_path / "state"

    async def scenario() -> dict[str, Any]:
        async with AsyncExitStack() as stack:
            c = await stack.enter_async_context(cluster(state_dir))
            failing, _ = await stack.enter_async_context(a2a_agent("fail", ["write"]))
            polled, polled_seen = await stack.enter_async_context(
                a2a_agent("complete", ["write"], streaming=False)
            )
            asking, _ = await stack.enter_async_context(a2a_agent("input", ["ask"]))
            slow, slow_seen = await stack.enter_async_context(a2a_agent("hang", ["dawdle"]))
            logs = tmp_path / "logs"
            logs.mkdir()
            # the failing one's id sorts first, so it gets the first attempt (least load, id)
            for agent_id, role, url in [
                ("w-a", "write", failing), ("w-b", "write", polled), ("d-1", "dawdle", slow),
            ]:  # fmt: skip
                bridge(c, agent_id, role, url, logs / f"{agent_id}.log")
            # as a workflow's [[agents]] names one, started as `baton run` starts it
            await c.add_agents([AgentSpec("ask", f"a2a:{asking}")], wait=False)
            await c.orchestrator.wait_for_agents(
                Counter({"write": 2, "ask": 1, "dawdle": 1}), timeout=30
            )
            write = WorkflowSpec(
                "w", [StepSpec("draft", "write", max_attempts=2, params={"topic": "leases"})]
            )
            ask = WorkflowSpec("q", [StepSpec("ask", "ask")])
            dawdle = WorkflowSpec("d", [StepSpec("wait", "dawdle", timeout_s=60)])
            written = await c.orchestrator.start_run(write)
            asked = await c.orchestrator.start_run(ask)
            dawdled = await c.orchestrator.start_run(dawdle)

            done = await c.until(written, lambda s: s.status != "running")
            escalated = await c.until(asked, lambda s: s.tasks["ask"].status == "escalated")
            approve = await asyncio.create_subprocess_exec(
                *baton("approve", asked, "ask", "--output", '{"year": 2026}',
                       "--state-dir", str(state_dir)),
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            approved_out, _ = await asyncio.wait_for(approve.communicate(), 60)
            answered = await c.until(asked, lambda s: s.status != "running")

            await asyncio.wait_for(slow_seen.started.wait(), 30)
            await c.orchestrator.control(RunControlRequest(dawdled, "cancel"), "human:tester")
            await asyncio.wait_for(slow_seen.cancelled.wait(), 30)
            cancelled = await c.until(dawdled, lambda s: s.status != "running")

            events = await c.stack.store.read_stream(f"run-{written}")
            return {
                "done": done,
                "escalated": escalated,
                "approve": (approve.returncode, approved_out.decode()),
                "answered": answered,
                "cancelled": cancelled,
                "polled_inputs": polled_seen.inputs,
                "polled_ids": polled_seen.message_ids,
                "events": [(e.type, e.actor, msgspec.msgpack.decode(e.data)) for e in events],
            }

    got = asyncio.run(scenario())
    done = got["done"]
    assert done.status == "completed", done.reason
    draft = done.tasks["draft"]
    assert (draft.attempt, draft.agent_id) == (2, "w-b"), "retried on the other agent"
    [artifact] = done.result["draft"]["artifacts"]
    assert artifact["name"] == "answer"
    assert artifact["data"][0]["answer"] == 42
    assert got["polled_inputs"][0]["input"]["params"] == {"topic": "leases"}
    assert got["polled_ids"] == [f"baton-{done.run_id}-draft-2"], "the attempt's message id"
    assert done.tokens_spent == 42, "the usage the remote reported is charged"
    failed = [d for t, a, d in got["events"] if t == "task.attempt_failed"]
    assert [(f["agent_id"], "the index is down" in f["error"]) for f in failed] == [("w-a", True)]
    [(actor, data)] = [(a, d) for t, a, d in got["events"] if t == "task.succeeded"]
    assert actor == "w-b", "the audit log names the bridge as the actor"
    assert data["output"]["artifacts"][0]["data"][0]["answer"] == 42

    escalated = got["escalated"].tasks["ask"]
    assert "input-required: which year do you mean?" in escalated.error
    assert got["approve"][0] == 0, got["approve"][1]
    answered = got["answered"]
    assert answered.status == "completed"
    assert answered.result == {"ask": {"year": 2026}}

    assert got["cancelled"].status == "stopped", "the run was cancelled"


def test_a_card_that_does_not_fit_the_role_stops_the_bridge(tmp_path: Path) -> None:
    """`baton agent --a2a` exits 2 naming what the card lacks; no card at all is the same
    typed error (checked in this process: the start is the same code)."""
    from agents.a2a_bridge import A2ABridge, A2ABridgeError
    from tests.a2a_agents import a2a_agent

    async def scenario() -> tuple[int, str, A2ABridgeError]:
        async with a2a_agent("complete", ["write"]) as (url, _):
            command = [sys.executable, "-m", "agents", "--role", "review", "--a2a", url,
                       "--nats", "nats://127.0.0.1:1"]  # fmt: skip
            done = await asyncio.create_subprocess_exec(
                *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            _, err = await asyncio.wait_for(done.communicate(), 60)
            with pytest.raises(A2ABridgeError) as no_card:
                await A2ABridge(f"{url}/no-card-here", request_timeout_s=10).start(["write"])
            return done.returncode or 0, err.decode(), no_card.value

    code, said, no_card = asyncio.run(scenario())
    assert code == 2
    assert "offers no skill for review (its skills: write)" in said
    assert "no usable Agent Card" in str(no_card)
    assert "404" in str(no_card)


def test_a_reply_that_is_not_a2a_fails_the_attempt_with_the_reason() -> None:
    """A card that parses, then answers that are not A2A (a task-less result, then not
    JSON at all): each fails the attempt (retryable, with what was wrong), at once."""
    from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH
    from google.protobuf.json_format import MessageToDict
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse, PlainTextResponse, Response
    from starlette.routing import Route

    from agents.a2a_bridge import A2ABridge
    from agents.sdk import TaskContext, TaskError
    from tests.a2a_agents import card
    from tests.asgi import loopback

    replies = iter(
        [
            JSONResponse({"jsonrpc": "2.0", "id": 1, "result": {"nonsense": True}}),
            PlainTextResponse("<html>gateway timeout</html>", status_code=504),
        ]
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"

    async def the_card(request: Request) -> Response:
        return JSONResponse(MessageToDict(card(url, ["write"], streaming=False)))

    async def rpc(request: Request) -> Response:
        return next(replies)

    app = Starlette(
        routes=[Route(AGENT_CARD_WELL_KNOWN_PATH, the_card), Route("/", rpc, methods=["POST"])]
    )

    async def scenario() -> list[TaskError]:
        async with loopback(app, sock=sock):
            bridge = A2ABridge(url, request_timeout_s=10)
            await bridge.start(["write"])
            errors = []
            try:
                for attempt in (1, 2):
                    task = TaskContext("r1", "t1", "t1", attempt, "write", "w-1", {"q": 1})
                    with pytest.raises(TaskError) as raised:
                        async with asyncio.timeout(10):
                            await bridge(task)
                    errors.append(raised.value)
            finally:
                await bridge.close()
            return errors

    not_a_task, not_json = asyncio.run(scenario())
    for error in (not_a_task, not_json):
        assert str(error).startswith(f"A2A agent {url}: "), error
        assert error.retryable
        assert not error.escalate
    assert "neither task nor message" in str(not_a_task)
    assert "HTTP Error 504" in str(not_json)


@pytest.mark.parametrize(
    ("behaviour", "streaming", "binding", "said", "escalate"),
    [
        ("fail", True, "JSONRPC", "failed: the index is down", False),
        ("reject", False, "HTTP+JSON", "rejected: not my kind of task", False),
        ("input", False, "JSONRPC", "is input-required: which year do you mean?", True),
        ("auth", True, "HTTP+JSON", "is auth-required: log in first", True),
    ],
)
def test_each_way_an_a2a_task_ends_maps_onto_an_attempt(
    behaviour: str, streaming: bool, binding: str, said: str, escalate: bool
) -> None:
    """Failed and rejected fail the attempt (retryable, with the remote's reason); input-
    and auth-required ask for a person; over the stream or by polling, over JSON-RPC or
    HTTP+JSON alike."""
    from agents.a2a_bridge import A2ABridge
    from agents.sdk import TaskContext, TaskError
    from tests.a2a_agents import Behaviour, a2a_agent

    async def scenario() -> TaskError:
        ends = cast(Behaviour, behaviour)
        async with a2a_agent(ends, ["write"], streaming=streaming, binding=binding) as (url, _):
            bridge = A2ABridge(url, poll_s=0.05, request_timeout_s=10)
            await bridge.start(["write"])
            try:
                task = TaskContext("r1", "t1", "t1", 1, "write", "w-1", {"q": 1})
                with pytest.raises(TaskError) as ended:
                    async with asyncio.timeout(10):
                        await bridge(task)
                return ended.value
            finally:
                await bridge.close()

    error = asyncio.run(scenario())
    assert said in str(error), error
    assert error.escalate is escalate
    assert error.retryable
