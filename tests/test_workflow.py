"""Workflow files decode strictly and compile to the task graph the core runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.core.errors import WorkflowError
from orchestrator.core.workflow import compile_graph, parse
from orchestrator.service.workflow_files import load
from tests.cluster import EXAMPLE


def _steps(*steps: dict[str, object]) -> dict[str, object]:
    return {"name": "w", "steps": list(steps)}


def test_example_compiles_to_plan_fan_out_and_join() -> None:
    graph = compile_graph(load(EXAMPLE))
    assert list(graph) == ["plan", "research[0]", "research[1]", "research[2]", "write"]
    assert graph["research[1]"].deps == ("plan",)
    assert graph["research[1]"].index == 1
    assert graph["write"].deps == ("research[0]", "research[1]", "research[2]")


def test_graph_order_is_topological_whatever_the_file_order() -> None:
    spec = parse(_steps({"id": "b", "role": "r", "needs": ["a"]}, {"id": "a", "role": "r"}))
    assert list(compile_graph(spec)) == ["a", "b"]


@pytest.mark.parametrize(
    ("data", "location", "message"),
    [
        (_steps({"id": "a", "role": "r", "retries": 2}), "steps[0]", "unknown field `retries`"),
        (_steps({"id": "a"}), "steps[0]", "missing required field `role`"),
        (_steps({"id": "a", "role": "r", "fan_out": "x"}), "steps[0].fan_out", "Expected `int`"),
        (_steps({"id": "a", "role": "r", "needs": ["z"]}), "steps[0].needs", "unknown step 'z'"),
        (_steps({"id": "a", "role": "r", "needs": ["a"]}), "steps[0].needs", "needs itself"),
        (_steps({"id": "a", "role": "r"}, {"id": "a", "role": "r"}), "steps[1].id", "duplicate"),
        (_steps({"id": "a.b", "role": "r"}), "steps[0].id", "must be 1-64"),
        (_steps({"id": "a", "role": "r", "fan_out": 0}), "steps[0].fan_out", "between 1"),
        (_steps({"id": "a", "role": "r", "max_attempts": 0}), "steps[0].max_attempts", "at least"),
        (_steps({"id": "a", "role": "r", "timeout_s": 0}), "steps[0].timeout_s", "positive"),
        ({"name": "w", "steps": []}, "steps", "at least one step"),
        (
            _steps(
                {"id": "a", "role": "r", "needs": ["c"]},
                {"id": "b", "role": "r", "needs": ["a"]},
                {"id": "c", "role": "r", "needs": ["b"]},
                {"id": "d", "role": "r"},
            ),
            "steps",
            "cycle among ['a', 'b', 'c']",
        ),
        (
            {**_steps({"id": "a", "role": "r"}), "agents": [{"role": "x", "handler": "m:f"}]},
            "steps[0].role",
            "no agent in [[agents]] serves 'r'",
        ),
    ],
)
def test_invalid_workflows_name_the_location(
    data: dict[str, object], location: str, message: str
) -> None:
    with pytest.raises(WorkflowError) as caught:
        parse(data)
    assert caught.value.location == location
    assert message in caught.value.message


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text("name = \n")
    with pytest.raises(WorkflowError, match="not valid TOML") as caught:
        load(broken)
    assert str(broken) in caught.value.location
    with pytest.raises(WorkflowError, match="no such file"):
        load(tmp_path / "missing.toml")
