"""`decide`: given a run's state, a command and the context, what happens next.

Pure and synchronous: no I/O, no clock, no randomness but what the context hands in.
Every decision, including which agent gets a task and why, is returned as events.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from bus.protocol import TaskFailure, TaskResult
from orchestrator.commands import (
    Command,
    Context,
    DeliveryFailed,
    ReportFailure,
    ReportResult,
    StartRun,
    Tick,
)
from orchestrator.events import (
    AttemptEnd,
    ResultRejected,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunStarted,
    TaskAssigned,
    TaskAttemptFailed,
    TaskCancelled,
    TaskFailed,
    TaskSucceeded,
)
from orchestrator.state import TERMINAL_TASK, RunState, TaskState, fold

BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 5.0
_DUPLICATE = "duplicate"


def load_delta(events: Sequence[RunEvent]) -> Counter[str]:
    """How `events` change each agent's number of running attempts."""
    delta: Counter[str] = Counter()
    for event in events:
        if isinstance(event, TaskAssigned):
            delta[event.agent_id] += 1
        elif isinstance(event, TaskSucceeded | TaskAttemptFailed) or (
            isinstance(event, TaskCancelled) and event.agent_id
        ):
            delta[event.agent_id] -= 1
    return delta


def _refusal(state: RunState, report: TaskResult | TaskFailure, sender: str) -> str:
    """Why a report must not change state: '' if it may, `_DUPLICATE` for a re-delivery
    of the very report that already ended its attempt."""
    task_id, attempt, lease, agent_id = (
        report.task_id, report.attempt, report.lease_token, report.agent_id
    )  # fmt: skip
    if sender != agent_id:
        return f"sent by {sender} but claims to be from {agent_id}"
    task = state.tasks.get(task_id)
    if task is None:
        return f"no task {task_id!r} in this run"
    if attempt == task.attempt and lease == task.lease_token and task.ended_by:
        same_kind = "result" if isinstance(report, TaskResult) else "error"
        if task.ended_by == same_kind:
            return _DUPLICATE
        return f"attempt {attempt} already ended ({task.ended_by})"
    if state.terminal:
        return f"run is already {state.status}"
    if attempt != task.attempt:
        return f"stale attempt {attempt}; the current attempt is {task.attempt}"
    if task.status != "running":
        return f"task is {task.status}"
    if lease != task.lease_token:
        return "lease token does not match the attempt's"
    if agent_id != task.agent_id:
        return f"{agent_id} does not hold attempt {attempt}"
    return ""


def _attempt_failed(
    state: RunState, task: TaskState, reason: AttemptEnd, error: str, retryable: bool, ctx: Context
) -> list[RunEvent]:
    spec = state.graph[task.task_id]
    if retryable and task.attempt < spec.max_attempts:
        backoff = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (task.attempt - 1))
        retry_at = ctx.now + backoff * (0.5 + ctx.random())
        return [
            TaskAttemptFailed(
                task.task_id, task.attempt, task.agent_id, reason, error, retry_at, ctx.wall
            )
        ]
    why = error if not retryable else f"{error} (after {task.attempt} attempts)"
    return [
        TaskAttemptFailed(task.task_id, task.attempt, task.agent_id, reason, error, None, ctx.wall),
        TaskFailed(task.task_id, why, ctx.wall),
    ]


def _on_report(
    state: RunState, report: TaskResult | TaskFailure, sender: str, ctx: Context
) -> list[RunEvent]:
    refusal = _refusal(state, report, sender)
    if refusal == _DUPLICATE:
        return []
    if refusal:
        return [
            ResultRejected(
                report.task_id, report.attempt, report.agent_id, sender, refusal, ctx.wall
            )
        ]
    task = state.tasks[report.task_id]
    if isinstance(report, TaskResult):
        return [
            TaskSucceeded(
                task.task_id, task.attempt, task.agent_id, report.output, report.elapsed_s, ctx.wall
            )
        ]
    return _attempt_failed(state, task, "error", report.error, report.retryable, ctx)


