"""A run's timeline, built from its stored events alone: tasks, their attempts on a
time axis with how each ended, and the marks worth seeing (rejected results, handoffs,
escalations, budget events). Pure: the terminal and HTML views both draw from it, and it
works for any past run and for imported logs, because the log is all it reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from eventstore import StoredEvent
from orchestrator.core.errors import UnknownEvent, UnknownRun
from orchestrator.core.events import (
    ResultRejected,
    RunCompleted,
    RunFailed,
    RunForked,
    RunStarted,
    TaskAssigned,
    TaskAttemptFailed,
    TaskCancelled,
    TaskFailed,
    TaskSucceeded,
    UsageCharged,
)
from orchestrator.core.workflow import compile_graph
from orchestrator.service import journal


class Attempt(msgspec.Struct, kw_only=True):
    """One attempt: who ran it, when, and how it ended ('running' if it has not)."""

    attempt: int
    agent_id: str
    start: float
    end: float | None = None
    outcome: str = "running"
    """succeeded, error, timeout, agent_lost, undeliverable, cancelled, or running."""
    error: str = ""
    retried: bool = False
    reason: str = ""
    """Why the orchestrator chose this agent."""
    tokens: int = 0


class TaskRow(msgspec.Struct, kw_only=True):
    task_id: str
    role: str
    deps: list[str]
    status: str = "pending"
    error: str = ""
    attempts: list[Attempt] = []


class Mark(msgspec.Struct, kw_only=True):
    """Something that happened at one moment: a rejected result, a handoff, an escalation,
    a budget event, an event type this view does not know."""

    at: float
    kind: str
    task_id: str = ""
    text: str = ""


class Timeline(msgspec.Struct, kw_only=True):
    run_id: str
    workflow: str = "?"
    status: str = "running"
    trace_id: str = ""
    started: float = 0.0
    finished: float | None = None
    reason: str = ""
    forked_from: str = ""
    events: int = 0
    tasks: list[TaskRow] = []
    marks: list[Mark] = []

    @property
    def end(self) -> float:
        """The right edge of the time axis: the run's end, else its last known moment."""
        if self.finished is not None:
            return self.finished
        moments = [self.started] + [m.at for m in self.marks]
        for task in self.tasks:
            for a in task.attempts:
                moments += [a.start, a.end or a.start]
        return max(moments)


def _fields(data: bytes) -> dict[str, Any]:
    try:
        decoded = msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


class _Builder:
    def __init__(self, run_id: str) -> None:
        self.t = Timeline(run_id=run_id)
        self.rows: dict[str, TaskRow] = {}

    def row(self, task_id: str) -> TaskRow:
        if task_id not in self.rows:
            self.rows[task_id] = TaskRow(task_id=task_id, role="?", deps=[])
        return self.rows[task_id]

    def current(self, task_id: str, attempt: int) -> Attempt | None:
        for a in reversed(self.row(task_id).attempts):
            if a.attempt == attempt:
                return a
        return None

    def unknown(self, stored: StoredEvent) -> None:
        fields = _fields(stored.data)
        at = fields.get("at")
        text = ", ".join(
            f"{k}={v}" for k, v in fields.items() if k not in {"at", "task_id", "type"}
        )
        self.t.marks.append(
            Mark(
                at=float(at) if isinstance(at, int | float) else stored.recorded_at,
                kind=stored.type,
                task_id=str(fields.get("task_id", "")),
                text=text[:200],
            )
        )

    def add(self, stored: StoredEvent) -> None:
        try:
            event = journal.decode_run_event(stored)
        except UnknownEvent:
            self.unknown(stored)
            return
        match event:
            case RunStarted():
                self.t.workflow = event.workflow.name
                self.t.trace_id = event.trace_id
                self.t.started = event.at
                self.t.status = "running"
                for spec in compile_graph(event.workflow).values():
                    self.rows[spec.task_id] = TaskRow(
                        task_id=spec.task_id, role=spec.role, deps=list(spec.deps)
                    )
            case RunForked():
                self.t.forked_from = f"{event.origin_run_id}@{event.origin_position}"
                self.t.marks.append(Mark(at=event.at, kind="forked", text=self.t.forked_from))
            case TaskAssigned():
                row = self.row(event.task_id)
                row.status = "running"
                row.attempts.append(
                    Attempt(
                        attempt=event.attempt,
                        agent_id=event.agent_id,
                        start=event.at,
                        reason=event.reason,
                    )
                )
            case TaskSucceeded():
                self.row(event.task_id).status = "succeeded"
                a = self.current(event.task_id, event.attempt)
                if a is not None:
                    a.end, a.outcome = event.at, "succeeded"
            case UsageCharged():
                a = self.current(event.task_id, event.attempt)
                if a is not None:
                    a.tokens += event.tokens
            case TaskAttemptFailed():
                a = self.current(event.task_id, event.attempt)
                if a is not None:
                    a.end, a.outcome, a.error = event.at, event.reason, event.error
                    a.retried = event.retry_at is not None
                self.row(event.task_id).status = "pending"
            case TaskFailed():
                row = self.row(event.task_id)
                row.status, row.error = "failed", event.error
            case TaskCancelled():
                row = self.row(event.task_id)
                row.status, row.error = "cancelled", event.reason
                for a in row.attempts:
                    if a.end is None:
                        a.end, a.outcome, a.error = event.at, "cancelled", event.reason
            case ResultRejected():
                self.t.marks.append(
                    Mark(
                        at=event.at,
                        kind="rejected",
                        task_id=event.task_id,
                        text=f"attempt {event.attempt} from {event.sender}: {event.reason}",
                    )
                )
            case RunCompleted():
                self.t.status, self.t.finished = "completed", event.at
            case RunFailed():
                self.t.status, self.t.finished, self.t.reason = "failed", event.at, event.reason
            case _:  # handoffs, escalations, budget events...: a mark with their fields
                self.unknown(stored)


def build(run_id: str, stored: Sequence[StoredEvent]) -> Timeline:
    """The timeline of a run from its stream's stored events (in version order)."""
    if not stored:
        raise UnknownRun(run_id)
    builder = _Builder(run_id)
    for event in stored:
        builder.add(event)
    builder.t.tasks = list(builder.rows.values())
    builder.t.events = len(stored)
    builder.t.marks.sort(key=lambda m: m.at)
    return builder.t


def depths(timeline: Timeline) -> dict[str, int]:
    """Each task's column in the task graph: the length of its longest dependency chain."""
    deps = {t.task_id: t.deps for t in timeline.tasks}
    out: dict[str, int] = {}

    def depth(task_id: str, seen: frozenset[str]) -> int:
        if task_id in out:
            return out[task_id]
        parents = [d for d in deps.get(task_id, []) if d in deps and d not in seen]
        out[task_id] = 1 + max((depth(d, seen | {task_id}) for d in parents), default=-1)
        return out[task_id]

    for task_id in deps:
        depth(task_id, frozenset())
    return out
