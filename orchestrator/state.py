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


class _Draft:
    """A `RunState` being folded: its containers are copied once, then changed in place,
    so folding k events into a run of n tasks costs O(n + k), not O(n * k). Nothing
    outside `fold` ever sees a draft; the state it started from is never touched."""

    def __init__(self, state: RunState) -> None:
        self.base = state
        self.version = state.version
        self.graph = state.graph
        self.dependents = state.dependents
        self.tasks = dict(state.tasks)
        self.waiting = dict(state.waiting)
        self.ready = dict(state.ready)  # a role's queue is copied only once it changes
        self.owned: set[str] = set()
        self.changes: dict[str, Any] = {}

    def freeze(self) -> RunState:
        return replace(
            self.base,
            version=self.version,
            graph=self.graph,
            dependents=self.dependents,
            tasks=self.tasks,
            waiting=self.waiting,
            ready=self.ready,
            **self.changes,
        )

    def ready_of(self, role: str) -> dict[str, None]:
        """The role's ready queue, copied from the base state on first change."""
        if role not in self.owned:
            self.ready[role] = dict(self.ready.get(role, {}))
            self.owned.add(role)
        return self.ready[role]

    def unready(self, task_id: str) -> None:
        role = self.graph[task_id].role
        if task_id in self.ready.get(role, {}):
            del self.ready_of(role)[task_id]

    def make_ready(self, task_id: str) -> None:
        self.ready_of(self.graph[task_id].role)[task_id] = None

    def start(self, e: RunStarted) -> None:
        self.graph = compile_graph(e.workflow)
        dependents: dict[str, list[str]] = {t: [] for t in self.graph}
        for spec in self.graph.values():
            for dep in spec.deps:
                dependents[dep].append(spec.task_id)
        self.dependents = {t: tuple(d) for t, d in dependents.items()}
        self.tasks = {t: TaskState(t) for t in self.graph}
        self.waiting = {t: len(s.deps) for t, s in self.graph.items() if s.deps}
        self.ready, self.owned = {}, set()
        for spec in self.graph.values():
            if not spec.deps:
                self.make_ready(spec.task_id)
        self.changes.update(
            status="running",
            workflow=e.workflow,
            input=e.input,
            trace_id=e.trace_id,
            started_at=e.at,
        )

    def succeed(self, e: TaskSucceeded) -> None:
        self.tasks[e.task_id] = replace(
            self.tasks[e.task_id],
            status="succeeded",
            output=e.output,
            finished_at=e.at,
            elapsed_s=e.elapsed_s,
            ended_by="result",
        )
        for dependent in self.dependents[e.task_id]:
            self.waiting[dependent] -= 1
            if self.waiting[dependent] == 0:
                del self.waiting[dependent]
                self.make_ready(dependent)

    def apply(self, event: RunEvent) -> None:
        self.version += 1
        match event:
            case RunStarted():
                self.start(event)
            case RunForked():
                self.changes["forked_from"] = f"{event.origin_run_id}@{event.origin_position}"
            case TaskAssigned():
                task = self.tasks[event.task_id]
                self.tasks[event.task_id] = replace(
                    task,
                    status="running",
                    attempt=event.attempt,
                    agent_id=event.agent_id,
                    lease_token=event.lease_token,
                    assigned_mono=event.mono,
                    started_at=task.started_at or event.at,
                    assigned_event=self.version,
                    ended_by="",
                )
                self.unready(event.task_id)
            case TaskSucceeded():
                self.succeed(event)
            case TaskAttemptFailed():
                task = self.tasks[event.task_id]
                self.tasks[event.task_id] = replace(
                    task,
                    status="pending",
                    error=event.error,
                    excluded=(*task.excluded, event.agent_id),
                    not_before=event.retry_at or 0.0,
                    ended_by=event.reason,
                )
                if event.retry_at is not None:  # else a TaskFailed follows in this decision
                    self.make_ready(event.task_id)
            case TaskFailed():
                task = self.tasks[event.task_id]
                self.tasks[event.task_id] = replace(
                    task, status="failed", error=event.error, finished_at=event.at
                )
                self.unready(event.task_id)
            case TaskCancelled():
                task = self.tasks[event.task_id]
                self.tasks[event.task_id] = replace(
                    task, status="cancelled", error=event.reason, finished_at=event.at
                )
                self.unready(event.task_id)
            case ResultRejected():
                self.changes["rejected"] = self.changes.get("rejected", self.base.rejected) + 1
            case RunCompleted():
                self.changes.update(status="completed", result=event.result, finished_at=event.at)
            case RunFailed():
                self.changes.update(status="failed", reason=event.reason, finished_at=event.at)
            case _:
                raise UnknownEvent(f"evolve has no rule for {type(event).__name__}")


def evolve(state: RunState, event: RunEvent) -> RunState:
    """The state after `event`; total over `RunEvent`, raising `UnknownEvent` otherwise."""
    return fold(state, (event,))


def fold(state: RunState, events: Iterable[RunEvent]) -> RunState:
    """The state after each of `events` in turn; `state` itself is left as it was."""
    draft: _Draft | None = None
    for event in events:
        draft = draft or _Draft(state)
        draft.apply(event)
    return state if draft is None else draft.freeze()


def resume(state: RunState, versioned: Iterable[tuple[int, RunEvent]]) -> RunState:
    """`state` carried forward by stored events, checking their versions have no gap."""
    draft: _Draft | None = None
    for version, event in versioned:
        draft = draft or _Draft(state)
        if version != draft.version + 1:
            raise VersionGap(state.run_id, draft.version + 1, version)
        draft.apply(event)
    return state if draft is None else draft.freeze()


def replay(run_id: str, versioned: Iterable[tuple[int, RunEvent]]) -> RunState:
    """A run's state from its stored events alone."""
    return resume(RunState(run_id), versioned)
