"""Baton serves as an A2A agent (issue 19): the official `a2a-sdk` client calls `baton a2a
serve` (a real process, on a loopback port, against a real cluster): it discovers the
card (a skill per workflow, a bearer scheme), is refused without the token, starts the
research example and streams its progress, gets the outputs as artifacts, sends the same
message again and gets the same run, reads a run's task from the log by its run id (over
HTTP+JSON, the card's other binding),
answers a run whose step escalated (`input-required`, then the approval as its answer),
and cancels another run, which the orchestrator then stops."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

from orchestrator.core.workflow import AgentSpec
from orchestrator.service.workflow_files import load
from tests.cluster import EXAMPLE, REPO, cluster
from tests.test_readme import README, argv, readme_commands

pytestmark = pytest.mark.interop

SLOW = """
name = "slow"
description = "One long nap, to be cancelled."
[[steps]]
id = "nap"
role = "sleeper"
timeout_s = 120
params = { seconds = 60 }
"""

ASK = """
name = "ask"
description = "A step that gives up at once and waits for a person."
[[steps]]
id = "guess"
role = "guesser"
max_attempts = 1
on_exhausted = "escalate"
"""


def test_the_a2a_sdk_client_runs_and_cancels_baton_workflows(tmp_path: Path) -> None:
    from a2a.client import A2ACardResolver, ClientConfig, ClientFactory
    from a2a.helpers import get_data_parts, get_text_parts, new_data_part
    from a2a.types import (
        CancelTaskRequest,
        GetTaskRequest,
        Message,
        Role,
        SendMessageRequest,
        StreamResponse,
        TaskState,
    )

    state_dir = tmp_path / "state"
    slow = tmp_path / "slow.toml"
    slow.write_text(SLOW)
    asking = tmp_path / "ask.toml"
    asking.write_text(ASK)

    def message(message_id: str, skill: str, run_input: dict[str, Any]) -> SendMessageRequest:
        part = new_data_part({"skill": skill, "input": run_input})
        return SendMessageRequest(
            message=Message(message_id=message_id, role=Role.ROLE_USER, parts=[part])
        )

    async def scenario() -> dict[str, Any]:
        async with cluster(state_dir) as c:
            research = load(EXAMPLE)
            await c.add_agents(
                [
                    *research.agents,
                    AgentSpec("sleeper", "agents.builtin:sleep"),
                    AgentSpec("guesser", "agents.builtin:fail"),
                ],
                base=EXAMPLE.parent,
            )
            # the README's command, with the test's workflow added and any free port
            [serve_line] = [c for c in readme_commands() if " a2a serve " in c]
            command = argv(serve_line)
            command[command.index("--port") : command.index("--port")] = [str(slow), str(asking)]
            server = await asyncio.create_subprocess_exec(
                *command, "--port", "0", "--state-dir", str(state_dir),
                cwd=REPO,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env={**os.environ, "BATON_A2A_TOKEN": "s3cret"},
            )  # fmt: skip
            try:
                assert server.stdout is not None
                first = await asyncio.wait_for(server.stdout.readline(), 60)
                url = first.decode().split(" at ")[1].split(" ")[0]
                got: dict[str, Any] = {"url": url}
                async with httpx.AsyncClient() as anyone:
                    got["no_token"] = (await anyone.post(url, json={})).status_code
                    # the README's curl, as it is there (its port aside)
                    curl = shlex.split(next(line for line in _readme_sh() if "SendMessage" in line))
                    headers = dict(
                        curl[i + 1].split(": ", 1) for i, w in enumerate(curl) if w == "-H"
                    )
                    body = curl[curl.index("-d") + 1]
                    sent = await anyone.post(url, headers=headers, content=body, timeout=60)
                    got["curl"] = sent.json()
                http = httpx.AsyncClient(headers={"Authorization": "Bearer s3cret"}, timeout=30)
                card = await A2ACardResolver(http, url).get_agent_card()
                config = ClientConfig(streaming=True, httpx_client=http)
                client = ClientFactory(config).create(card)
                got["skills"] = sorted(s.id for s in card.skills)
                got["schemes"] = list(card.security_schemes)
                ask = message("m-research-1", "research-brief", {"topic": "leases"})
                events: list[StreamResponse] = [e async for e in client.send_message(ask)]
                again: list[StreamResponse] = [e async for e in client.send_message(ask)]
                got["events"], got["again"] = events, again
                run_id = _run_of(events)
                got["run"] = c.orchestrator.run(run_id)
                rest = ClientConfig(httpx_client=http, supported_protocol_bindings=["HTTP+JSON"])
                over_rest = ClientFactory(rest).create(card)
                got["from_log"] = await over_rest.get_task(GetTaskRequest(id=run_id))

                # a step that escalates: input-required, and the answer is the decision
                asked = [e async for e in client.send_message(message("m-ask-1", "ask", {}))]
                waiting = asked[-1].status_update

                def answer_with(message_id: str, said: dict[str, Any]) -> SendMessageRequest:
                    return SendMessageRequest(
                        message=Message(
                            message_id=message_id, task_id=waiting.task_id,
                            context_id=waiting.context_id, role=Role.ROLE_USER,
                            parts=[new_data_part(said)],
                        )
                    )  # fmt: skip

                unclear = answer_with("m-ask-2", {"decision": "maybe"})
                got["unclear"] = [e async for e in client.send_message(unclear)]
                answer = answer_with("m-ask-3", {"decision": "approve", "output": {"guess": 7}})
                answered = [e async for e in client.send_message(answer)]
                got["asked"], got["answered"] = asked, answered
                got["guessed"] = c.orchestrator.run(_run_of(asked))

                napping = cast(
                    AsyncGenerator[StreamResponse, None],
                    client.send_message(message("m-slow-1", "slow", {})),
                )
                async for event in napping:
                    if event.WhichOneof("payload") == "status_update" and _meta(event):
                        break
                task_id = event.status_update.task_id
                got["cancel"] = await client.cancel_task(CancelTaskRequest(id=task_id))
                stopped = _meta(event)
                got["stopped"] = await c.until(stopped, lambda s: s.status != "running")
                await napping.aclose()

                # a client still waiting on a run does not hold up the server's SIGTERM
                before = {run.run_id for run in c.orchestrator.runs()}
                blocking = {
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "SendMessage",
                    "params": {
                        "message": {
                            "messageId": "m-slow-2",
                            "role": "ROLE_USER",
                            "parts": [{"data": {"skill": "slow", "input": {}}}],
                        }
                    },
                }
                waiting_on = asyncio.create_task(
                    http.post(url, json=blocking, headers={"A2A-Version": "1.0"}, timeout=60)
                )  # fmt: skip
                deadline = time.monotonic() + 30
                while not any(
                    r.run_id not in before and r.status == "running" for r in c.orchestrator.runs()
                ):
                    assert time.monotonic() < deadline, "the second slow run never started"
                    await asyncio.sleep(0.02)
                server.terminate()
                got["terminated"] = await asyncio.wait_for(server.wait(), 20)
                waiting_on.cancel()
                with contextlib.suppress(BaseException):
                    await waiting_on
                await client.close()
                await http.aclose()
                return got
            finally:
                if server.returncode is None:
                    server.terminate()
                _, err = await asyncio.wait_for(server.communicate(), 30)
                print(err.decode()[-3000:])

    got = asyncio.run(scenario())
    # within the 20 s wait though a client still waited (it hung before), and by the signal
    assert got["terminated"] in (0, -signal.SIGTERM), got["terminated"]
    assert got["url"].startswith("http://127.0.0.1:")
    assert got["no_token"] == 401
    curl = got["curl"]["result"]["task"]
    assert curl["status"]["state"] == "TASK_STATE_COMPLETED", got["curl"]
    assert [a["name"] for a in curl["artifacts"]] == ["write"], "the run's result: its last step"
    assert got["skills"] == ["ask", "research-brief", "slow"]
    assert got["schemes"] == ["bearer"]

    events = got["events"]
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds[0] == "task"
    said = [get_text_parts(e.status_update.status.message.parts) for e in events
            if e.WhichOneof("payload") == "status_update"]  # fmt: skip
    progress = [line for lines in said for line in lines]
    assert any("research[2]" in line and "finished" in line for line in progress), progress
    assert any("run completed" in line for line in progress), progress
    last = events[-1].status_update.status
    assert last.state == TaskState.TASK_STATE_COMPLETED
    written = [
        e.artifact_update.artifact for e in events if e.WhichOneof("payload") == "artifact_update"
    ]
    [brief] = [a for a in written if a.name == "write"]
    assert "leases" in str(get_data_parts(brief.parts)[0])

    run = got["run"]
    assert run.status == "completed"
    assert run.input["topic"] == "leases"
    assert _run_of(got["again"]) == run.run_id, "the same message is the same run"

    from_log = got["from_log"]  # asked over HTTP+JSON, answered from the log
    assert from_log.status.state == TaskState.TASK_STATE_COMPLETED
    assert sorted(a.name for a in from_log.artifacts) == sorted(run.result)

    waiting = got["asked"][-1].status_update.status
    assert waiting.state == TaskState.TASK_STATE_INPUT_REQUIRED
    assert "escalated" in get_text_parts(waiting.message.parts)[0]
    unclear = got["unclear"][-1].status_update.status
    assert unclear.state == TaskState.TASK_STATE_INPUT_REQUIRED, "asked again"
    assert '"decision": "approve"' in get_text_parts(unclear.message.parts)[0]
    answered = got["answered"]
    assert answered[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    [guess] = [e.artifact_update.artifact for e in answered
               if e.WhichOneof("payload") == "artifact_update"]  # fmt: skip
    assert (guess.name, get_data_parts(guess.parts)) == ("guess", [{"guess": 7}])
    guessed = got["guessed"]
    assert guessed.status == "completed"
    assert guessed.tasks["guess"].status == "succeeded"

    assert got["cancel"].status.state == TaskState.TASK_STATE_CANCELED
    stopped = got["stopped"]
    assert (stopped.status, stopped.limit) == ("stopped", "cancelled")
    assert stopped.tasks["nap"].status == "cancelled"


def _readme_sh() -> list[str]:
    """The lines of the README's shell blocks (commands that are not Baton's too)."""
    lines, inside = [], False
    for line in README.read_text().splitlines():
        if line.startswith("```"):
            inside = line.strip() == "```sh"
        elif inside:
            lines.append(line)
    return lines


def _meta(event: Any) -> str:
    """The Baton run a status update names, '' if none."""
    fields = event.status_update.status.message.metadata.fields
    run = fields.get("baton_run")
    return run.string_value if run is not None else ""


def _run_of(events: list[Any]) -> str:
    runs = {_meta(e) for e in events if e.WhichOneof("payload") == "status_update"} - {""}
    assert len(runs) == 1, runs
    return runs.pop()
