"""Decisions people take through the API: approve, reject or retry an escalated task, and
cancel a task or a whole run. Each is checked (`refusal`) before it is decided, so a bad
request gets a clear answer and changes nothing; the person is recorded as the actor."""

from __future__ import annotations

from orchestrator.core.commands import CancelRun, Context, HumanDecision
from orchestrator.core.events import (
    CancelRequested,
    HumanDecided,
    RunEvent,
    TaskCancelled,
    TaskFailed,
    TaskSucceeded,
)
from orchestrator.core.limits import stop
from orchestrator.core.state import TERMINAL_TASK, RunState


def refusal(state: RunState, command: HumanDecision | CancelRun) -> str:
    """Why `command` cannot be applied to `state` ('' if it can)."""
    if state.status == "new":
        return f"no run {state.run_id!r}"
    if state.terminal:
        return f"run {state.run_id} is already {state.status}"
    task = state.tasks.get(command.task_id) if command.task_id else None
    if command.task_id and task is None:
        return f"run {state.run_id} has no task {command.task_id!r}"
    if isinstance(command, HumanDecision):
        if task is None or task.status != "escalated":
            status = task.status if task is not None else "missing"
            return f"task {command.task_id} is {status}, not waiting for a decision"
    elif task is not None and task.status in TERMINAL_TASK:
        return f"task {command.task_id} is already {task.status}"
    return ""


def human_decision(state: RunState, command: HumanDecision, ctx: Context) -> list[RunEvent]:
    if refusal(state, command):
        return []
    task = state.tasks[command.task_id]
    decided = HumanDecided(task.task_id, command.decision, command.actor, command.note, ctx.wall)
    match command.decision:
        case "approve":
            output = command.output or {"approved_by": command.actor}
            # the person is recorded as who produced the output (the audit's actor)
            approved = TaskSucceeded(
                task.task_id, task.attempt, command.actor, output, 0.0, ctx.wall
            )
            return [decided, approved]
        case "reject":
            why = f"rejected by {command.actor}" + (f": {command.note}" if command.note else "")
            return [decided, TaskFailed(task.task_id, why, ctx.wall)]
    return [decided]


def cancel(state: RunState, command: CancelRun, ctx: Context) -> list[RunEvent]:
    if refusal(state, command):
        return []
    reason = command.reason or f"cancelled by {command.actor}"
    asked = CancelRequested(command.task_id, command.actor, reason, ctx.wall)
    if not command.task_id:
        return [asked, *stop(state, "cancelled", reason, ctx)]
    doomed = [command.task_id, *state.children.get(command.task_id, ())]
    events: list[RunEvent] = [asked]
    return events + [
        TaskCancelled(t, reason, state.tasks[t].agent_id if state.tasks[t].status == "running"
                      else "", ctx.wall)
        for t in doomed
        if state.tasks[t].status not in TERMINAL_TASK
    ]  # fmt: skip
