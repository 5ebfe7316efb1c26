"""A run's state and `evolve`, the one function that folds an event into it.

State is a frozen value; `evolve` never mutates the state it is given, so the live state
and a state rebuilt by folding the log compare equal field by field. The indexes kept
beside the tasks (`waiting`, `ready`) are derived inside `evolve`, never set elsewhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal

import msgspec
from msgspec.structs import replace

from orchestrator.errors import UnknownEvent, VersionGap
from orchestrator.events import (
    ResultRejected,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunForked,
    RunStarted,
    TaskAssigned,
    TaskAttemptFailed,
    TaskCancelled,
    TaskFailed,
    TaskSucceeded,
)
from orchestrator.workflow import TaskSpec, WorkflowSpec, compile_graph

TaskStatus = Literal["pending", "running", "succeeded", "failed", "cancelled"]
RunStatus = Literal["new", "running", "completed", "failed"]
TERMINAL_TASK: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
TERMINAL_RUN: frozenset[str] = frozenset({"completed", "failed"})


class TaskState(msgspec.Struct, frozen=True):
    """One task: its status and, while running, which attempt holds it under which lease."""

    task_id: str
    status: TaskStatus = "pending"
    attempt: int = 0
    agent_id: str = ""
    lease_token: str = ""
    assigned_mono: float = 0.0
    started_at: float = 0.0
    finished_at: float = 0.0
    elapsed_s: float = 0.0
    output: dict[str, Any] | None = None
    error: str = ""
    excluded: tuple[str, ...] = ()
    not_before: float = 0.0
    assigned_event: int = 0
    """Stream version of the `TaskAssigned` that started the latest attempt."""
    ended_by: str = ""
    """How the latest attempt ended: '' while it runs, 'result', or an `AttemptEnd`."""


class RunState(msgspec.Struct, frozen=True):
    """Everything the orchestrator knows about one run, rebuilt from its stream alone."""

    run_id: str
    version: int = 0
    status: RunStatus = "new"
    workflow: WorkflowSpec | None = None
    graph: dict[str, TaskSpec] = {}
    tasks: dict[str, TaskState] = {}
    dependents: dict[str, tuple[str, ...]] = {}
    waiting: dict[str, int] = {}
    ready: dict[str, dict[str, None]] = {}
    input: dict[str, Any] = {}
    trace_id: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    result: dict[str, Any] | None = None
    reason: str = ""
    rejected: int = 0
    forked_from: str = ""
    """`<run id>@<global position>` of the history this run was forked from."""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_RUN


def _with_task(state: RunState, task: TaskState, **changes: Any) -> RunState:
    tasks = dict(state.tasks)
    tasks[task.task_id] = task
    return replace(state, tasks=tasks, **changes)


def _unready(state: RunState, task_id: str) -> dict[str, dict[str, None]]:
    role = state.graph[task_id].role
    if task_id not in state.ready.get(role, {}):
        return state.ready
    ready = dict(state.ready)
    ready[role] = {t: None for t in ready[role] if t != task_id}
    return ready


def _ready_again(state: RunState, task_id: str) -> dict[str, dict[str, None]]:
    role = state.graph[task_id].role
    ready = dict(state.ready)
    ready[role] = {**ready.get(role, {}), task_id: None}
    return ready


def _started(state: RunState, e: RunStarted) -> RunState:
    graph = compile_graph(e.workflow)
    dependents: dict[str, list[str]] = {t: [] for t in graph}
    for spec in graph.values():
        for dep in spec.deps:
            dependents[dep].append(spec.task_id)
    ready: dict[str, dict[str, None]] = {}
    for spec in graph.values():
        if not spec.deps:
            ready.setdefault(spec.role, {})[spec.task_id] = None
    return replace(
        state,
        status="running",
        workflow=e.workflow,
        graph=graph,
        tasks={t: TaskState(t) for t in graph},
        dependents={t: tuple(d) for t, d in dependents.items()},
        waiting={t: len(s.deps) for t, s in graph.items() if s.deps},
        ready=ready,
        input=e.input,
        trace_id=e.trace_id,
        started_at=e.at,
    )


def _succeeded(state: RunState, e: TaskSucceeded) -> RunState:
    task = state.tasks[e.task_id]
    done = replace(
        task,
        status="succeeded",
        output=e.output,
        finished_at=e.at,
        elapsed_s=e.elapsed_s,
        ended_by="result",
    )
    tasks = dict(state.tasks)
    tasks[e.task_id] = done
    waiting = dict(state.waiting)
    ready = state.ready
    for dependent in state.dependents[e.task_id]:
        waiting[dependent] -= 1
        if waiting[dependent] == 0:
            del waiting[dependent]
            role = state.graph[dependent].role
            ready = dict(ready)
            ready[role] = {**ready.get(role, {}), dependent: None}
    return replace(state, tasks=tasks, waiting=waiting, ready=ready)


def evolve(state: RunState, event: RunEvent) -> RunState:
    """The state after `event`; total over `RunEvent`, raising `UnknownEvent` otherwise."""
    state = replace(state, version=state.version + 1)
    match event:
        case RunStarted():
            return _started(state, event)
        case RunForked():
            return replace(state, forked_from=f"{event.origin_run_id}@{event.origin_position}")
        case TaskAssigned():
            task = state.tasks[event.task_id]
            assigned = replace(
                task,
                status="running",
                attempt=event.attempt,
                agent_id=event.agent_id,
                lease_token=event.lease_token,
                assigned_mono=event.mono,
                started_at=task.started_at or event.at,
                assigned_event=state.version,
                ended_by="",
            )
            return _with_task(state, assigned, ready=_unready(state, event.task_id))
        case TaskSucceeded():
            return _succeeded(state, event)
        case TaskAttemptFailed():
            task = state.tasks[event.task_id]
            ended = replace(
                task,
                status="pending",
                error=event.error,
                excluded=(*task.excluded, event.agent_id),
                not_before=event.retry_at or 0.0,
                ended_by=event.reason,
            )
            if event.retry_at is None:  # a TaskFailed follows in the same decision
                return _with_task(state, ended)
            return _with_task(state, ended, ready=_ready_again(state, event.task_id))
        case TaskFailed():
            task = state.tasks[event.task_id]
            failed = replace(task, status="failed", error=event.error, finished_at=event.at)
            return _with_task(state, failed, ready=_unready(state, event.task_id))
        case TaskCancelled():
            task = state.tasks[event.task_id]
            cancelled = replace(task, status="cancelled", error=event.reason, finished_at=event.at)
            return _with_task(state, cancelled, ready=_unready(state, event.task_id))
        case ResultRejected():
            return replace(state, rejected=state.rejected + 1)
        case RunCompleted():
            return replace(state, status="completed", result=event.result, finished_at=event.at)
        case RunFailed():
            return replace(state, status="failed", reason=event.reason, finished_at=event.at)
    raise UnknownEvent(f"evolve has no rule for {type(event).__name__}")


def fold(state: RunState, events: Iterable[RunEvent]) -> RunState:
    for event in events:
        state = evolve(state, event)
    return state


def resume(state: RunState, versioned: Iterable[tuple[int, RunEvent]]) -> RunState:
    """`state` carried forward by stored events, checking their versions have no gap."""
    for version, event in versioned:
        if version != state.version + 1:
            raise VersionGap(state.run_id, state.version + 1, version)
        state = evolve(state, event)
    return state


def replay(run_id: str, versioned: Iterable[tuple[int, RunEvent]]) -> RunState:
    """A run's state from its stored events alone."""
    return resume(RunState(run_id), versioned)
