"""A run's state and `evolve`, the one function that folds an event into it.

State is a frozen value; `evolve` never mutates the state it is given, so the live state
and a state rebuilt by folding the log compare equal field by field. The indexes kept
beside the tasks (`waiting`, `ready`) are derived inside `evolve`, never set elsewhere.
The one exception is `Folding`, which the shell uses to decide a batch: the states it
hands out along the way share its draft and are only valid until its next fold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import msgspec
from msgspec.structs import replace

from orchestrator.core.errors import UnknownEvent, VersionGap
from orchestrator.core.events import (
    BidReceived,
    BranchTaken,
    CancelRequested,
    ClockRebased,
    HumanDecided,
    LimitReached,
    PlanAdopted,
    PlanRejected,
    ProposalsCalled,
    ReplanRequested,
    ResultRejected,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunForked,
    RunStarted,
    RunStopped,
    TaskAssigned,
    TaskAttemptFailed,
    TaskCancelled,
    TaskDelegated,
    TaskEscalated,
    TaskFailed,
    TaskHandedOff,
    TasksAdded,
    TaskSkipped,
    TaskSucceeded,
    TokensReserved,
    UsageCharged,
)
from orchestrator.core.workflow import Retry, StepSpec, TaskSpec, WorkflowSpec, compile_graph

TaskStatus = Literal[
    "pending", "running", "succeeded", "failed", "cancelled", "skipped", "active", "escalated"
]
"""`active`: a chat or a delegating task waiting for the tasks it added; `escalated`: a
dead letter waiting for a person."""
RunStatus = Literal["new", "running", "completed", "failed", "stopped"]
TERMINAL_TASK: frozenset[str] = frozenset({"succeeded", "failed", "cancelled", "skipped"})
UNSUCCESSFUL: frozenset[str] = frozenset({"failed", "cancelled", "skipped"})
TERMINAL_RUN: frozenset[str] = frozenset({"completed", "failed", "stopped"})


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
    role: str = ""
    """The role doing it now, when not its step's (a handoff, or a retry by another role)."""
    attempt_base: int = 0
    """Attempts before the latest handoff or human retry: they do not count against it."""
    reserved: int = 0
    """Tokens set aside for the running attempt."""
    tokens: int = 0
    """Tokens charged for this task so far."""
    context: tuple[dict[str, Any], ...] = ()
    """What earlier owners said (handoffs): the shared context the next owner receives."""
    cfp_until: float = 0.0
    """Contract net: bids for the next attempt are taken until then (0: none called)."""
    bids: tuple[BidReceived, ...] = ()


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
    gated: dict[str, None] = {}
    """Tasks whose deps are met but that need a decision first (a condition, a chat start)."""
    blocked: dict[str, None] = {}
    """Tasks whose join can no longer be met: decide skips them or fails the run."""
    children: dict[str, tuple[str, ...]] = {}
    """Chat → its turns; a delegating task → its subtasks."""
    tokens_spent: int = 0
    tokens_reserved: int = 0
    handoffs: int = 0
    replans: int = 0
    started_mono: float = 0.0
    limit: str = ""
    """The limit that stopped the run, if one did."""
    boot: str = ""
    """The host boot whose monotonic clock the run's clock is read from ('' if unknown)."""
    clock_shift: float = 0.0
    """The run's clock is that boot's monotonic clock minus this (see `ClockRebased`)."""

    @property
    def steps(self) -> int:
        """Attempts dispatched so far (the `max_steps` limit): attempts are numbered 1, 2..."""
        return sum(t.attempt for t in self.tasks.values())

    def role_of(self, task_id: str) -> str:
        return self.tasks[task_id].role or self.graph[task_id].role

    def step(self, step_id: str) -> StepSpec:
        assert self.workflow is not None
        for step in self.workflow.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

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
        self.gated = dict(state.gated)
        self.blocked = dict(state.blocked)
        self.children = state.children
        self.grown = False
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
            gated=self.gated,
            blocked=self.blocked,
            children=self.children,
            **self.changes,
        )

    def get(self, field: str) -> Any:
        return self.changes.get(field, getattr(self.base, field))

    def bump(self, field: str, by: int) -> None:
        self.changes[field] = self.get(field) + by

    def role(self, task_id: str) -> str:
        return self.tasks[task_id].role or self.graph[task_id].role

    def ready_of(self, role: str) -> dict[str, None]:
        """The role's ready queue, copied from the base state on first change."""
        if role not in self.owned:
            self.ready[role] = dict(self.ready.get(role, {}))
            self.owned.add(role)
        return self.ready[role]

    def unready(self, task_id: str) -> None:
        role = self.role(task_id)
        if task_id in self.ready.get(role, {}):
            del self.ready_of(role)[task_id]
        self.gated.pop(task_id, None)

    def make_ready(self, task_id: str) -> None:
        spec = self.graph[task_id]
        if spec.kind == "chat" or spec.conditional:
            self.gated[task_id] = None
        else:
            self.ready_of(self.role(task_id))[task_id] = None

    def retry_policy(self, task_id: str) -> Retry | None:
        workflow = self.get("workflow")
        spec = self.graph[task_id]
        if workflow is None or spec.parent:
            return None
        step: StepSpec = next(s for s in workflow.steps if s.id == spec.step)
        return step.retry

    def grow(self) -> None:
        """Copy the graph indexes before changing them (they are shared with the base)."""
        if not self.grown:
            self.graph = dict(self.graph)
            self.dependents = dict(self.dependents)
            self.children = dict(self.children)
            self.grown = True

    def release(self, task_id: str, charge: int) -> None:
        """End the attempt's reservation, charging `charge` tokens."""
        task = self.tasks[task_id]
        if task.reserved or charge:
            self.bump("tokens_reserved", -task.reserved)
            self.bump("tokens_spent", charge)
            self.tasks[task_id] = replace(task, reserved=0, tokens=task.tokens + charge)

    def ended_unsuccessfully(self, task_id: str) -> None:
        """A dep that will never succeed: its waiting dependents may now be unreachable."""
        for dependent in self.dependents.get(task_id, ()):
            if dependent not in self.waiting or dependent in self.blocked:
                continue
            if self.tasks[dependent].status != "pending":
                continue  # it already ended (replaced by a replan, cancelled)
            spec = self.graph[dependent]
            hopeful = sum(self.tasks[d].status not in UNSUCCESSFUL for d in spec.deps)
            if hopeful < spec.threshold:  # it stays in `waiting`, as a run that failed left it
                self.blocked[dependent] = None

    def add_tasks(self, e: TasksAdded) -> None:
        self.grow()
        new = {spec.task_id for spec in e.tasks}
        for old, replacement in e.rewire.items():
            moved = tuple(d for d in self.dependents[old] if d not in new)
            for dependent in moved:
                spec = self.graph[dependent]
                deps = tuple(replacement if d == old else d for d in spec.deps)
                self.graph[dependent] = replace(spec, deps=deps)
            self.dependents[old] = tuple(d for d in self.dependents[old] if d in new)
            self.dependents[replacement] = moved
        for spec in e.tasks:
            self.graph[spec.task_id] = spec
            self.tasks[spec.task_id] = TaskState(spec.task_id)
            self.dependents.setdefault(spec.task_id, ())
            for dep in spec.deps:
                self.dependents[dep] = (*self.dependents[dep], spec.task_id)
            done = sum(self.tasks[d].status == "succeeded" for d in spec.deps)
            if done >= spec.threshold:
                self.make_ready(spec.task_id)
            else:
                self.waiting[spec.task_id] = spec.threshold - done
        if e.parent and e.parent in self.tasks:
            self.children[e.parent] = (*self.children.get(e.parent, ()), *sorted(new))
            parent = self.tasks[e.parent]
            if self.graph[e.parent].kind == "chat" and parent.status == "pending":
                self.gated.pop(e.parent, None)
                self.tasks[e.parent] = replace(parent, status="active", started_at=e.at)

    def start(self, e: RunStarted) -> None:
        self.graph = compile_graph(e.workflow)
        dependents: dict[str, list[str]] = {t: [] for t in self.graph}
        for spec in self.graph.values():
            for dep in spec.deps:
                dependents[dep].append(spec.task_id)
        self.dependents = {t: tuple(d) for t, d in dependents.items()}
        self.tasks = {t: TaskState(t) for t in self.graph}
        self.waiting = {t: s.threshold for t, s in self.graph.items() if s.threshold}
        self.ready, self.owned = {}, set()
        self.changes.update(
            status="running",
            workflow=e.workflow,
            input=e.input,
            trace_id=e.trace_id,
            started_at=e.at,
            started_mono=e.mono,
            boot=e.boot,
        )
        for spec in self.graph.values():
            if not spec.threshold:
                self.make_ready(spec.task_id)

    def succeed(self, e: TaskSucceeded) -> None:
        self.tasks[e.task_id] = replace(
            self.tasks[e.task_id],
            status="succeeded",
            output=e.output,
            finished_at=e.at,
            elapsed_s=e.elapsed_s,
            ended_by="result" if e.attempt else "",
        )
        self.release(e.task_id, 0)
        for dependent in self.dependents[e.task_id]:
            if dependent not in self.waiting or self.tasks[dependent].status != "pending":
                continue  # a join already met (any, quorum), or a task that already ended
            self.waiting[dependent] -= 1
            if self.waiting[dependent] == 0:
                del self.waiting[dependent]
                self.make_ready(dependent)

    def end(self, task_id: str, status: TaskStatus, error: str, at: float) -> None:
        task = self.tasks[task_id]
        self.tasks[task_id] = replace(task, status=status, error=error, finished_at=at)
        self.unready(task_id)
        self.blocked.pop(task_id, None)
        self.release(task_id, 0)
        self.ended_unsuccessfully(task_id)

    def apply(self, event: RunEvent) -> None:
        self.version += 1
        match event:
            case RunStarted():
                self.start(event)
            case ClockRebased():
                self.changes.update(boot=event.boot, clock_shift=event.clock_shift)
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
                # an attempt that ended without reporting usage is charged its reservation
                self.release(event.task_id, self.tasks[event.task_id].reserved)
                task = self.tasks[event.task_id]
                role = task.role
                if event.retry_at is not None:
                    retry = self.retry_policy(event.task_id)
                    role = retry.role if retry is not None and retry.role else role
                self.tasks[event.task_id] = replace(
                    task,
                    status="pending",
                    error=event.error,
                    excluded=(*task.excluded, event.agent_id),
                    not_before=event.retry_at or 0.0,
                    ended_by=event.reason,
                    role=role,
                    cfp_until=0.0,
                    bids=(),
                )
                if event.retry_at is not None:  # else a TaskFailed follows in this decision
                    self.make_ready(event.task_id)
            case TaskFailed():
                self.end(event.task_id, "failed", event.error, event.at)
            case TaskCancelled():
                self.end(event.task_id, "cancelled", event.reason, event.at)
            case TaskSkipped():
                self.end(event.task_id, "skipped", event.reason, event.at)
            case BranchTaken():
                self.gated.pop(event.task_id, None)
                self.ready_of(self.role(event.task_id))[event.task_id] = None
            case TasksAdded():
                self.add_tasks(event)
            case TokensReserved():
                task = self.tasks[event.task_id]
                self.tasks[event.task_id] = replace(task, reserved=task.reserved + event.tokens)
                self.bump("tokens_reserved", event.tokens)
            case UsageCharged():
                self.release(event.task_id, event.tokens)
            case LimitReached():
                pass  # audit: what the limit ends follows in the same decision
            case TaskDelegated():
                task = self.tasks[event.task_id]
                self.tasks[event.task_id] = replace(
                    task, status="active", output=event.output, ended_by="result"
                )
                self.release(event.task_id, 0)
            case TaskHandedOff():
                self.release(event.task_id, 0)
                task = self.tasks[event.task_id]
                said = {"role": event.from_role, "agent_id": event.agent_id, "output": event.output}
                if event.memory_refs:
                    said["memory_refs"] = list(event.memory_refs)
                self.tasks[event.task_id] = replace(
                    task,
                    status="pending",
                    role=event.to_role,
                    attempt_base=event.attempt,
                    context=(*task.context, said),
                    excluded=(),
                    not_before=0.0,
                    ended_by="handoff",
                    cfp_until=0.0,
                    bids=(),
                )
                self.bump("handoffs", 1)
                self.make_ready(event.task_id)
            case TaskEscalated():
                task = self.tasks[event.task_id]
                self.tasks[event.task_id] = replace(task, status="escalated", error=event.error)
                self.unready(event.task_id)
            case HumanDecided():
                if event.decision == "retry":
                    task = self.tasks[event.task_id]
                    self.tasks[event.task_id] = replace(
                        task,
                        status="pending",
                        attempt_base=task.attempt,
                        not_before=0.0,
                        cfp_until=0.0,
                        bids=(),
                    )
                    self.make_ready(event.task_id)
            case CancelRequested():
                pass  # audit: the cancellations follow in the same decision
            case ReplanRequested():
                task = self.tasks[event.task_id]
                self.tasks[event.task_id] = replace(task, status="active", error=event.error)
                self.unready(event.task_id)
                self.bump("replans", 1)
            case PlanAdopted():
                workflow = self.get("workflow")
                self.changes["workflow"] = replace(workflow, steps=[*workflow.steps, *event.steps])
                self.add_tasks(TasksAdded("", "replan", event.tasks, {}, event.at))
            case PlanRejected():
                pass  # audit: the task's failure follows in the same decision
            case ProposalsCalled():
                task = self.tasks[event.task_id]
                self.tasks[event.task_id] = replace(task, cfp_until=event.until, bids=())
            case BidReceived():
                task = self.tasks[event.task_id]
                self.tasks[event.task_id] = replace(task, bids=(*task.bids, event))
            case ResultRejected():
                self.changes["rejected"] = self.changes.get("rejected", self.base.rejected) + 1
            case RunCompleted():
                self.changes.update(status="completed", result=event.result, finished_at=event.at)
            case RunFailed():
                self.changes.update(status="failed", reason=event.reason, finished_at=event.at)
            case RunStopped():
                self.changes.update(
                    status="stopped",
                    reason=event.reason,
                    result=event.result,
                    finished_at=event.at,
                    limit=event.limit,
                )
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


class Folding:
    """Decisions folded one after another into one draft, so k decisions on a run of n
    tasks copy its containers once, O(n + k), not k times (on a big run, most of what a
    decision costs). `state` is the state after everything folded so far; it shares the
    draft's containers, so the next fold changes it in place: keep only the last one."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self._draft: _Draft | None = None

    def fold(self, events: Sequence[RunEvent]) -> RunState:
        if events:
            draft = self._draft = self._draft or _Draft(self.state)
            for event in events:
                draft.apply(event)
            self.state = draft.freeze()
        return self.state

    def fold_then(
        self, events: Sequence[RunEvent], then: Callable[[RunState], list[RunEvent]]
    ) -> list[RunEvent]:
        """Fold `events`, then what `then` decides from the state they make; returns that."""
        more = then(self.fold(events))
        self.fold(more)
        return more


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
