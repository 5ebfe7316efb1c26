"""Workflows as data: a strict TOML file (or the same Structs built in Python) compiled to
one task graph. Sequential steps are `needs` chains, a parallel fan-out is a step with
`fan_out` copies, and a join is a step that needs the fanned-out one.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec

from bus.contracts import Contracts
from orchestrator.errors import WorkflowError

_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_FAN_OUT = 10_000


class StepSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step: which role does it, after which steps, how many copies, with what limits."""

    id: str
    role: str
    needs: list[str] = []
    params: dict[str, Any] = {}
    fan_out: int = 1
    timeout_s: float = 60.0
    max_attempts: int = 3


class AgentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Agent processes `baton run` starts for a workflow: how many, which role, running what."""

    role: str
    handler: str
    count: int = 1
    capacity: int = 4
    capabilities: list[str] = []


class WorkflowSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A named task graph, with the agents that serve it when run on the embedded defaults."""

    name: str
    steps: list[StepSpec]
    description: str = ""
    input: dict[str, Any] = {}
    agents: list[AgentSpec] = []


class TaskSpec(msgspec.Struct, frozen=True):
    """One node of the compiled graph: a step's copy, with the tasks it waits for."""

    task_id: str
    step: str
    index: int
    role: str
    deps: tuple[str, ...]
    params: dict[str, Any]
    timeout_s: float
    max_attempts: int


def task_ids(step: StepSpec) -> list[str]:
    if step.fan_out == 1:
        return [step.id]
    return [f"{step.id}[{i}]" for i in range(step.fan_out)]


def _check_steps(spec: WorkflowSpec) -> None:
    if not _ID.match(spec.name):
        raise WorkflowError("name", f"{spec.name!r} must be 1-64 letters, digits, '-' or '_'")
    if not spec.steps:
        raise WorkflowError("steps", "a workflow needs at least one step")
    seen: set[str] = set()
    for i, step in enumerate(spec.steps):
        where = f"steps[{i}]"
        if not _ID.match(step.id):
            raise WorkflowError(
                f"{where}.id", f"{step.id!r} must be 1-64 letters, digits, '-' or '_'"
            )
        if step.id in seen:
            raise WorkflowError(f"{where}.id", f"duplicate step id {step.id!r}")
        seen.add(step.id)
        if not _ID.match(step.role):
            raise WorkflowError(f"{where}.role", f"{step.role!r} is not a valid role name")
        if not 1 <= step.fan_out <= MAX_FAN_OUT:
            raise WorkflowError(f"{where}.fan_out", f"must be between 1 and {MAX_FAN_OUT}")
        if step.timeout_s <= 0:
            raise WorkflowError(f"{where}.timeout_s", "must be positive")
        if step.max_attempts < 1:
            raise WorkflowError(f"{where}.max_attempts", "must be at least 1")
    for i, step in enumerate(spec.steps):
        for dep in step.needs:
            if dep not in seen:
                raise WorkflowError(f"steps[{i}].needs", f"unknown step {dep!r}")
            if dep == step.id:
                raise WorkflowError(f"steps[{i}].needs", f"step {dep!r} needs itself")


def _check_acyclic(spec: WorkflowSpec) -> None:
    needs = {s.id: set(s.needs) for s in spec.steps}
    done: set[str] = set()
    while len(done) < len(needs):
        ready = [s for s, deps in needs.items() if s not in done and deps <= done]
        if not ready:
            cycle = sorted(s for s in needs if s not in done)
            raise WorkflowError("steps", f"dependency cycle among {cycle}")
        done.update(ready)


def _check_agents(spec: WorkflowSpec) -> None:
    if not spec.agents:
        return
    served = {a.role for a in spec.agents}
    for i, agent in enumerate(spec.agents):
        if agent.count < 1 or agent.capacity < 1:
            raise WorkflowError(f"agents[{i}]", "count and capacity must be at least 1")
    for i, step in enumerate(spec.steps):
        if step.role not in served:
            raise WorkflowError(f"steps[{i}].role", f"no agent in [[agents]] serves {step.role!r}")


def validate(spec: WorkflowSpec) -> WorkflowSpec:
    """`spec` if it can run, else `WorkflowError` naming the first problem's location."""
    _check_steps(spec)
    _check_acyclic(spec)
    _check_agents(spec)
    return spec


def check_roles(spec: WorkflowSpec, contracts: Contracts) -> WorkflowSpec:
    """`spec` if every role it uses has a contract, else `WorkflowError` naming where."""
    for i, step in enumerate(spec.steps):
        if step.role not in contracts:
            raise WorkflowError(f"steps[{i}].role", f"no contract for role {step.role!r}")
    for i, agent in enumerate(spec.agents):
        if agent.role not in contracts:
            raise WorkflowError(f"agents[{i}].role", f"no contract for role {agent.role!r}")
        limit = contracts.get(agent.role).concurrency
        if agent.capacity > limit:
            raise WorkflowError(
                f"agents[{i}].capacity", f"{agent.capacity} is over the contract's {limit}"
            )
    return spec


def compile_graph(spec: WorkflowSpec) -> dict[str, TaskSpec]:
    """The task graph, in a topological order that replay reproduces exactly."""
    by_id = {s.id: s for s in spec.steps}
    order: list[str] = []
    placed: set[str] = set()
    while len(order) < len(spec.steps):
        for step in spec.steps:
            if step.id not in placed and set(step.needs) <= placed:
                order.append(step.id)
                placed.add(step.id)
    graph: dict[str, TaskSpec] = {}
    for step_id in order:
        step = by_id[step_id]
        deps = tuple(t for dep in step.needs for t in task_ids(by_id[dep]))
        for index, task_id in enumerate(task_ids(step)):
            graph[task_id] = TaskSpec(
                task_id,
                step.id,
                index,
                step.role,
                deps,
                step.params,
                step.timeout_s,
                step.max_attempts,
            )
    return graph


def _location(error: msgspec.ValidationError) -> tuple[str, str]:
    text = str(error)
    match = re.search(r" - at `\$\.?(.*)`$", text)
    if match:
        return match.group(1) or "(top)", text[: match.start()]
    return "", text


def parse(data: dict[str, Any]) -> WorkflowSpec:
    """A validated spec from already-parsed TOML/JSON data.

    A top-level `contracts` key (the role contracts file `baton run` governs by) is
    deployment configuration, not part of the recorded spec; see `contracts_file`.
    """
    data = dict(data)
    contracts = data.pop("contracts", "")
    if not isinstance(contracts, str):
        raise WorkflowError("contracts", "must be the path of a role contracts file")
    try:
        spec = msgspec.convert(data, WorkflowSpec)
    except msgspec.ValidationError as exc:
        location, message = _location(exc)
        raise WorkflowError(location, message) from exc
    return validate(spec)


def contracts_file(path: str | Path) -> str:
    """The absolute path of the role contracts file a workflow file names, or ''."""
    path = Path(path)
    try:
        named = tomllib.loads(path.read_text()).get("contracts", "")
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise WorkflowError(str(path), f"cannot read: {exc}") from exc
    if not isinstance(named, str):
        raise WorkflowError(f"{path}: contracts", "must be the path of a role contracts file")
    return str((path.parent / named).resolve()) if named else ""


def load(path: str | Path) -> WorkflowSpec:
    """A validated spec from a TOML workflow file."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise WorkflowError(str(path), "no such file") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise WorkflowError(str(path), f"not valid TOML: {exc}") from exc
    try:
        return parse(data)
    except WorkflowError as exc:
        raise WorkflowError(f"{path}: {exc.location}", exc.message) from exc
