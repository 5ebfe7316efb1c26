"""Replanning, decided in the core: when a `replan` step runs out of attempts, a
`planner` agent is asked (as a task that sees what is done, what failed and what remains)
for a revised remainder of the graph. Its answer is validated before anything of it is
adopted: strict step shapes, new ids, needs only on finished or new steps, no cycle,
roles that exist, and a token cost within what is left of the budget. Replans per run are
bounded by `limits.max_replans`; an invalid plan, a failed planner or the bound reached
fails the task as `fail` would.
"""

from __future__ import annotations

from typing import Any

import msgspec

from orchestrator.core.commands import Context
from orchestrator.core.errors import WorkflowError
from orchestrator.core.events import (
    LimitReached,
    PlanAdopted,
    PlanRejected,
    ReplanRequested,
    RunEvent,
    TaskFailed,
    TasksAdded,
    TaskSkipped,
)
from orchestrator.core.limits import limits_of
from orchestrator.core.state import TERMINAL_TASK, RunState, TaskState
from orchestrator.core.workflow import (
    PLANNER,
    StepSpec,
    TaskSpec,
    _check_step,
    is_conditional,
    known_roles,
    need_of,
    task_ids,
)

MAX_PLAN_STEPS = 100


def request(state: RunState, task: TaskState, error: str, ctx: Context) -> list[RunEvent]:
    """Ask the planner, or fail the task when the run's replans are used up."""
    bound = limits_of(state).max_replans
    if state.replans >= bound:
        detail = f"{state.replans} replans done, the run allows {bound}"
        return [
            LimitReached("max_replans", detail, task.task_id, ctx.wall),
            TaskFailed(task.task_id, f"{error}; {detail}", ctx.wall),
        ]
    spec = state.graph[task.task_id]
    n = state.replans + 1
    planner = TaskSpec(
        f"{task.task_id}~replan{n}", spec.step, 0, PLANNER, (), spec.params, spec.timeout_s,
        spec.max_attempts, -1, "plan", task.task_id, n,
    )  # fmt: skip
    return [
        ReplanRequested(task.task_id, error, ctx.wall),
        TasksAdded(task.task_id, f"replan {n}", [planner], {}, ctx.wall),
    ]


def planner_input(state: RunState, task_id: str) -> dict[str, Any]:
    """What the planner sees: what failed and why, what is done, what remains."""
    parent = state.graph[task_id].parent
    remaining = sorted(
        {state.graph[t].step for t, s in state.tasks.items()
         if s.status == "pending" and not state.graph[t].parent}
    )  # fmt: skip
    done = {t: s.output for t, s in state.tasks.items() if s.status == "succeeded"}
    steps = state.workflow.steps if state.workflow else []
    failed_step = state.step(state.graph[parent].step)
    return {
        "failed": {"task": parent, "step": failed_step.id, "error": state.tasks[parent].error},
        "failed_step": msgspec.to_builtins(failed_step),
        "done": done,
        "remaining": [msgspec.to_builtins(s) for s in steps if s.id in remaining],
    }  # fmt: skip


def _replaced(state: RunState, parent: str) -> list[str]:
    """The failed task and every top-level task not started yet: the plan replaces them."""
    return [parent] + [
        t for t, s in state.tasks.items()
        if t != parent and s.status == "pending" and not state.graph[t].parent
    ]  # fmt: skip


