"""The patterns end to end with real processes: a real nats-server, agent OS processes
running the built-in handlers, the SQLite log, and the `baton` CLI for people's decisions.
Each run is checked live and as rebuilt from its log."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from bus.connection import Bus
from eventstore import StoredEvent
from orchestrator.core.events import BidReceived, RunEvent, TaskAssigned, TaskSucceeded
from orchestrator.core.state import RunState
from orchestrator.core.workflow import AgentSpec, Chat, StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.service import Orchestrator
from orchestrator.service.workflow_files import load
from tests.cluster import REPO, Cluster, baton, cluster, until_inbox_holds

EXAMPLES = REPO / "examples"
STORED: list[list[StoredEvent]] = []


async def _run(
    tmp: Path,
    workflow: WorkflowSpec,
    during: Callable[[Cluster, str], Awaitable[None]] | None = None,
) -> tuple[RunState, RunState, list[str]]:
    """Start `workflow` on its agents, let `during` act on it; (live, rebuilt, the types of
    its events). `STORED[-1]` keeps the stored events of the latest run for closer looks."""
    async with cluster(tmp) as c:
        await c.add_agents(workflow.agents)
        run_id = await c.orchestrator.start_run(workflow)
        if during is not None:
            await during(c, run_id)
        live = await c.orchestrator.wait(run_id, timeout=60)
        rebuilt = await journal.load_run(c.stack.store, run_id)
        stored = await c.stack.store.read_stream(journal.run_stream(run_id))
    assert rebuilt == live
    STORED.append(stored)
    return live, rebuilt, [s.type for s in stored]


def test_a_group_chat_whose_agents_never_agree_ends_at_its_max_turns(tmp_path: Path) -> None:
    live, _, types = asyncio.run(_run(tmp_path, load(EXAMPLES / "group-chat" / "workflow.toml")))
    assert live.status == "completed"
    chat = live.tasks["debate"].output or {}
    assert chat["ended_by"] == "max_turns"
    assert chat["turns"] == 6
    assert [t["output"]["agree"] for t in chat["transcript"]] == [False] * 6
    assert types.count("tasks.added") == 12  # a selector task and a turn, six times
    summary = live.result["summary"] if live.result else {}
    assert summary["echo"]["deps"]["debate"]["turns"] == 6


def test_a_run_whose_agents_overspend_ends_at_its_token_budget(tmp_path: Path) -> None:
    live, _, types = asyncio.run(_run(tmp_path, load(EXAMPLES / "budget" / "workflow.toml")))
    assert live.status == "stopped"
    assert live.limit == "tokens"
    assert live.tokens_spent <= 1000
    assert live.result is not None
    assert 1 <= len(live.result) < 6
    assert "limit.reached" in types
    assert types[-1] == "run.stopped"


def test_a_loop_ends_when_the_reviewer_approves(tmp_path: Path) -> None:
    live, _, _ = asyncio.run(_run(tmp_path, load(EXAMPLES / "review-loop" / "workflow.toml")))
    assert live.status == "completed"
    rounds = [t for t in live.tasks if t.startswith("review")]
    assert rounds == ["review", "review@2", "review@3"]
    assert live.tasks["review@3"].output == {"approved": True, "round": 3, "notes": "ship it"}
    assert live.tasks["publish"].status == "succeeded"


def _cli(c: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        baton(*args, "--nats", c.stack.nats_url, "--as", "human:tester"),
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


async def _escalated(c: Cluster, run_id: str) -> None:
    await c.until(run_id, lambda s: s.tasks["flaky"].status == "escalated")


def test_approve_reject_and_retry_go_through_the_cli_and_record_the_person(
    tmp_path: Path,
) -> None:
    workflow = load(EXAMPLES / "escalation" / "workflow.toml")
    outputs: dict[str, subprocess.CompletedProcess[str]] = {}

    def deciding(*decisions: str) -> Callable[[Cluster, str], Awaitable[None]]:
        async def during(c: Cluster, run_id: str) -> None:
            await _escalated(c, run_id)
            bad = await asyncio.to_thread(_cli, c, "approve", run_id, "finish")
            outputs["bad"] = bad
            for decision in decisions:
                extra = ["--output", '{"fixed": true}'] if decision == "approve" else []
                outputs[decision] = await asyncio.to_thread(
                    _cli, c, decision, run_id, "flaky", *extra
                )
                if decision == "retry":
                    await c.until(run_id, lambda s: s.tasks["flaky"].attempt == 4)
                    await _escalated(c, run_id)

        return during

    approved, _, _ = asyncio.run(_run(tmp_path / "a", workflow, deciding("retry", "approve")))
    assert outputs["bad"].returncode == 2
    assert "not waiting for a decision" in outputs["bad"].stderr
    assert outputs["retry"].returncode == 0, outputs["retry"].stderr
    assert "recorded by human:tester" in outputs["approve"].stdout
    assert approved.status == "completed"
    assert approved.tasks["flaky"].output == {"fixed": True}
    assert approved.tasks["flaky"].attempt == 4  # two attempts, a retry, two more
    by_person = [(e.type, e.actor) for e in STORED[-1] if e.actor == "human:tester"]
    assert by_person == [
        ("human.decided", "human:tester"),  # retry
        ("human.decided", "human:tester"),  # approve
        ("task.succeeded", "human:tester"),  # the output the person gave
    ]

    rejected, _, types = asyncio.run(_run(tmp_path / "b", workflow, deciding("reject")))
    assert rejected.status == "failed"
    assert "rejected by human:tester" in rejected.reason
    assert "human.decided" in types


def test_cancel_via_the_cli_stops_the_run_and_the_agents_drop_the_work(tmp_path: Path) -> None:
    workflow = WorkflowSpec(
        name="slow",
        steps=[StepSpec(id="nap", role="sleeper", params={"seconds": 30}, timeout_s=60)],
        agents=[AgentSpec(role="sleeper", handler="agents.builtin:sleep")],
    )
    result: dict[str, subprocess.CompletedProcess[str]] = {}

    async def during(c: Cluster, run_id: str) -> None:
        await c.until(run_id, lambda s: s.tasks["nap"].status == "running")
        state = c.orchestrator.run(run_id)
        await c.until_held(state.tasks["nap"].agent_id, run_id, "nap", 1)
        result["cancel"] = await asyncio.to_thread(_cli, c, "cancel", run_id, "--note", "enough")
        agent = state.tasks["nap"].agent_id
        # the agent's next heartbeats no longer list the cancelled attempt
        for _ in range(200):
            held = [hb.held for hb in c.orchestrator.agents() if hb.agent_id == agent]
            if held and not held[0]:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the agent kept the cancelled attempt")

    live, _, types = asyncio.run(_run(tmp_path, workflow, during))
    assert result["cancel"].returncode == 0, result["cancel"].stderr
    assert live.status == "stopped"
    assert live.limit == "cancelled"
    assert live.reason == "enough"
    assert live.tasks["nap"].status == "cancelled"
    assert "cancel.requested" in types


def test_contract_net_awards_each_task_to_the_best_bid_of_live_agents(tmp_path: Path) -> None:
    workflow = load(EXAMPLES / "contract-net" / "workflow.toml")

    async def scenario() -> tuple[RunState, list[RunEvent]]:
        async with cluster(tmp_path) as c:
            await c.add_agents(workflow.agents)
            run_id = await c.orchestrator.start_run(workflow)
            live = await c.orchestrator.wait(run_id, timeout=60)
            stored = await c.stack.store.read_stream(journal.run_stream(run_id))
        return live, [journal.decode_run_event(s) for s in stored]

    live, events = asyncio.run(scenario())
    assert live.status == "completed"
    bids = [e for e in events if isinstance(e, BidReceived)]
    assert len(bids) == 9  # three agents bid for each of three tasks
    awarded = {e.task_id: e for e in events if isinstance(e, TaskAssigned)}
    # agent 1 bids lowest and has room for two; the third goes to the next best, agent 2
    winners = [awarded[f"research[{i}]"].agent_id.split("-")[1] for i in range(3)]
    assert winners == ["1", "1", "2"]
    reasons = [awarded[f"research[{i}]"].reason for i in range(3)]
    assert reasons[0].startswith("contract net: best of 3 usable bid(s) of 3: cost 1")
    assert reasons[2].startswith("contract net: best of 2 usable bid(s) of 3: cost 2")


def test_a_planner_agent_replans_around_a_step_that_keeps_failing(tmp_path: Path) -> None:
    live, _, types = asyncio.run(_run(tmp_path, load(EXAMPLES / "replan" / "workflow.toml")))
    assert live.status == "completed"
    assert live.replans == 1
    assert live.tasks["fetch"].status == "skipped"
    assert live.tasks["fetch_r1"].agent_id.startswith("steady-")
    assert set(live.result or {}) == {"write_r1"}
    assert types.index("replan.requested") < types.index("plan.adopted")


def test_a_chat_carries_on_after_an_orchestrator_restart_without_a_turn_twice(
    tmp_path: Path,
) -> None:
    """The chat's progress lives only in the log: a new orchestrator rebuilds it, takes the
    turn its agent finished while nobody listened from the inbox, and goes on."""
    gate = tmp_path / "turn-2-may-end"
    workflow = WorkflowSpec(
        name="chat-restart",
        steps=[
            StepSpec(id="talk", chat=Chat(participants=["sleeper"], max_turns=3),
                     params={"gated": ["talk#2"], "gate": str(gate)}),
            StepSpec(id="after", role="sleeper", needs=["talk"]),
        ],
        agents=[AgentSpec(role="sleeper", handler="tests.crash_handlers:gated", capacity=2)],
    )  # fmt: skip

    async def scenario() -> tuple[RunState, list[RunEvent]]:
        async with cluster(tmp_path) as c:
            await c.add_agents(workflow.agents)
            run_id = await c.orchestrator.start_run(workflow)
            running = await c.until(run_id, lambda s: s.tasks.get("talk#2") is not None
                                    and s.tasks["talk#2"].status == "running")  # fmt: skip
            turn = running.tasks["talk#2"]
            await c.until_held(turn.agent_id, run_id, "talk#2", turn.attempt)
            await c.orchestrator.stop()
            gate.touch()  # turn 2 ends and is published while nobody listens
            await until_inbox_holds(c.stack.nats_url, run_id, 1)
            bus = await Bus.connect(c.stack.nats_url, name="orchestrator-2")
            second = Orchestrator(bus, c.stack.store, agent_ttl=1.0, tick_s=0.05)
            await second.start()
            final = await second.wait(run_id, timeout=30)
            await second.stop()
            await bus.close()
            stored = await c.stack.store.read_stream(journal.run_stream(run_id))
        return final, [journal.decode_run_event(s) for s in stored]

    final, events = asyncio.run(scenario())
    assert final.status == "completed"
    chat = final.tasks["talk"].output or {}
    assert (chat["turns"], chat["ended_by"]) == (3, "max_turns")
    done = Counter(e.task_id for e in events if isinstance(e, TaskSucceeded))
    assert done == {"talk#1": 1, "talk#2": 1, "talk#3": 1, "talk": 1, "after": 1}
    assigned = Counter(e.task_id for e in events if isinstance(e, TaskAssigned))
    assert assigned["talk#2"] == 1, "turn 2's result waited in the inbox; it was not re-run"
