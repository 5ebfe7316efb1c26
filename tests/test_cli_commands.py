"""What the serving commands tell a person, through the real CLI where it matters: a run
that outlives `--timeout` says so (not an empty error) within about the timeout, agents
that never come up are waited for no longer than `--timeout`, an escalation prints the
exact command that decides it, an empty workflow file names where the problem is; and
`--human-approval` asks only about calls that still wait (one decided elsewhere, or
made again by a retried attempt, replaces its question)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from agents.gateway import HumanApprover, Verdict
from agents.tools import ToolRegistry
from bus import subjects
from bus.connection import Bus
from bus.protocol import ToolCallRecord, ToolDecision
from bus.server import EmbeddedNats
from orchestrator.cli import approvals
from orchestrator.cli.main import EXIT_CODES, EXIT_UNFINISHED, EXITS
from orchestrator.cli.reach import Reach
from orchestrator.cli.tool import decide
from orchestrator.core.run_state import TERMINAL_RUN
from orchestrator.service.tool_prompts import ToolPrompts
from tests.cluster import REPO, baton

ESCALATION = REPO / "examples" / "escalation" / "workflow.toml"


def _baton(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(baton(*args), capture_output=True, text=True, cwd=REPO, timeout=timeout)


def test_exit_codes_are_distinct_and_documented() -> None:
    assert set(EXIT_CODES) == TERMINAL_RUN
    codes = [*EXIT_CODES.values(), EXIT_UNFINISHED, 2, 130]
    assert len(set(codes)) == len(codes)
    helps = [_baton(*command, "--help").stdout for command in ([], ["run"], ["resume"])]
    for status, code in EXIT_CODES.items():
        assert f"{code} " in EXITS
        for shown in helps:
            assert " ".join(EXITS.split()[:6]) in " ".join(shown.split()), status


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (["run", "wf.toml", "--timeout", "-1"], "baton run: error: argument --timeout: '-1': "
         "give a number of seconds above 0"),
        (["resume", "r", "--timeout", "0"], "baton resume: error: argument --timeout: '0': "
         "give a number of seconds above 0"),
        (["submit", "wf.toml", "--timeout", "soon"], "baton submit: error: argument "
         "--timeout: 'soon' is not a number of seconds"),
        (["status", "--timeout", "nan"], "baton status: error: argument --timeout: 'nan': "
         "give a number of seconds above 0"),
        (["agent", "--role", "w", "--capacity", "0", "--nats", "nats://127.0.0.1:1"],
         "baton agent: error: --capacity must be at least 1"),
    ],
)  # fmt: skip
def test_a_timeout_or_capacity_that_cannot_work_is_refused_by_name(
    argv: list[str], said: str
) -> None:
    done = _baton(*argv)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr.splitlines()[-1] == said


def test_a_run_past_its_timeout_says_so_and_prints_how_to_decide_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    began = time.monotonic()
    done = _baton("run", str(ESCALATION), "--state-dir", str(state), "--timeout", "5")
    took = time.monotonic() - began
    assert done.returncode == EXIT_UNFINISHED, done.stdout + done.stderr
    assert done.stderr == ""
    run_id = done.stdout.split("\nrun ", 1)[1].split(":", 1)[0]
    assert f"run {run_id} had not ended after 5s (--timeout)" in done.stdout
    assert "no agent serves" not in done.stdout, "it waits for a person, not for an agent"
    assert f"baton resume {run_id} --state-dir {state}" in done.stdout
    assert f"    baton approve {run_id} flaky --state-dir {state} --output '{{}}'" in done.stdout
    assert f"    baton retry {run_id} flaky --state-dir {state}" in done.stdout
    assert took < 5 + 15, f"took {took:.1f}s for a 5 s timeout"
    resumed = _baton("resume", run_id, "--state-dir", str(state), "--timeout", "3")
    assert resumed.returncode == EXIT_UNFINISHED, resumed.stdout + resumed.stderr
    # escalated before the resume: it says at once how to decide it, as the run did
    ahead = resumed.stdout.split("had not ended", 1)[0]
    assert f"    baton approve {run_id} flaky --state-dir {state} --output '{{}}'" in ahead


def test_a_run_past_its_timeout_names_the_roles_no_agent_serves(tmp_path: Path) -> None:
    workflow = tmp_path / "no-agents.toml"  # a step, and no [[agents]] entry to serve it
    workflow.write_text('name = "w"\n[[steps]]\nid = "a"\nrole = "checker"\n')
    done = _baton("run", str(workflow), "--state-dir", str(tmp_path / "s"), "--timeout", "2")
    assert done.returncode == EXIT_UNFINISHED, done.stdout + done.stderr
    assert done.stdout.startswith(
        "baton: no [[agents]] entry of no-agents.toml serves checker: its tasks wait for such "
        "an agent to join the bus (baton agent --role ROLE)\n"
    ), done.stdout
    assert (
        "its ready tasks wait for a role no agent serves: checker (an [[agents]] entry of "
        "the workflow starts one, or baton agent --role ROLE)"
    ) in done.stdout


def test_agents_that_never_come_up_are_waited_for_no_longer_than_the_timeout(
    tmp_path: Path,
) -> None:
    (tmp_path / "stuck.py").write_text("import time\ntime.sleep(600)\n")
    workflow = tmp_path / "w.toml"
    workflow.write_text(
        'name = "w"\n[[agents]]\nrole = "r"\nhandler = "stuck.py:f"\n'
        '[[steps]]\nid = "a"\nrole = "r"\n'
    )
    began = time.monotonic()
    done = _baton("run", str(workflow), "--state-dir", str(tmp_path / "s"), "--timeout", "3")
    took = time.monotonic() - began
    assert done.returncode == 2, done.stdout + done.stderr
    assert "did not all register in" in done.stderr
    assert took < 3 + 15, f"took {took:.1f}s for a 3 s timeout"


def test_an_empty_workflow_file_names_its_location(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    done = _baton("run", str(empty), "--state-dir", str(tmp_path / "s"))
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f"baton run: error: {empty}: (top): Object missing required field `name`"
    )


def test_human_approval_asks_only_about_calls_that_still_wait(tmp_path: Path) -> None:
    tools = ToolRegistry()

    @tools.tool(risk="high", needs_approval=True)
    async def publish(title: str) -> str:
        return title

    def call(call_id: str, attempt: int) -> ToolCallRecord:
        return ToolCallRecord(
            "run1", "edit", attempt, "agent-1", call_id, "publish", "awaiting", "high", "{}"
        )

    async def scenario() -> tuple[list[str], list[Verdict]]:
        server = EmbeddedNats(tmp_path)
        url = await server.start()
        cli = await Bus.connect(url, name="cli")
        agent = await Bus.connect(url, name="agent")
        lines: asyncio.Queue[str | None] = asyncio.Queue()
        said: list[str] = []

        class Typed:
            async def get(self) -> str | None:
                return await lines.get()

        async def until(text: str) -> None:
            async with asyncio.timeout(10):
                while not any(text in s for s in said):
                    await asyncio.sleep(0.01)

        asking = await approvals.watch(cli, "run1", Typed(), said.append)

        async def refuse(subject: str, reason: str, size: int, sender: str) -> None:
            raise AssertionError(f"refused {subject}: {reason}")

        # the orchestrator's relay, here with no run to check the requests against
        relay = ToolPrompts(cli, lambda sender, run_id, record: "", refuse)
        await cli.subscribe(subjects.TOOL_APPROVALS_ALL, relay.on_request)
        await cli.flush()
        approver = HumanApprover(agent, timeout_s=30)
        tool = tools.get("publish")
        try:
            first = asyncio.create_task(approver.decide(call("c1", 1), tool))
            await until("tool call c1: agent-1 wants publish")
            await decide(Reach(url, ""), "agent-1", ToolDecision("c1", True, "human:other", "ok"))
            await until("tool call c1 approved elsewhere, by human:other")
            second = asyncio.create_task(approver.decide(call("c2", 1), tool))
            await until("tool call c2: ")
            third = asyncio.create_task(approver.decide(call("c3", 2), tool))
            await until("tool call c2 no longer waits: attempt 1 of edit was retried")
            await until("tool call c3: ")
            await lines.put("y\n")
            verdicts = [await first, await third]
            second.cancel()
            return said, verdicts
        finally:
            await asking.close()
            await cli.close()
            await agent.close()
            server.stop()

    said, (first, third) = asyncio.run(scenario())
    assert (first.approve, first.by) == (True, "human:other")
    assert third.approve
    assert third.by.startswith("human:")
    questions = [s for s in said if "approve? [y/N]" in s]
    assert [q.split(":")[0].strip() for q in questions] == [
        "tool call c1",
        "tool call c2",
        "tool call c3",
    ], "each call is asked about once, the retried one's question shown at once"
