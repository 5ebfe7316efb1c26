"""What the shell asks the core to decide on, and the context it decides in.

Everything the core may not compute itself (time, the live agents and their load, lease
tokens, jitter) arrives here as values, so a decision is a pure function of its inputs
and is recorded, never recomputed, on replay.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from bus.protocol import Bid, TaskFailure, TaskResult
from orchestrator.core.workflow import WorkflowSpec


class StartRun(msgspec.Struct, frozen=True):
    run_id: str
    workflow: WorkflowSpec
    input: dict[str, Any]
    trace_id: str
    requested_by: str


class ReportResult(msgspec.Struct, frozen=True):
    """A result from the inbox; `sender` is the agent id of the subject it came on.
    `memory_refs`: for a handoff, the shared memory the attempt wrote (as the shell's
    memory service recorded it), passed on to the next owner."""

    result: TaskResult
    sender: str
    memory_refs: tuple[str, ...] = ()


class ReportFailure(msgspec.Struct, frozen=True):
    failure: TaskFailure
    sender: str


class DeliveryFailed(msgspec.Struct, frozen=True):
    """The assignment never reached its agent (no responder, no ack in time, refused)."""

    task_id: str
    attempt: int
    error: str


class Resume(msgspec.Struct, frozen=True):
    """An orchestrator took the run over after a start: if its times were recorded on
    another boot of the host (or another host), they are moved onto this boot's clock.
    With an `owner` (orchestrators sharing the runs by partition), the run is taken over
    by it under its lease of the run's partition (`RunTakenOver`), unless it owns it."""

    owner: str = ""
    partition: int = 0
    lease: int = 0


class Tick(msgspec.Struct, frozen=True):
    """Time passed: expire lapsed leases (when the registry has warmed up) and dispatch."""

    check_leases: bool = True


class HumanDecision(msgspec.Struct, frozen=True):
    """A person's decision on an escalated task, sent through the API subject."""

    task_id: str
    decision: Literal["approve", "reject", "retry"]
    actor: str
    note: str = ""
    output: dict[str, Any] = {}


class CancelRun(msgspec.Struct, frozen=True):
    """Cancel one task, or the whole run when `task_id` is ''."""

    task_id: str
    actor: str
    reason: str = ""


class SubmitBid(msgspec.Struct, frozen=True):
    """A contract-net bid; `sender` is the agent id of the subject it came on."""

    bid: Bid
    sender: str


Command = (
    StartRun
    | ReportResult
    | ReportFailure
    | DeliveryFailed
    | Tick
    | Resume
    | HumanDecision
    | CancelRun
    | SubmitBid
)


class AgentView(msgspec.Struct, frozen=True):
    """A live agent as routing sees it: what it serves, how much it can take, how busy."""

    agent_id: str
    role: str
    capacity: int
    load: int


@dataclass(frozen=True)
class Context:
    """The outside world at the moment of one decision."""

    now: float
    """Monotonic seconds: leases and backoff."""
    wall: float
    """Unix seconds: recorded for people, never compared."""
    agents: Sequence[AgentView]
    new_token: Callable[[], str]
    random: Callable[[], float]
    boot: str = ""
    """Which boot of the host `now` counts from ('' if unknown): monotonic times recorded
    on another boot mean nothing on this one."""
