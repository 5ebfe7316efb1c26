"""The run page's task graph (`orchestrator.cli.console.graph`), drawn from run states
alone: on every golden log (each pattern and ending) one node per task in the task's
state, one edge per dependency, each task to the right of what it needs; a run over
`TASKS_MAX` tasks drawn as its steps with their tasks counted by state."""

from __future__ import annotations

import asyncio
import itertools
import xml.etree.ElementTree as ET
from collections import Counter

import pytest

from eventstore import MemoryEventStore
from orchestrator.cli import history
from orchestrator.cli.console import graph
from orchestrator.core.commands import AgentView, Context, StartRun
from orchestrator.core.decide import decide
from orchestrator.core.state import RunState, fold
from orchestrator.core.workflow import StepSpec, WorkflowSpec
from orchestrator.service import journal
from tests.test_golden import LOGS

SVG = "{http://www.w3.org/2000/svg}"


def _parsed(drawn: str) -> ET.Element:
    return ET.fromstring(drawn.replace("<svg ", f'<svg xmlns="{SVG[1:-1]}" ', 1))


def _title(node: ET.Element) -> str:
    title = node.find(f"{SVG}title")
    assert title is not None, "a node without its title"
    assert title.text is not None
    return title.text


def _x(node: ET.Element) -> int:
    return int(node.attrib["transform"].removeprefix("translate(").split(",")[0])


def _golden_states() -> list[RunState]:
    async def load() -> list[RunState]:
        store = MemoryEventStore()
        runs = [await history.import_lines(store, log.read_text().splitlines()) for log in LOGS]
        return [await journal.load_run(store, run_id) for run_id in runs]

    return asyncio.run(load())


@pytest.mark.parametrize(
    "state", _golden_states(), ids=lambda s: s.workflow.name if s.workflow else "?"
)
def test_each_task_is_a_node_in_its_state_with_an_edge_per_dependency(state: RunState) -> None:
    assert 0 < len(state.graph) <= graph.TASKS_MAX
    svg = _parsed(graph.draw(state))
    nodes = {n.attrib["data-node"]: n for n in svg.iter(f"{SVG}g") if "data-node" in n.attrib}
    assert set(nodes) == set(state.graph)
    for task_id, node in nodes.items():
        status = state.tasks[task_id].status if task_id in state.tasks else "pending"
        assert node.attrib["class"] == f"node st {status}"
        assert _title(node) == f"{task_id}: {status}"
        for dep in state.graph[task_id].deps:
            assert _x(nodes[dep]) < _x(node), f"{task_id} is drawn before {dep}"
    edges = [e for e in svg.iter(f"{SVG}line")]
    assert len(edges) == sum(len(spec.deps) for spec in state.graph.values())


def _large_state() -> RunState:
    workflow = WorkflowSpec(
        "wide",
        [
            StepSpec("fetch", role="r", fan_out=graph.TASKS_MAX),
            StepSpec("sum", role="r", needs=["fetch"]),
            StepSpec("report", role="r", needs=["sum"]),
        ],
    )
    tokens = itertools.count()
    ctx = Context(0.0, 0.0, [AgentView("a", "r", 30, 0)], lambda: f"L{next(tokens)}", lambda: 0.5)
    state = RunState("wide-run")
    return fold(state, decide(state, StartRun("wide-run", workflow, {}, "0" * 32, "t"), ctx))


def test_a_large_run_is_drawn_as_its_steps_with_their_tasks_counted() -> None:
    state = _large_state()
    assert len(state.graph) > graph.TASKS_MAX
    svg = _parsed(graph.draw(state))
    steps = {n.attrib["data-step"]: n for n in svg.iter(f"{SVG}g") if "data-step" in n.attrib}
    assert set(steps) == {"fetch", "sum", "report"}
    counted = Counter(state.tasks[t].status for t in state.graph if t.startswith("fetch"))
    assert set(counted) == {"running", "pending"}, "30 taken by the one agent, the rest wait"
    fetch = steps["fetch"]
    assert fetch.attrib["class"] == "node st running"
    assert _title(fetch) == (
        f"fetch ({graph.TASKS_MAX}): {counted['running']} running, {counted['pending']} pending"
    )
    assert steps["report"].attrib["class"] == "node st pending"
    assert _x(steps["fetch"]) < _x(steps["sum"]) < _x(steps["report"])
    assert len(list(svg.iter(f"{SVG}line"))) == 2


def test_a_run_without_tasks_draws_nothing() -> None:
    assert graph.draw(RunState("empty")) == ""
