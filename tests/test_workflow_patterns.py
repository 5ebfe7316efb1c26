"""The workflow language's pattern fields decode strictly and refuse, with a location,
what could never run: unknown roles, unreachable joins and conditions, leaky loops."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from orchestrator.core.errors import WorkflowError
from orchestrator.core.workflow import (
    AgentSpec,
    Chat,
    Condition,
    Loop,
    StepSpec,
    WorkflowSpec,
    compile_graph,
    parse,
    validate,
)
from orchestrator.service.workflow_files import load

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
AGENTS = [{"role": r, "handler": "agents.builtin:noop"} for r in ("w", "r")]


def wf(*steps: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"name": "w", "steps": list(steps), **extra}


@pytest.mark.parametrize(
    ("data", "location", "message"),
    [
        (wf({"id": "a", "role": "w", "needs": ["b"]}, {"id": "b", "role": "w", "needs": ["a"]}),
         "steps", "dependency cycle among ['a', 'b']"),
        (wf({"id": "a", "role": "w"}, {"id": "b", "role": "w", "needs": ["a"], "join": "quorum",
             "quorum": 2}), "steps[1].quorum", "unreachable: quorum 2 of 1"),
        (wf({"id": "a", "role": "w", "join": "any"}), "steps[0].join", "needs upstream steps"),
        (wf({"id": "a", "role": "w"}, {"id": "b", "role": "w", "when": {"step": "b", "key": "k"}}),
         "steps[1].when.step", "'b' is not upstream of 'b'"),
        (wf({"id": "a", "role": "w"}, {"id": "b", "role": "w", "when": {"step": "a", "kye": 1}}),
         "steps[1].when", "unknown field `kye`"),
        (wf({"id": "a", "role": "w"},
            {"id": "b", "role": "w", "loop": {"back_to": "c", "until": "ok"}},
            {"id": "c", "role": "w"}), "steps[1].loop.back_to", "'c' is not upstream of 'b'"),
        (wf({"id": "a", "role": "w"}, {"id": "b", "role": "w", "needs": ["a"],
             "loop": {"back_to": "a", "until": "ok"}}, {"id": "c", "role": "w", "needs": ["a"]}),
         "steps[1].loop", "step 'c' needs 'a' inside the loop"),
        (wf({"id": "a", "role": "w", "retry": {"role": "x"}}, agents=AGENTS),
         "steps[0].retry.role", "no agent in [[agents]] serves 'x'"),
        (wf({"id": "a", "role": "w", "handoff_to": ["x"]}, agents=AGENTS),
         "steps[0].handoff_to", "no agent in [[agents]] serves 'x'"),
        (wf({"id": "c", "chat": {"participants": ["w", "x"], "max_turns": 3}}, agents=AGENTS),
         "steps[0].chat.participants", "no agent in [[agents]] serves 'x'"),
        (wf({"id": "c", "chat": {"participants": ["w"], "max_turns": 0}}),
         "steps[0].chat.max_turns", "must be at least 1"),
        (wf({"id": "c", "chat": {"participants": ["w"], "max_turns": 2, "selector": "agent"}}),
         "steps[0].chat.selector_role", "needed exactly when selector = 'agent'"),
        (wf({"id": "c", "chat": {"participants": ["w"], "max_turns": 2, "rules": {"w": "q"}}}),
         "steps[0].chat.rules", "'q' is not a participant"),
        (wf({"id": "c", "role": "w", "chat": {"participants": ["w"], "max_turns": 2}}),
         "steps[0]", "a chat step has no role"),
        (wf({"id": "a"}), "steps[0]", "missing required field `role`"),
        (wf({"id": "a", "role": "w"}, limits={"tokens": 100}), "steps[0].tokens",
         "every step needs a task budget"),
        (wf({"id": "a", "role": "w"}, limits={"tokens": -1}), "limits", "must not be negative"),
        (wf({"id": "a", "role": "w"}, limits={"max_step": 1}), "limits", "unknown field"),
        (wf({"id": "a", "role": "w", "on_exhausted": "pray"}), "steps[0].on_exhausted",
         "Invalid enum value 'pray'"),
    ],
)  # fmt: skip
def test_bad_pattern_specs_name_their_location(
    data: dict[str, Any], location: str, message: str
) -> None:
    with pytest.raises(WorkflowError) as caught:
        parse(data)
    assert caught.value.location == location
    assert message in caught.value.message


def test_the_python_api_builds_the_same_graph_as_the_file() -> None:
    data = wf(
        {"id": "a", "role": "w"},
        {"id": "b", "role": "r", "needs": ["a"], "loop": {"back_to": "a", "until": "ok"}},
        {"id": "c", "chat": {"participants": ["w", "r"], "max_turns": 4}, "needs": ["b"],
         "when": {"step": "b", "key": "ok"}},
        agents=AGENTS,
    )  # fmt: skip
    built = validate(
        WorkflowSpec(
            name="w",
            steps=[
                StepSpec(id="a", role="w"),
                StepSpec(id="b", role="r", needs=["a"], loop=Loop(back_to="a", until="ok")),
                StepSpec(
                    id="c", needs=["b"], chat=Chat(participants=["w", "r"], max_turns=4),
                    when=Condition(step="b", key="ok"),
                ),
            ],
            agents=[AgentSpec(role=r, handler="agents.builtin:noop") for r in ("w", "r")],
        )
    )  # fmt: skip
    assert parse(data) == built
    graph = compile_graph(built)
    assert graph["c"].kind == "chat"
    assert graph["c"].threshold == 1


def test_join_thresholds_compile_per_mode() -> None:
    spec = parse(
        wf({"id": "a", "role": "w", "fan_out": 5},
           {"id": "any", "role": "w", "needs": ["a"], "join": "any"},
           {"id": "q", "role": "w", "needs": ["a"], "join": "quorum", "quorum": 3},
           {"id": "all", "role": "w", "needs": ["a"]})
    )  # fmt: skip
    graph = compile_graph(spec)
    assert [graph[t].threshold for t in ("any", "q", "all")] == [1, 3, 5]


def test_a_yaml_workflow_is_the_same_spec_as_its_toml(tmp_path: Path) -> None:
    toml = EXAMPLES / "review-loop" / "workflow.toml"
    data = msgspec.to_builtins(load(toml))
    path = tmp_path / "wf.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load(path) == load(toml)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("name: w\nname: v\nsteps: []\n", "duplicate key 'name'"),
        ("name: w\nsteps:\n  - id: a\n    role: r\n    retries: 2\n", "unknown field `retries`"),
        ("name: w\nsteps: [\n", "not valid YAML"),
        ("- just\n- a list\n", "holds a mapping at the top"),
    ],
)
def test_bad_yaml_workflows_are_refused_with_a_reason(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "wf.yml"
    path.write_text(text)
    with pytest.raises(WorkflowError, match=message):
        load(path)
