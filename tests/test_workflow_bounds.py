"""Bounds on a workflow's numbers and nesting (issue 12, finding 10): a workflow that
would fork-bomb the machine, a NaN that compares false with every limit, and nesting
deep enough to end a parser are clear, located `WorkflowError`s, from a file, from
`--input`, and over the API of a real orchestrator; never a traceback."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bus import subjects
from bus.codec import MAX_DEPTH, Decoder, encode
from bus.connection import Bus
from bus.contracts import Contracts
from bus.errors import ContractError
from bus.protocol import ErrorReply
from orchestrator.core.errors import WorkflowError
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec, parse
from orchestrator.service import journal
from orchestrator.service.api import RunAccepted, StartRunRequest
from orchestrator.service.workflow_files import load, parse_input
from tests.cluster import REPO, baton, cluster

GOOD = 'name = "w"\n[[steps]]\nid = "a"\nrole = "r"\n'


def wf(step: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    return {"name": "w", "steps": [{"id": "a", "role": "r", **(step or {})}], **top}


@pytest.mark.parametrize(
    ("data", "location", "message"),
    [
        (wf(agents=[{"role": "r", "handler": "m:f", "count": 100_000}]), "agents[0].count",
         "at most 64"),
        (wf(agents=[{"role": "r", "handler": "m:f", "count": 64}] * 3), "count",
         "192 agent processes in all, over the limit of 128"),
        (wf(agents=[{"role": "r", "handler": "m:f", "capacity": 10**6}]), "agents[0].capacity",
         "at most 1024"),
        (wf({"timeout_s": float("nan")}), "steps[0].timeout_s", "finite"),
        (wf({"timeout_s": float("inf")}), "steps[0].timeout_s", "finite"),
        (wf({"timeout_s": 1e9}), "steps[0].timeout_s", "at most 604800"),
        (wf({"max_attempts": 10**6}), "steps[0].max_attempts", "at most 100"),
        (wf({"loop": {"back_to": "a", "until": "ok", "max_rounds": 10**6}}),
         "steps[0].loop.max_rounds", "at most 1000"),
        (wf(limits={"deadline_s": float("nan")}), "limits.deadline_s", "finite"),
        (wf(limits={"max_replans": 10**6}), "limits.max_replans", "at most 100"),
        ({"name": "w", "steps": [{"id": f"s{i}", "role": "r", "fan_out": 10_000}
                                 for i in range(11)]}, "fan_out",
         "110000 tasks in all, over the limit of 100000"),
    ],
)  # fmt: skip
def test_numbers_out_of_bounds_are_located_errors(
    data: dict[str, Any], location: str, message: str
) -> None:
    with pytest.raises(WorkflowError) as caught:
        parse(data)
    assert caught.value.location == location
    assert message in caught.value.message


def nested(depth: int) -> str:
    return "[" * depth + "1" + "]" * depth


@pytest.mark.parametrize("depth", [MAX_DEPTH + 5, 100_000])
@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_deep_nesting_in_a_workflow_file_is_a_clear_error(
    tmp_path: Path, depth: int, suffix: str
) -> None:
    path = tmp_path / f"deep{suffix}"
    if suffix == ".toml":
        path.write_text(GOOD + f"params = {{ x = {nested(depth)} }}\n")
    else:
        path.write_text(
            f"name: w\nsteps:\n  - id: a\n    role: r\n    params: {{x: {nested(depth)}}}\n"
        )
    with pytest.raises(WorkflowError) as caught:
        load(path)
    assert caught.value.location == str(path)
    assert f"nested more than {MAX_DEPTH} deep" in caught.value.message


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_a_toml_nan_or_infinity_is_refused(tmp_path: Path, text: str) -> None:
    path = tmp_path / "w.toml"
    path.write_text(GOOD + f"timeout_s = {text}\n")
    with pytest.raises(WorkflowError) as caught:
        load(path)
    assert caught.value.location == f"{path}: steps[0].timeout_s"


@pytest.mark.parametrize("depth", [MAX_DEPTH + 5, 100_000])
def test_deep_input_json_is_a_clear_error(depth: int) -> None:
    with pytest.raises(WorkflowError) as caught:
        parse_input('{"x": ' + nested(depth) + "}")
    assert caught.value.location == "--input"
    assert f"nested more than {MAX_DEPTH} deep" in caught.value.message


def test_the_cli_refuses_deep_input_and_deep_files_without_a_traceback(tmp_path: Path) -> None:
    good = tmp_path / "w.toml"
    good.write_text(GOOD)
    deep = tmp_path / "deep.toml"
    deep.write_text(GOOD + f"params = {{ x = {nested(100_000)} }}\n")
    for argv in (
        baton("run", str(good), "--input", '{"x": ' + nested(50_000) + "}",  # an argv limit
              "--state-dir", str(tmp_path / "state")),
        baton("run", str(deep), "--state-dir", str(tmp_path / "state")),
    ):  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=60)
        assert result.returncode == 2, result.stderr
        assert "nested more than" in result.stderr
        assert "Traceback" not in result.stderr
    assert not (tmp_path / "state").exists()


def test_the_api_refuses_a_nan_timeout_and_a_fork_bomb(tmp_path: Path) -> None:
    replies: Decoder[ErrorReply | RunAccepted] = Decoder(ErrorReply | RunAccepted)
    nan_step = WorkflowSpec("w", [StepSpec("a", "r", timeout_s=float("nan"))])
    bomb = WorkflowSpec("w", [StepSpec("a", "r")], agents=[AgentSpec("r", "m:f", count=10**5)])

    async def scenario() -> list[ErrorReply | RunAccepted]:
        async with cluster(tmp_path) as c:
            bus = await Bus.connect(c.stack.nats_url, name="client")
            try:
                answers = [
                    replies.decode(
                        await bus.request(
                            subjects.run_start("tester"), encode(StartRunRequest(spec)), timeout=10
                        )
                    )
                    for spec in (nan_step, bomb)
                ]
            finally:
                await bus.close()
            assert await c.stack.store.streams(journal.RUN_PREFIX) == [], "no run was created"
        return answers

    nan_answer, bomb_answer = asyncio.run(scenario())
    assert isinstance(nan_answer, ErrorReply)
    assert "steps[0].timeout_s" in nan_answer.detail
    assert "finite" in nan_answer.detail
    assert isinstance(bomb_answer, ErrorReply)
    assert "agents[0].count" in bomb_answer.detail


@pytest.mark.parametrize("seconds", [float("nan"), float("inf"), 1e12])
def test_a_contract_budget_must_be_a_bounded_finite_number(seconds: float) -> None:
    with pytest.raises(ContractError) as caught:
        Contracts.parse({"roles": [{"name": "r", "budget": {"seconds": seconds}}]})
    assert caught.value.location == "roles[0].budget.seconds"
