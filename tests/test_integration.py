"""The example workflow end to end: real nats-server, real agent processes, SQLite log."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections import Counter
from pathlib import Path

from orchestrator.core.events import TaskAssigned, TaskSucceeded
from orchestrator.service import journal
from orchestrator.service.workflow_files import load
from tests.cluster import EXAMPLE, REPO, baton, cluster


def test_example_run_completes_and_its_log_rebuilds_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        workflow = load(EXAMPLE)
        async with cluster(tmp_path) as c:
            await c.add_agents(workflow.agents, base=EXAMPLE.parent)
            run_id = await c.orchestrator.start_run(workflow)
            live = await c.orchestrator.wait(run_id, timeout=60)
            stored = await c.stack.store.read_stream(journal.run_stream(run_id))
            rebuilt = await journal.load_run(c.stack.store, run_id)
            report = await c.stack.store.verify()

        assert live.status == "completed"
        assert rebuilt == live
        assert report.ok
        assert report.checked >= len(stored)
        brief = live.result["write"] if live.result else {}
        assert brief["title"] == "Brief: coordination in multi-agent systems"
        assert len(brief["sections"]) == 3
        events = [journal.decode_run_event(s) for s in stored]
        done = Counter(e.task_id for e in events if isinstance(e, TaskSucceeded))
        assert done == {
            t: 1 for t in ("plan", "research[0]", "research[1]", "research[2]", "write")
        }
        research_agents = {
            e.agent_id
            for e in events
            if isinstance(e, TaskAssigned) and e.task_id[:8] == "research"
        }
        assert len(research_agents) == 3, "least-load routing spreads the fan-out"
        assert sorted(brief["sources"]) == sorted(research_agents)
        for s in stored:
            assert s.correlation_id == run_id
            assert s.trace_id == live.trace_id
            assert len(s.trace_id) == 32
            assert s.causation_id
            assert s.actor
            assert len(s.span_id) == 16
        assigned = [s for s in stored if s.type == "task.assigned"]
        assert {s.actor for s in assigned} == {"orchestrator"}
        succeeded = [s for s in stored if s.type == "task.succeeded"]
        assert all(s.actor.split("-")[0] in {"planner", "researcher", "writer"} for s in succeeded)

    asyncio.run(scenario())


def test_readme_first_command_path_runs_replays_and_audits(tmp_path: Path) -> None:
    state = tmp_path / "state"
    run = subprocess.run(
        [*baton("run", str(EXAMPLE), "--state-dir", str(state))],
        capture_output=True, text=True, timeout=180, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr + run.stdout
    assert "started  on planner-1-" in run.stdout
    assert "finished on researcher-" in run.stdout
    assert "Brief: coordination in multi-agent systems" in run.stdout
    run_id = run.stdout.split("baton replay ")[1].split()[0]

    replay = subprocess.run(
        baton("replay", run_id, "--state-dir", str(state)), capture_output=True, text=True
    )
    assert replay.returncode == 0, replay.stderr
    assert f"run {run_id}" in replay.stdout
    assert "status completed" in replay.stdout
    assert replay.stdout.count("succeeded") == 5
    assert "hash chain: ok" in replay.stdout

    audit = subprocess.run(
        baton("audit", "--run", run_id, "--json", "--state-dir", str(state)),
        capture_output=True, text=True,
    )  # fmt: skip
    lines = [json.loads(line) for line in audit.stdout.splitlines()]
    assert next(e["type"] for e in lines) == "run.started"
    assert lines[-1]["type"] == "run.completed"
    assert all(e["correlation_id"] == run_id for e in lines)

    writer = next(e["actor"] for e in lines if e["actor"].startswith("writer-"))
    by_agent = subprocess.run(
        baton("audit", "--agent", writer, "--type", "task.*", "--state-dir", str(state)),
        capture_output=True, text=True,
    )  # fmt: skip
    rows = by_agent.stdout.splitlines()
    assert len(rows) == 1
    assert "task.succeeded" in rows[0]
    assert writer in rows[0]
