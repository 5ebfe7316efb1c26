"""Workflows as data: the Structs a strict TOML or YAML file parses into (read by
`orchestrator.service.workflow_files`, or built in Python), compiled to
one task graph. Sequential steps are `needs` chains, a parallel fan-out is a step with
`fan_out` copies, and a join is a step that needs the fanned-out one (waiting for all,
any, or a quorum of them). Conditions (`when`/`unless`) skip a step, a `loop` re-runs a
stretch of steps until an output says so, a `chat` step is a group chat of turns; loops,
chats, subtasks and handoffs add tasks to the graph as the run goes (see
`orchestrator.core.patterns`), so every pattern is the same graph of tasks.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import msgspec

from orchestrator.core import bounds
from orchestrator.core.errors import WorkflowError

_ID = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")
MAX_FAN_OUT = 10_000


Join = Literal["all", "any", "quorum"]
Selector = Literal["round_robin", "rule", "agent"]
OnExhausted = Literal["fail", "escalate", "replan"]
PLANNER = "planner"
"""The role asked for a revised remainder of the graph when a `replan` step gives up."""
Routing = Literal["plain", "contract_net"]


class Condition(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Holds when output key `key` of upstream step `step` equals `equals`."""

    step: str
    key: str
    equals: Any = True


class Loop(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Re-run the steps from `back_to` to this one until this step's output key `until`
    equals `equals`, for at most `max_rounds` rounds (then the step fails: a limit)."""

    back_to: str
    until: str
    equals: Any = True
    max_rounds: int = 3


class Retry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Constraints on retries: another role does them, with a smaller token budget.
    The agent that failed an attempt is always avoided while another one is free."""

    role: str = ""
    tokens: int = 0


class Chat(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A group chat: turns taken by `participants` (roles) chosen by `selector`, ending at
    `max_turns`, when a turn's output key `until` equals `equals`, or when the token
    budget cannot pay for another turn, whichever comes first."""

    participants: list[str]
    max_turns: int
    selector: Selector = "round_robin"
    rules: dict[str, str] = {}
    """`rule` selector: after role X speaks, role rules[X] speaks (else round-robin)."""
    selector_role: str = ""
    """`agent` selector: the role asked (with the transcript) who speaks next."""
    until: str = ""
    equals: Any = True


class StepSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One step: which role does it, after which steps, how many copies, with what limits."""

    id: str
    role: str = ""
    needs: list[str] = []
    params: dict[str, Any] = {}
    fan_out: int = 1
    timeout_s: float = 60.0
    max_attempts: int = 3
    join: Join = "all"
    quorum: int = 0
    when: Condition | None = None
    unless: Condition | None = None
    loop: Loop | None = None
    retry: Retry | None = None
    tokens: int = 0
    """This step's per-task token budget (0: the workflow's `limits.task_tokens`)."""
    chat: Chat | None = None
    handoff_to: list[str] = []
    max_subtasks: int = 0
    on_exhausted: OnExhausted = "fail"
    routing: Routing = "plain"
    bid_window_s: float = 0.5
    """Contract net: how long agents may bid before the best bid is awarded."""


class Limits(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Hard limits of one run, enforced by the core; 0 means no limit."""

    tokens: int = 0
    task_tokens: int = 0
    deadline_s: float = 0.0
    max_steps: int = 0
    max_handoffs: int = 10
    max_subtask_depth: int = 2
    max_replans: int = 2


class AgentSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Agent processes `baton run` starts for a workflow: how many, which role, running what."""

    role: str
    handler: str
    count: int = 1
    capacity: int = 4
    capabilities: list[str] = []
    bidder: str = ""
    """Contract net: how these agents price a tender, like `handler` (default: by load)."""


class ContractsRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The role contracts a run is governed by, as `baton run` found them: the file (an
    absolute path, like the agents' handlers) and the digest of what it said then, so the
    run (or a fork of it) is resumed under the same contracts, or refused."""

    path: str
    digest: str


class WorkflowSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A named task graph, with the agents that serve it when run on the embedded defaults."""

    name: str
    steps: list[StepSpec]
    description: str = ""
    input: dict[str, Any] = {}
    agents: list[AgentSpec] = []
    limits: Limits = Limits()
    governed_by: ContractsRef | None = None
    """Set by `baton run` for a governed run, so it is recorded with the run (a file's
    `contracts` key only names the contracts file, see `parse`)."""


TaskKind = Literal["task", "chat", "turn", "select", "subtask", "plan"]


class TaskSpec(msgspec.Struct, frozen=True):
    """One node of the compiled graph: a step's copy, with the tasks it waits for.

    Tasks added while the run goes (loop rounds, chat turns, subtasks) are TaskSpecs too,
    recorded in the event that adds them."""

    task_id: str
    step: str
    index: int
    role: str
    deps: tuple[str, ...]
    params: dict[str, Any]
    timeout_s: float
    max_attempts: int
    need: int = -1
    """How many deps must succeed before this task may start (-1: all of them)."""
    kind: TaskKind = "task"
    parent: str = ""
    """The chat or the task that spawned this one ('' for a task of the workflow)."""
    round: int = 1
    """Loop round, chat turn, or subtask depth."""
    params_extra: dict[str, Any] = {}
    """Per-task params (a subtask's own), merged over the step's."""
    bid_window_s: float = 0.0
    """Contract net: seconds agents may bid (0: plain routing)."""
    conditional: bool = False
    """Its step has `when`/`unless`: checked (branch taken or skipped) before dispatch."""
    looped: bool = False
    """Its step has a `loop`: its result may start another round."""

    @property
    def threshold(self) -> int:
        return len(self.deps) if self.need < 0 else self.need


def task_ids(step: StepSpec) -> list[str]:
    if step.fan_out == 1:
        return [step.id]
    return [f"{step.id}[{i}]" for i in range(step.fan_out)]


def _valid_id(where: str, value: str, what: str = "") -> None:
    if not _ID.match(value):
        raise WorkflowError(where, f"{value!r} must be 1-64 letters, digits, '-' or '_'{what}")


def _check_step(where: str, step: StepSpec) -> None:
    _valid_id(f"{where}.id", step.id)
    if step.chat is None:
        if not step.role:
            raise WorkflowError(where, "missing required field `role`")
        if not _ID.match(step.role):
            raise WorkflowError(f"{where}.role", f"{step.role!r} is not a valid role name")
    if not 1 <= step.fan_out <= MAX_FAN_OUT:
        raise WorkflowError(f"{where}.fan_out", f"must be between 1 and {MAX_FAN_OUT}")
    if step.timeout_s <= 0:
        raise WorkflowError(f"{where}.timeout_s", "must be positive")
    if step.max_attempts < 1:
        raise WorkflowError(f"{where}.max_attempts", "must be at least 1")
    if step.tokens < 0 or step.max_subtasks < 0:
        raise WorkflowError(where, "tokens and max_subtasks must not be negative")
    if step.join == "quorum" and step.quorum < 1:
        raise WorkflowError(f"{where}.quorum", "a quorum join needs quorum >= 1")
    if step.join != "quorum" and step.quorum:
        raise WorkflowError(f"{where}.quorum", "quorum is only for join = 'quorum'")
    if step.retry is not None and step.retry.tokens < 0:
        raise WorkflowError(f"{where}.retry.tokens", "must not be negative")
    if step.routing == "contract_net" and not 0 < step.bid_window_s <= 60:
        raise WorkflowError(f"{where}.bid_window_s", "must be more than 0 and at most 60")
    if step.loop is not None and step.loop.max_rounds < 1:
        raise WorkflowError(f"{where}.loop.max_rounds", "must be at least 1")
    chat = step.chat
    if chat is not None:
        if step.role or step.fan_out != 1 or step.loop is not None:
            raise WorkflowError(where, "a chat step has no role, fan_out or loop of its own")
        if not chat.participants:
            raise WorkflowError(f"{where}.chat.participants", "a chat needs participants")
        if chat.max_turns < 1:
            raise WorkflowError(f"{where}.chat.max_turns", "must be at least 1")
        for role in [*chat.participants, *chat.rules, *chat.rules.values()]:
            if role not in chat.participants:
                raise WorkflowError(f"{where}.chat.rules", f"{role!r} is not a participant")
        if (chat.selector == "agent") != bool(chat.selector_role):
            raise WorkflowError(
                f"{where}.chat.selector_role", "needed exactly when selector = 'agent'"
            )


def _check_steps(spec: WorkflowSpec) -> None:
    _valid_id("name", spec.name)
    if not spec.steps:
        raise WorkflowError("steps", "a workflow needs at least one step")
    seen: set[str] = set()
    for i, step in enumerate(spec.steps):
        _check_step(f"steps[{i}]", step)
        if step.id in seen:
            raise WorkflowError(f"steps[{i}].id", f"duplicate step id {step.id!r}")
        seen.add(step.id)
    for i, step in enumerate(spec.steps):
        for dep in step.needs:
            if dep not in seen:
                raise WorkflowError(f"steps[{i}].needs", f"unknown step {dep!r}")
            if dep == step.id:
                raise WorkflowError(f"steps[{i}].needs", f"step {dep!r} needs itself")
    limits = spec.limits
    if min(getattr(limits, field) for field in limits.__struct_fields__) < 0:
        raise WorkflowError("limits", "limits must not be negative")
    if limits.tokens:
        for i, step in enumerate(spec.steps):
            if not (step.tokens or limits.task_tokens):
                raise WorkflowError(
                    f"steps[{i}].tokens",
                    "with a run token budget every step needs a task budget to reserve "
                    "(set tokens here or limits.task_tokens)",
                )


def _check_acyclic(spec: WorkflowSpec) -> None:
    """Kahn's algorithm, linear in steps and needs (a chain of n steps is no n² scan):
    the steps never freed are those on a cycle or after one."""
    waiting = {s.id: len(set(s.needs)) for s in spec.steps}
    needed_by: dict[str, list[str]] = {s.id: [] for s in spec.steps}
    for step in spec.steps:
        for dep in set(step.needs):
            needed_by[dep].append(step.id)
    free = [step_id for step_id, count in waiting.items() if not count]
    done: set[str] = set()
    while free:
        step_id = free.pop()
        done.add(step_id)
        for after in needed_by[step_id]:
            waiting[after] -= 1
            if not waiting[after]:
                free.append(after)
    if len(done) < len(waiting):
        cycle = sorted(s for s in waiting if s not in done)
        raise WorkflowError("steps", f"dependency cycle among {cycle}")


def ancestors(spec: WorkflowSpec) -> dict[str, set[str]]:
    """Every step's transitive `needs` (the workflow must be acyclic)."""
    needs = {s.id: s.needs for s in spec.steps}
    memo: dict[str, set[str]] = {}

    def of(step: str) -> set[str]:
        if step not in memo:
            memo[step] = set()
            for dep in needs[step]:
                memo[step] |= {dep} | of(dep)
        return memo[step]

    return {s: of(s) for s in needs}


def loop_body(spec: WorkflowSpec, step: StepSpec) -> list[str]:
    """The steps a loop on `step` re-runs: on a path from `back_to` to `step`, in order."""
    assert step.loop is not None
    up = ancestors(spec)
    start = step.loop.back_to
    return [
        s.id for s in spec.steps
        if (s.id == start or start in up[s.id]) and (s.id == step.id or s.id in up[step.id])
    ]  # fmt: skip


def _check_reachable(spec: WorkflowSpec) -> None:
    """Conditions, loops and joins that could never be met are errors, not hangs."""
    up = ancestors(spec)
    by_id = {s.id: s for s in spec.steps}
    in_loop: dict[str, str] = {}
    for i, step in enumerate(spec.steps):
        where = f"steps[{i}]"
        width = sum(by_id[d].fan_out for d in step.needs)
        if step.join == "quorum" and step.quorum > width:
            raise WorkflowError(
                f"{where}.quorum", f"unreachable: quorum {step.quorum} of {width} upstream tasks"
            )
        if step.join != "all" and not step.needs:
            raise WorkflowError(f"{where}.join", f"join = {step.join!r} needs upstream steps")
        for name in ("when", "unless"):
            cond: Condition | None = getattr(step, name)
            if cond is not None and cond.step not in up[step.id]:
                raise WorkflowError(
                    f"{where}.{name}.step",
                    f"{cond.step!r} is not upstream of {step.id!r}, so its output is unknown",
                )
        if step.loop is None:
            continue
        if step.loop.back_to != step.id and step.loop.back_to not in up[step.id]:
            raise WorkflowError(
                f"{where}.loop.back_to", f"{step.loop.back_to!r} is not upstream of {step.id!r}"
            )
        body = loop_body(spec, step)
        for member in body:
            other = by_id[member]
            if other.fan_out != 1 or other.chat is not None or member in in_loop:
                raise WorkflowError(
                    f"{where}.loop", f"step {member!r} in the loop must be a single plain task "
                    "in no other loop",
                )  # fmt: skip
            in_loop[member] = step.id
        for other in spec.steps:
            if other.id in body:
                continue
            leaks = [d for d in other.needs if d in body and d != step.id]
            if leaks:
                raise WorkflowError(
                    f"{where}.loop",
                    f"step {other.id!r} needs {leaks[0]!r} inside the loop; "
                    f"only {step.id!r} may be needed from outside",
                )


def roles_of(step: StepSpec) -> list[tuple[str, str]]:
    """(field, role) pairs of every role a step may give work to."""
    out = [("role", step.role)] if step.role else []
    if step.retry is not None and step.retry.role:
        out.append(("retry.role", step.retry.role))
    out += [("handoff_to", r) for r in step.handoff_to]
    if step.on_exhausted == "replan":
        out.append(("on_exhausted", PLANNER))
    if step.chat is not None:
        out += [("chat.participants", r) for r in step.chat.participants]
        if step.chat.selector_role:
            out.append(("chat.selector_role", step.chat.selector_role))
    return out


def known_roles(spec: WorkflowSpec) -> set[str]:
    """Roles work may go to: those the workflow's agents serve, or else those its steps
    name (a role nobody serves would leave the work waiting)."""
    served = {a.role for a in spec.agents}
    return served or {role for step in spec.steps for _, role in roles_of(step)}


def _check_agents(spec: WorkflowSpec) -> None:
    for i, step in enumerate(spec.steps):
        for field, role in roles_of(step):
            if not _ID.match(role):
                raise WorkflowError(f"steps[{i}].{field}", f"{role!r} is not a valid role name")
    if not spec.agents:
        return
    served = {a.role for a in spec.agents}
    for i, agent in enumerate(spec.agents):
        if agent.count < 1 or agent.capacity < 1:
            raise WorkflowError(f"agents[{i}]", "count and capacity must be at least 1")
    for i, step in enumerate(spec.steps):
        for field, role in roles_of(step):
            if role not in served:
                raise WorkflowError(
                    f"steps[{i}].{field}", f"no agent in [[agents]] serves {role!r}"
                )


def validate(spec: WorkflowSpec) -> WorkflowSpec:
    """`spec` if it can run, else `WorkflowError` naming the first problem's location."""
    bounds.check(spec)
    _check_steps(spec)
    _check_acyclic(spec)
    _check_reachable(spec)
    _check_agents(spec)
    return spec


def is_conditional(step: StepSpec) -> bool:
    return step.when is not None or step.unless is not None


def need_of(step: StepSpec) -> int:
    return {"all": -1, "any": 1, "quorum": step.quorum}[step.join]


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
                need_of(step),
                "chat" if step.chat is not None else "task",
                bid_window_s=step.bid_window_s if step.routing == "contract_net" else 0.0,
                conditional=is_conditional(step),
                looped=step.loop is not None,
            )
    return graph


def _location(error: msgspec.ValidationError) -> tuple[str, str]:
    text = str(error)
    match = re.search(r" - at `\$\.?(.*)`$", text)
    if match:
        return match.group(1) or "(top)", text[: match.start()]
    return "(top)", text  # msgspec names no path for the top level itself


def parse(data: dict[str, Any]) -> WorkflowSpec:
    """A validated spec from already-parsed TOML/JSON data.

    A top-level `contracts` key (the role contracts file `baton run` governs by) names a
    file relative to the workflow file; `baton run` records it resolved, with its digest,
    as the spec's `governed_by` (see `contracts_file`).
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