def validate_plan(state: RunState, parent: str, proposal: Any) -> list[StepSpec]:
    """The proposal's steps if they may be adopted, else `WorkflowError` saying why."""
    if not isinstance(proposal, dict) or "steps" not in proposal:
        raise WorkflowError("steps", "the planner's output needs a `steps` list")
    try:
        steps = msgspec.convert(proposal["steps"], list[StepSpec])
    except msgspec.ValidationError as exc:
        raise WorkflowError("steps", str(exc)) from exc
    if len(steps) > MAX_PLAN_STEPS:
        raise WorkflowError("steps", f"at most {MAX_PLAN_STEPS} steps in a plan")
    assert state.workflow is not None
    existing = {s.id for s in state.workflow.steps}
    finished = {
        s.id for s in state.workflow.steps
        if all(state.tasks[t].status == "succeeded"
               for t, g in state.graph.items() if g.step == s.id and not g.parent)
        and any(g.step == s.id for g in state.graph.values())
    }  # fmt: skip
    known = known_roles(state.workflow)
    new: set[str] = set()
    for i, step in enumerate(steps):
        where = f"steps[{i}]"
        _check_step(where, step)
        if step.id in existing or step.id in new:
            raise WorkflowError(f"{where}.id", f"step id {step.id!r} is already taken")
        if step.chat is not None or step.loop is not None or step.on_exhausted == "replan":
            raise WorkflowError(where, "a plan adds plain steps (no chat, loop or replan)")
        if step.role not in known:
            raise WorkflowError(
                f"{where}.role", f"unknown role {step.role!r}: not one of {sorted(known)}"
            )
        new.add(step.id)
    for i, step in enumerate(steps):
        for need in step.needs:
            if need not in new and need not in finished:
                raise WorkflowError(
                    f"steps[{i}].needs", f"{need!r} is neither a new step nor a finished one"
                )
    needs = {s.id: {n for n in s.needs if n in new} for s in steps}
    done: set[str] = set()
    while len(done) < len(needs):
        ready = [s for s, deps in needs.items() if s not in done and deps <= done]
        if not ready:
            raise WorkflowError("steps", f"dependency cycle among {sorted(set(needs) - done)}")
        done.update(ready)
    budget = limits_of(state).tokens
    if budget:
        per = limits_of(state).task_tokens
        cost = sum((s.tokens or per) * s.fan_out for s in steps)
        left = budget - state.tokens_spent - state.tokens_reserved
        if cost > left:
            raise WorkflowError("steps", f"the plan needs {cost} tokens, {left} are left")
        if any(not (s.tokens or per) for s in steps):
            raise WorkflowError("steps", "with a run token budget every step needs a budget")
    return steps


def _compile(state: RunState, steps: list[StepSpec]) -> list[TaskSpec]:
    by_id = {s.id: s for s in steps}
    order: list[str] = []
    while len(order) < len(steps):
        for s in steps:
            if s.id not in order and all(n in order or n not in by_id for n in s.needs):
                order.append(s.id)
    tasks: list[TaskSpec] = []
    for sid in order:
        step = by_id[sid]
        deps: list[str] = []
        for need in step.needs:
            if need in by_id:
                deps += task_ids(by_id[need])
            else:
                deps += [
                    t for t, g in state.graph.items()
                    if g.step == need and not g.parent and state.tasks[t].status == "succeeded"
                ]  # fmt: skip
        for index, task_id in enumerate(task_ids(step)):
            tasks.append(
                TaskSpec(
                    task_id, step.id, index, step.role, tuple(deps), step.params,
                    step.timeout_s, step.max_attempts, need_of(step),
                    bid_window_s=step.bid_window_s if step.routing == "contract_net" else 0.0,
                    conditional=is_conditional(step),
                )
            )  # fmt: skip
    return tasks


def settle(state: RunState, parent: str, ctx: Context) -> list[RunEvent]:
    """The planner's task ended: adopt its plan, or fail the task that asked for it."""
    planner_id = state.children[parent][-1]
    planner = state.tasks[planner_id]
    if planner.status != "succeeded":
        why = f"replan failed: {planner_id} {planner.status}: {planner.error}"
        return [TaskFailed(parent, why, ctx.wall)]
    try:
        steps = validate_plan(state, parent, planner.output)
    except WorkflowError as exc:
        return [
            PlanRejected(parent, str(exc), ctx.wall),
            TaskFailed(parent, f"replan rejected: {exc}", ctx.wall),
        ]
    n = state.graph[planner_id].round
    skips: list[RunEvent] = [
        TaskSkipped(t, f"replaced by replan {n}", ctx.wall)
        for t in _replaced(state, parent)
        if state.tasks[t].status not in TERMINAL_TASK
    ]
    return [*skips, PlanAdopted(parent, steps, _compile(state, steps), ctx.wall)]
