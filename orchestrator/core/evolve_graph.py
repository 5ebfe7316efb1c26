"""The evolve rules that change a run's task graph or open a gate in it: tasks added
(subtasks, chat turns, a replan's plan), a branch taken, a task that waits on the tasks
it delegated to, and a replan asked for and adopted.
"""

from __future__ import annotations

from msgspec.structs import replace

from orchestrator.core.draft import Draft, Rule, recorded_only, rule
from orchestrator.core.events import (
    BranchTaken,
    PlanAdopted,
    PlanRejected,
    ReplanRequested,
    TaskDelegated,
    TasksAdded,
)
from orchestrator.core.run_state import TaskState


def tasks_added(d: Draft, e: TasksAdded) -> None:
    d.grow()
    new = {spec.task_id for spec in e.tasks}
    for old, replacement in e.rewire.items():
        moved = tuple(t for t in d.dependents[old] if t not in new)
        for dependent in moved:
            spec = d.graph[dependent]
            deps = tuple(replacement if t == old else t for t in spec.deps)
            d.graph[dependent] = replace(spec, deps=deps)
        d.dependents[old] = tuple(t for t in d.dependents[old] if t in new)
        d.dependents[replacement] = moved
    for spec in e.tasks:
        d.graph[spec.task_id] = spec
        d.tasks[spec.task_id] = TaskState(spec.task_id)
        d.dependents.setdefault(spec.task_id, ())
        for dep in spec.deps:
            d.dependents[dep] = (*d.dependents[dep], spec.task_id)
        done = sum(d.tasks[t].status == "succeeded" for t in spec.deps)
        if done >= spec.threshold:
            d.make_ready(spec.task_id)
        else:
            d.waiting[spec.task_id] = spec.threshold - done
    if e.parent and e.parent in d.tasks:
        d.children[e.parent] = (*d.children.get(e.parent, ()), *sorted(new))
        parent = d.tasks[e.parent]
        if d.graph[e.parent].kind == "chat" and parent.status == "pending":
            d.gated.pop(e.parent, None)
            d.tasks[e.parent] = replace(parent, status="active", started_at=e.at)


def branch_taken(d: Draft, e: BranchTaken) -> None:
    d.gated.pop(e.task_id, None)
    d.ready_of(d.role(e.task_id))[e.task_id] = None


def delegated(d: Draft, e: TaskDelegated) -> None:
    task = d.tasks[e.task_id]
    d.tasks[e.task_id] = replace(task, status="active", output=e.output, ended_by="result")
    d.release(e.task_id, 0)


def replan_requested(d: Draft, e: ReplanRequested) -> None:
    task = d.tasks[e.task_id]
    d.tasks[e.task_id] = replace(task, status="active", error=e.error)
    d.unready(e.task_id)
    d.bump("replans", 1)


def plan_adopted(d: Draft, e: PlanAdopted) -> None:
    workflow = d.get("workflow")
    d.changes["workflow"] = replace(workflow, steps=[*workflow.steps, *e.steps])
    tasks_added(d, TasksAdded("", "replan", e.tasks, {}, e.at))


RULES: dict[type, Rule] = dict(
    [
        rule(TasksAdded, tasks_added),
        rule(BranchTaken, branch_taken),
        rule(TaskDelegated, delegated),
        rule(ReplanRequested, replan_requested),
        rule(PlanAdopted, plan_adopted),
        rule(PlanRejected, recorded_only),  # the task's failure follows
    ]
)
