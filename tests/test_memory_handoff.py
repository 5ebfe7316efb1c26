"""Memory that moves with the work: a handoff passes the next owner the refs of the shared
memory the previous owner wrote (recorded in `TaskHandedOff`, so replay gives the same
assignment), and a fork starts with its origin's `run` memory as of the fork point. The
pure core is tested without I/O; the rest runs real agent processes on a governed stack
over the real SQLite store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec

from bus.protocol import MemoryWrite, TaskResult
from eventstore import EventQuery
from orchestrator.cli import history
from orchestrator.core.commands import AgentView, ReportResult
from orchestrator.core.effects import SendAssignment, effects, pending_effects
from orchestrator.core.events import TaskAssigned, TaskHandedOff
from orchestrator.core.state import fold
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec, validate
from orchestrator.service import journal, memory
from tests.cluster import REPO, cluster
from tests.test_decide import Run

HANDLERS = REPO / "tests" / "handoff_handlers.py"
ROLES = """
[[roles]]
name = "drafter"
memory = { read = ["run"], write = ["run", "agent"] }
handoff_to = ["checker"]

[[roles]]
name = "checker"
memory = { read = ["run"] }
"""
AGENTS = [AgentSpec("drafter", f"{HANDLERS}:draft"), AgentSpec("checker", f"{HANDLERS}:check")]
NOTES = {
    "claim": "The event log is the single source of truth",
    "source": "DESIGN section three says so",
}


def test_a_handoff_records_the_memory_refs_and_the_next_owner_receives_them() -> None:
    wf = validate(WorkflowSpec("t", [StepSpec(id="desk", role="r", handoff_to=["w", "r"])]))
    run = Run(wf, agents=[AgentView("r1", "r", 4, 0), AgentView("w1", "w", 4, 0)])

    def hand(to: str, refs: tuple[str, ...]) -> list[Any]:
        t = run.state.tasks["desk"]
        result = TaskResult(
            "run1", "desk", t.attempt, t.lease_token, t.agent_id, {"n": t.attempt}, 0.1,
            handoff_to=to,
        )  # fmt: skip
        return run.do(ReportResult(result, t.agent_id, refs))

    events = hand("w", ("memory:a", "memory:b"))
    [handed] = [e for e in events if isinstance(e, TaskHandedOff)]
    assert handed.memory_refs == ["memory:a", "memory:b"], "the refs are recorded, not recomputed"
    send = next(e for e in effects(run.state, events) if isinstance(e, SendAssignment))
    assert send.assignment.role == "w"
    assert send.assignment.input["memory_refs"] == ["memory:a", "memory:b"]
    assert send.assignment.input["context"][0]["memory_refs"] == ["memory:a", "memory:b"]

    events = hand("r", ("memory:c",))  # a second handoff: every owner's refs, in order
    send = next(e for e in effects(run.state, events) if isinstance(e, SendAssignment))
    assert send.assignment.input["memory_refs"] == ["memory:a", "memory:b", "memory:c"]
    assert [c.get("memory_refs") for c in send.assignment.input["context"]] == [
        ["memory:a", "memory:b"],
        ["memory:c"],
    ]
    # replay folds the recorded refs: the same state, the same pending assignment
    replayed = fold(type(run.state)("run1"), run.log)
    assert replayed == run.state
    again = next(e for e in pending_effects(replayed) if isinstance(e, SendAssignment))
    assert again.assignment.input == send.assignment.input


def test_a_handoff_without_memory_writes_adds_no_refs() -> None:
    wf = validate(WorkflowSpec("t", [StepSpec(id="desk", role="r", handoff_to=["w"])]))
    run = Run(wf, agents=[AgentView("r1", "r", 4, 0), AgentView("w1", "w", 4, 0)])
    t = run.state.tasks["desk"]
    result = TaskResult(
        "run1", "desk", t.attempt, t.lease_token, t.agent_id, {}, 0.1, handoff_to="w"
    )
    events = run.do(ReportResult(result, t.agent_id))
    send = next(e for e in effects(run.state, events) if isinstance(e, SendAssignment))
    assert "memory_refs" not in send.assignment.input
    assert "memory_refs" not in send.assignment.input["context"][0]


def _workflow() -> WorkflowSpec:
    return WorkflowSpec(
        "handoff-memory",
        [
            StepSpec(
                "desk", "drafter", handoff_to=["checker"], params={"notes": NOTES, "to": "checker"}
            )
        ],
    )


def test_the_receiver_of_a_handoff_reads_the_memory_it_was_passed_and_forks_carry_it(
    tmp_path: Path,
) -> None:
    roles = tmp_path / "roles.toml"
    roles.write_text(ROLES)
    state_dir = tmp_path / "state"

    async def scenario() -> dict[str, Any]:
        seen: dict[str, Any] = {}
        async with cluster(state_dir, contracts=str(roles)) as c:
            await c.add_agents(AGENTS)
            run_id = await c.orchestrator.start_run(_workflow())
            state = await c.orchestrator.wait(run_id, timeout=60)
            assert state.status == "completed", state.reason
            store = c.stack.store
            log = await store.read_stream(journal.run_stream(run_id))
            decoded = [(s.position, journal.decode_run_event(s)) for s in log]
            seen["handed"] = [e for _, e in decoded if isinstance(e, TaskHandedOff)]
            first_assigned = next(p for p, e in decoded if isinstance(e, TaskAssigned))
            stored = await store.query(EventQuery(stream=memory.STREAM))
            seen["written"] = [
                (s.event_id, msgspec.msgpack.decode(s.data, type=MemoryWrite)) for s in stored
            ]
            seen["result"] = state.result
            # fork while the orchestrator (and its memory service) is live
            await history.fork(store, run_id, log[-1].position, "fork-late", "test")
            await history.fork(store, run_id, first_assigned, "fork-early", "test")
            fork_log = await store.read_stream(journal.run_stream("fork-late"))
            await history.fork(store, "fork-late", fork_log[1].position, "fork-of-fork", "test")
            seen["run_id"] = run_id
            # the live memory service was not told of the copies: its next write meets them
            # (a version conflict) and indexes them before it is recorded
            second = await c.orchestrator.start_run(_workflow())
            assert (await c.orchestrator.wait(second, timeout=20)).status == "completed"
            live = await c.orchestrator.memory.query(
                "event log design", [("run", "fork-late")], 10, "lexical"
            )
            seen["live"] = sorted(h.key for h in live.hits)
        # a new orchestrator over the same log rebuilds every run's memory by replay
        async with cluster(state_dir, contracts=str(roles)) as again:
            service = again.orchestrator.memory
            for run in (run_id, "fork-late", "fork-early", "fork-of-fork"):
                hits = await service.query("event log design", [("run", run)], 10, "lexical")
                seen[run] = sorted(h.key for h in hits.hits)
            seen["copies"] = await memory.recorded(again.stack.store)
        return seen

    seen = asyncio.run(scenario())
    run_id = seen["run_id"]
    written: list[tuple[str, Any]] = seen["written"]
    shared = [ref for ref, w in written if w.scope == "run"]
    private = [ref for ref, w in written if w.scope == "agent"]
    assert len(shared) == 2
    assert len(private) == 1
    [handed] = seen["handed"]
    assert (handed.from_role, handed.to_role) == ("drafter", "checker")
    assert sorted(handed.memory_refs) == sorted(shared), "the run-scope writes, not the private one"
    out = seen["result"]["desk"]
    assert sorted(out["refs"]) == sorted(shared)
    assert out["read"] == NOTES, "the checker read what the drafter wrote, by its refs"
    assert out["from"] == ["drafter"]
    # forks: the origin's run memory as of the fork point, as events of the new run
    assert seen[run_id] == ["claim", "source"]
    assert seen["fork-late"] == ["claim", "source"]
    assert seen["live"] == ["claim", "source"], "the live service caught up with the copies"
    assert seen["fork-early"] == [], "nothing was written before the first assignment"
    assert seen["fork-of-fork"] == ["claim", "source"], "a fork of a fork carries it on"
    copies = [w for w in seen["copies"] if w.run_id == "fork-late"]
    assert sorted(w.key for w in copies) == ["claim", "source"]
    assert all(w.scope == "run" for w in copies), "private agent memory is not copied"


def test_an_agent_refuses_a_handoff_its_contract_does_not_allow(tmp_path: Path) -> None:
    roles = tmp_path / "roles.toml"
    roles.write_text(ROLES.replace('handoff_to = ["checker"]', "handoff_to = []"))

    async def scenario() -> tuple[Any, list[Any]]:
        async with cluster(tmp_path / "state", contracts=str(roles)) as c:
            await c.add_agents([AgentSpec("drafter", f"{HANDLERS}:draft")])
            # the step allows it (start_run does not check the contracts, `baton run` does)
            run_id = await c.orchestrator.start_run(_workflow())
            state = await c.orchestrator.wait(run_id, timeout=60)
            log = await c.stack.store.read_stream(journal.run_stream(run_id))
            return state, [journal.decode_run_event(s) for s in log]

    state, events = asyncio.run(scenario())
    assert state.status == "failed"
    assert "role 'drafter' may not hand off to 'checker'" in state.tasks["desk"].error
    assert not [e for e in events if isinstance(e, TaskHandedOff)]
    assert state.tasks["desk"].attempt == 1, "not retried: the contract will not change"


def test_a_fork_after_a_handoff_passes_the_receiver_the_forks_own_memory(
    tmp_path: Path,
) -> None:
    roles = tmp_path / "roles.toml"
    roles.write_text(ROLES)
    state_dir = tmp_path / "state"

    async def scenario() -> tuple[list[str], Any, list[str]]:
        async with cluster(state_dir, contracts=str(roles)) as c:
            await c.add_agents(AGENTS)
            run_id = await c.orchestrator.start_run(_workflow())
            assert (await c.orchestrator.wait(run_id, timeout=60)).status == "completed"
            log = await c.stack.store.read_stream(journal.run_stream(run_id))
            handed = next(s for s in log if s.type == "task.handed_off")
            # the checker's assignment comes with the handoff: the fork's resume sends it
            await history.fork(c.stack.store, run_id, handed.position, "fork-handed", "test")
            forked = await c.stack.store.read_stream(journal.run_stream("fork-handed"))
            [copy] = [journal.decode_run_event(s) for s in forked if s.type == "task.handed_off"]
            assert isinstance(copy, TaskHandedOff)
        # a new orchestrator serves the fork (its checker is gone: a new one takes it over)
        async with cluster(state_dir, contracts=str(roles)) as again:
            await again.add_agents(AGENTS)
            state = await again.orchestrator.wait("fork-handed", timeout=60)
            assert state.status == "completed", state.reason
            copies = [
                w for w in await memory.recorded(again.stack.store) if w.run_id == "fork-handed"
            ]
            stored = await again.stack.store.query(EventQuery(stream=memory.STREAM))
            ids = [s.event_id for s in stored if s.correlation_id == "fork-handed"]
            assert len(ids) == len(copies) == 2
            return copy.memory_refs, state.result, ids

    refs, result, copy_ids = asyncio.run(scenario())
    assert sorted(refs) == sorted(copy_ids), "the handoff passes the fork's copies"
    assert result["desk"]["read"] == NOTES, "the receiver read them"
