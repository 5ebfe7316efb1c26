"""A run's timeline, built from its stored events alone: tasks, their attempts on a
time axis with how each ended, and the marks worth seeing (rejected results, handoffs,
escalations, budget events). Pure: the terminal and HTML views both draw from it, and it
works for any past run and for imported logs, because the log is all it reads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, get_args

import msgspec

from eventstore import StoredEvent
from orchestrator.core.effects import pattern_progress
from orchestrator.core.errors import UnknownEvent, UnknownRun
from orchestrator.core.events import (
    BidReceived,
    HumanDecided,
    ProposalsCalled,
    ResultRejected,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunForked,
    RunStarted,
    TaskAssigned,
    TaskAttemptFailed,
    TaskCancelled,
    TaskDelegated,
    TaskEscalated,
    TaskFailed,
    TaskHandedOff,
    TaskSkipped,
    TaskSucceeded,
    TokensReserved,
    UsageCharged,
    type_of,
)
from orchestrator.core.run_state import RunStatus, TaskStatus
from orchestrator.core.state import Folding, RunState
from orchestrator.service import journal

TASK_STATUSES: tuple[str, ...] = get_args(TaskStatus)
"""Every status a task row can show: the core's own vocabulary, never a copy of it."""
RUN_STATUSES: tuple[str, ...] = get_args(RunStatus)
"""Every status a run can show, likewise."""
PASSED_ON = ("handed_off", "delegated")
OWN_TASK_ONLY = (
    TaskAssigned, TaskSucceeded, TaskAttemptFailed, TaskFailed, TaskCancelled, TaskSkipped,
    TokensReserved, UsageCharged, TaskHandedOff, TaskEscalated, HumanDecided, ProposalsCalled,
    BidReceived,
)  # fmt: skip
"""Events whose rule (`core/evolve_attempts.py`) changes no task but the one they name: only
that task's attempt can end with them, so a wide run is not scanned at each of them."""
"""Outcomes of an attempt that ended well by passing its task on (to another role, or to
the subtasks it asked for), rather than by finishing it."""


class Attempt(msgspec.Struct, kw_only=True):
    """One attempt: who ran it, when, and how it ended ('running' if it has not)."""

    attempt: int
    agent_id: str
    start: float
    end: float | None = None
    outcome: str = "running"
    """succeeded, handed_off, delegated, cancelled, running, or how it failed (error,
    timeout, agent_lost, undeliverable...)."""
    error: str = ""
    """Why it failed or was cancelled; for a handed-off attempt, to whom."""
    retried: bool = False
    reason: str = ""
    """Why the orchestrator chose this agent."""
    tokens: int = 0


class TaskRow(msgspec.Struct, kw_only=True):
    """One task of the run with its attempts, and its status as the core folds it."""

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
    """What both trace views draw: the run, its task rows, and its marks."""

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

    def _moments(self) -> list[float]:
        moments = [self.started] + [m.at for m in self.marks]
        for task in self.tasks:
            for a in task.attempts:
                moments += [a.start, a.end or a.start]
        return moments

    @property
    def origin(self) -> float:
        """The left edge of the time axis: the run's start, or, for a fork, the start of
        the earliest attempt it copied from its origin (which began before the fork)."""
        return min(self._moments())

    @property
    def end(self) -> float:
        """The right edge of the time axis: the run's end, else its last known moment."""
        if self.finished is not None:
            return self.finished
        return max(self._moments())


def _fields(data: bytes) -> dict[str, Any]:
    try:
        decoded = msgspec.msgpack.decode(data)
    except msgspec.DecodeError:
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _readable(fields: dict[str, Any], width: int = 160) -> str:
    """`key=value` pairs, each value as compact JSON cut on its own (never the whole text
    cut in the middle of a value), as many as fit in `width`."""
    parts: list[str] = []
    for key, value in fields.items():
        if key in {"at", "task_id", "type", "mono", "kind"}:
            continue
        text = msgspec.json.encode(msgspec.to_builtins(value)).decode()
        if len(text) > 40:
            text = text[:39] + "…"
        part = f"{key}={text}"
        if sum(len(p) + 2 for p in parts) + len(part) > width:
            parts.append("…")
            break
        parts.append(part)
    return ", ".join(parts)


_DRAWN = (
    RunStarted, TaskAssigned, TaskSucceeded, TaskAttemptFailed, TaskFailed, TaskCancelled,
    UsageCharged, RunCompleted, RunFailed, ResultRejected,
)  # fmt: skip
"""Events the rows and the header show (and rejected results, marked their own way);
every other event is a mark."""


def _ending(event: RunEvent) -> tuple[str, str]:
    """How an attempt ends when `event` ends it: (outcome, error or detail)."""
    match event:
        case TaskSucceeded():
            return "succeeded", ""
        case TaskAttemptFailed():
            return event.reason, event.error
        case TaskCancelled():
            return "cancelled", event.reason
        case TaskHandedOff():
            return "handed_off", f"to {event.to_role}"
        case TaskDelegated():
            return "delegated", "to its subtasks"
    return type_of(event), ""