def _expire_leases(state: RunState, ctx: Context) -> list[RunEvent]:
    live = {a.agent_id for a in ctx.agents}
    events: list[RunEvent] = []
    for task in state.tasks.values():
        if task.status != "running":
            continue
        if task.agent_id not in live:
            error = f"agent {task.agent_id} stopped sending heartbeats"
            events += _attempt_failed(state, task, "agent_lost", error, True, ctx)
        elif ctx.now > task.assigned_mono + state.graph[task.task_id].timeout_s:
            error = f"no result within {state.graph[task.task_id].timeout_s}s"
            events += _attempt_failed(state, task, "timeout", error, True, ctx)
    return events


def _dispatch(state: RunState, ctx: Context, earlier: Sequence[RunEvent]) -> list[RunEvent]:
    loads = Counter({a.agent_id: a.load for a in ctx.agents})
    loads.update(load_delta(earlier))
    events: list[RunEvent] = []
    for role, ready in state.ready.items():
        agents = [a for a in ctx.agents if a.role == role]
        for task_id in ready:
            task = state.tasks[task_id]
            if task.not_before > ctx.now:
                continue
            free = [a for a in agents if loads[a.agent_id] < a.capacity]
            if not free:
                break
            fresh = [a for a in free if a.agent_id not in task.excluded]
            best = min(fresh or free, key=lambda a: (loads[a.agent_id], a.agent_id))
            reason = (
                f"role {role}: least loaded of {len(free)} free live agent(s), "
                f"load {loads[best.agent_id]}/{best.capacity}"
            )
            if task.excluded:
                reason += (
                    f"; avoided {', '.join(sorted(set(task.excluded)))}"
                    if fresh
                    else ("; no other agent free, reusing one that failed it")
                )
            loads[best.agent_id] += 1
            events.append(
                TaskAssigned(
                    task_id,
                    task.attempt + 1,
                    best.agent_id,
                    ctx.new_token(),
                    reason,
                    ctx.wall,
                    ctx.now,
                )
            )
    return events


def _settle(state: RunState, ctx: Context, earlier: Sequence[RunEvent]) -> list[RunEvent]:
    """End the run if it is over, else hand out whatever is ready."""
    if state.status != "running":
        return []
    failed = [t for t in state.tasks.values() if t.status == "failed"]
    if failed:
        cancels: list[RunEvent] = [
            TaskCancelled(
                t.task_id,
                f"run failed: task {failed[0].task_id} failed",
                t.agent_id if t.status == "running" else "",
                ctx.wall,
            )
            for t in state.tasks.values()
            if t.status not in TERMINAL_TASK
        ]
        return [
            *cancels,
            RunFailed(f"task {failed[0].task_id} failed: {failed[0].error}", ctx.wall),
        ]
    # newest tasks last: scanning from the end finds an unfinished one at once
    if all(t.status == "succeeded" for t in reversed(state.tasks.values())):
        sinks = [t for t, deps in state.dependents.items() if not deps]
        result = {t: state.tasks[t].output for t in sinks}
        return [RunCompleted(result, ctx.wall)]
    return _dispatch(state, ctx, earlier)


def decide(state: RunState, command: Command, ctx: Context) -> list[RunEvent]:
    """The events that `command` causes in `state`; [] when it changes nothing."""
    events: list[RunEvent]
    match command:
        case StartRun():
            if state.status != "new":
                return []
            events = [
                RunStarted(
                    command.run_id,
                    command.workflow,
                    command.input,
                    command.trace_id,
                    command.requested_by,
                    ctx.wall,
                )
            ]
        case ReportResult():
            events = _on_report(state, command.result, command.sender, ctx)
        case ReportFailure():
            events = _on_report(state, command.failure, command.sender, ctx)
        case DeliveryFailed():
            task = state.tasks.get(command.task_id)
            if state.terminal or task is None or task.status != "running":
                return []
            if task.attempt != command.attempt:
                return []
            events = _attempt_failed(state, task, "undeliverable", command.error, True, ctx)
        case Tick():
            if state.status != "running":
                return []
            events = _expire_leases(state, ctx) if command.check_leases else []
    if not isinstance(command, Tick) and all(isinstance(e, ResultRejected) for e in events):
        return events  # nothing changed, so there is nothing to settle
    return events + _settle(fold(state, events), ctx, events)
