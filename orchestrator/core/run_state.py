"""The state of a run, as frozen values: what `evolve` returns and everything else reads.

A `RunState` is rebuilt from its run's stream alone and never changed in place, so the
live state and a state rebuilt by folding the log compare equal field by field. The
indexes kept beside the tasks (`waiting`, `ready`, `gated`, `blocked`) are derived by
the fold (`orchestrator.core.state`), never set elsewhere.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from orchestrator.core.events import BidReceived
from orchestrator.core.workflow import StepSpec, TaskSpec, WorkflowSpec

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
    owner: str = ""
    """The orchestrator that took the run over last ('' if none did: its starter decides)."""
    owner_lease: int = 0
    """The revision of the partition lease it took the run over under."""

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