class _Builder:
    def __init__(self, run_id: str) -> None:
        self.t = Timeline(run_id=run_id)
        self.folding = Folding(RunState(run_id))
        """The run folded by the core itself, so rows show exactly the core's statuses."""
        self.attempts: dict[str, list[Attempt]] = {}
        self.open: dict[str, Attempt] = {}
        """The attempt each task runs now, if it runs one."""

    def mark(self, at: float, kind: str, task_id: str, text: str) -> None:
        self.t.marks.append(Mark(at=at, kind=kind, task_id=task_id, text=text))

    def unknown(self, stored: StoredEvent) -> None:
        fields = _fields(stored.data)
        at = fields.get("at")
        when = float(at) if isinstance(at, int | float) else stored.recorded_at
        self.mark(when, stored.type, str(fields.get("task_id", "")), _readable(fields))

    def add(self, stored: StoredEvent) -> None:
        try:
            event = journal.decode_run_event(stored)
            after = self.folding.fold([event])
        except (UnknownEvent, KeyError):
            self.unknown(stored)  # a log this code cannot fold still shows what it holds
            return
        at = float(getattr(event, "at", stored.recorded_at))
        match event:
            case RunStarted():
                self.t.workflow = event.workflow.name
                self.t.trace_id = event.trace_id
                self.t.started = event.at
            case RunForked():  # the first link is the run's own (see `evolve_run.forked`)
                self.t.forked_from = (
                    self.t.forked_from or f"{event.origin_run_id}@{event.origin_position}"
                )
            case TaskAssigned():
                attempt = Attempt(
                    attempt=event.attempt, agent_id=event.agent_id, start=at, reason=event.reason
                )
                self.attempts.setdefault(event.task_id, []).append(attempt)
                self.open[event.task_id] = attempt
            case UsageCharged():
                for a in reversed(self.attempts.get(event.task_id, [])):
                    if a.attempt == event.attempt:
                        a.tokens += event.tokens
                        break
            case ResultRejected():
                text = f"attempt {event.attempt} from {event.sender}: {event.reason}"
                self.mark(at, "rejected", event.task_id, text)
        self.end_attempts(event, after, at)
        if not isinstance(event, _DRAWN):
            progress = pattern_progress(after, event)
            text = progress.detail or _readable(msgspec.to_builtins(event))
            kind = "forked" if isinstance(event, RunForked) else type_of(event)
            text = self.t.forked_from if isinstance(event, RunForked) else text
            self.mark(at, kind, progress.task_id, text)

    def end_attempts(self, event: RunEvent, after: RunState, at: float) -> None:
        """Close every open attempt that `event` ended: whatever the event, an attempt
        is over once the folded state no longer runs it."""
        named = [event.task_id] if isinstance(event, OWN_TASK_ONLY) else list(self.open)
        for task_id in named:
            attempt = self.open.get(task_id)
            if attempt is None:
                continue
            task = after.tasks.get(task_id)
            if task is not None and task.status == "running" and task.attempt == attempt.attempt:
                continue
            del self.open[task_id]
            attempt.end = at
            attempt.outcome, attempt.error = _ending(event)
            if isinstance(event, TaskAttemptFailed):
                attempt.retried = event.retry_at is not None

    def finish(self, count: int) -> Timeline:
        state, t = self.folding.state, self.t
        t.status = state.status
        t.reason = state.reason
        t.finished = state.finished_at if state.terminal else None
        t.events = count
        t.tasks = [
            TaskRow(
                task_id=task_id,
                role=state.graph[task_id].role if task_id in state.graph else "?",
                deps=list(state.graph[task_id].deps) if task_id in state.graph else [],
                status=task.status,
                error=task.error,
                attempts=self.attempts.get(task_id, []),
            )
            for task_id, task in state.tasks.items()
        ]
        t.marks.sort(key=lambda m: m.at)
        return t


class Growing:
    """A run's timeline built as its events come (the console's live run page): `add`
    each new event of the run's own stream in version order, and take `timeline()`
    whenever it is to be drawn; each event is folded once, however often it is drawn."""

    def __init__(self, run_id: str) -> None:
        self._builder = _Builder(run_id)
        self.count = 0
        """Events added so far (the stream's version they reached)."""

    def add(self, stored: StoredEvent) -> None:
        self._builder.add(stored)
        self.count += 1

    def timeline(self) -> Timeline:
        """The timeline as of the events added so far (the same object, brought up to
        date: draw it before adding more)."""
        return self._builder.finish(self.count)


def build(run_id: str, stored: Sequence[StoredEvent]) -> Timeline:
    """The timeline of a run from its stream's stored events (in version order)."""
    if not stored:
        raise UnknownRun(run_id)
    builder = _Builder(run_id)
    for event in stored:
        builder.add(event)
    return builder.finish(len(stored))


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
