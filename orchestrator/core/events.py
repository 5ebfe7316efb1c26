"""The orchestrator's domain events: every state change of a run, and of agent membership.

Frozen, tagged Structs; the tag is the stored `type` and never changes once written.
One strict decoder per union; an unknown tag or field is an error, never a guess.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from orchestrator.core.workflow import StepSpec, TaskSpec, WorkflowSpec


class _Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    pass


class RunStarted(_Event, frozen=True, tag="run.started"):
    run_id: str
    workflow: WorkflowSpec
    input: dict[str, Any]
    trace_id: str
    requested_by: str
    at: float
    mono: float = 0.0
    """Monotonic seconds at the start: the run's wall-clock deadline counts from here."""
    boot: str = ""
    """The host boot whose monotonic clock `mono` is read on: the run's own clock."""


class ClockRebased(_Event, frozen=True, tag="run.clock_rebased"):
    """The run was taken over on another boot of the host (or another host), whose
    monotonic clock does not continue the run's: from now on the run's clock reads this
    boot's minus `clock_shift`, chosen so that it goes on in step with the wall clock.
    Times recorded earlier (leases, backoffs, bid windows, the start) keep their meaning."""

    boot: str
    clock_shift: float
    at: float


class RunTakenOver(_Event, frozen=True, tag="run.taken_over"):
    """Another orchestrator decides for the run from now on: it holds the lease of the
    run's partition (`lease`: the lease's revision). Appended with the expected version,
    so the previous owner's next append fails, and it steps down from the run."""

    owner: str
    partition: int
    lease: int
    at: float


class RunForked(_Event, frozen=True, tag="run.forked"):
    """This run began as a copy of another run's history up to a global position."""

    origin_run_id: str
    origin_position: int
    at: float


class TaskAssigned(_Event, frozen=True, tag="task.assigned"):
    """The routing decision, with the reason, fenced by attempt number and lease token."""

    task_id: str
    attempt: int
    agent_id: str
    lease_token: str
    reason: str
    at: float
    mono: float


class TaskSucceeded(_Event, frozen=True, tag="task.succeeded"):
    task_id: str
    attempt: int
    agent_id: str
    output: dict[str, Any]
    elapsed_s: float
    at: float


AttemptEnd = Literal["error", "agent_lost", "timeout", "undeliverable"]


class TaskAttemptFailed(_Event, frozen=True, tag="task.attempt_failed"):
    """One attempt ended without a result; `retry_at` (monotonic) is set when another follows."""

    task_id: str
    attempt: int
    agent_id: str
    reason: AttemptEnd
    error: str
    retry_at: float | None
    at: float


class TaskFailed(_Event, frozen=True, tag="task.failed"):
    """Terminal: no attempt is left, or the failure was not retryable."""

    task_id: str
    error: str
    at: float


class TaskCancelled(_Event, frozen=True, tag="task.cancelled"):
    """Terminal: the run ended before this task could."""

    task_id: str
    reason: str
    agent_id: str
    at: float


class ResultRejected(_Event, frozen=True, tag="result.rejected"):
    """Audit only: a result that must not change state (stale, forged, or too late)."""

    task_id: str
    attempt: int
    agent_id: str
    sender: str
    reason: str
    at: float


class RunCompleted(_Event, frozen=True, tag="run.completed"):
    result: dict[str, Any]
    at: float


class RunFailed(_Event, frozen=True, tag="run.failed"):
    reason: str
    at: float


class TaskSkipped(_Event, frozen=True, tag="task.skipped"):
    """Terminal: a condition did not hold, or every way in was skipped."""

    task_id: str
    reason: str
    at: float


class BranchTaken(_Event, frozen=True, tag="branch.taken"):
    """A conditional task's condition held: it may now be dispatched."""

    task_id: str
    reason: str
    at: float


class TasksAdded(_Event, frozen=True, tag="tasks.added"):
    """The graph grew: a loop round, a chat turn, or subtasks of `parent`. Dependents of
    each key of `rewire` now wait for its value instead (a loop's next round)."""

    parent: str
    reason: str
    tasks: list[TaskSpec]
    rewire: dict[str, str]
    at: float


class TokensReserved(_Event, frozen=True, tag="tokens.reserved"):
    """Before dispatch: `tokens` of the run's budget set aside for this attempt."""

    task_id: str
    attempt: int
    tokens: int
    at: float


class UsageCharged(_Event, frozen=True, tag="usage.charged"):
    """An attempt's usage as its agent reported it, charged to the run's budget:
    `tokens` in all, of which `input_tokens` and `output_tokens` as the model counted."""

    task_id: str
    attempt: int
    tokens: int
    at: float
    input_tokens: int = 0
    output_tokens: int = 0


class LimitReached(_Event, frozen=True, tag="limit.reached"):
    """A hard limit was hit; `task_id` is '' for a run-wide limit."""

    limit: str
    detail: str
    task_id: str
    at: float


class TaskDelegated(_Event, frozen=True, tag="task.delegated"):
    """The attempt ended asking for subtasks; the task completes when they all have."""

    task_id: str
    attempt: int
    agent_id: str
    output: dict[str, Any]
    at: float


class TaskHandedOff(_Event, frozen=True, tag="task.handed_off"):
    """The attempt ended handing the task to `to_role`, with everything said so far and
    the refs (event ids) of the shared memory the attempt wrote, for the next owner."""

    task_id: str
    attempt: int
    agent_id: str
    from_role: str
    to_role: str
    output: dict[str, Any]
    at: float
    memory_refs: list[str] = []


class TaskEscalated(_Event, frozen=True, tag="task.escalated"):
    """Dead letter: retries are exhausted and a person must approve, reject or retry."""

    task_id: str
    error: str
    at: float


HumanChoice = Literal["approve", "reject", "retry"]


class HumanDecided(_Event, frozen=True, tag="human.decided"):
    """A person's decision on an escalated task (the envelope's actor is that person)."""

    task_id: str
    decision: HumanChoice
    actor: str
    note: str
    at: float


class CancelRequested(_Event, frozen=True, tag="cancel.requested"):
    """Someone asked to cancel a task ('' for the whole run)."""

    task_id: str
    actor: str
    reason: str
    at: float


class RunStopped(_Event, frozen=True, tag="run.stopped"):
    """Terminal: a limit or a cancellation ended the run; `result` holds what was done."""

    limit: str
    reason: str
    result: dict[str, Any]
    at: float


class ProposalsCalled(_Event, frozen=True, tag="proposals.called"):
    """Contract net: attempt `attempt` of the task is put out to tender until `until`
    (monotonic); bids are taken until then, then the best one is awarded."""

    task_id: str
    attempt: int
    until: float
    at: float


class BidReceived(_Event, frozen=True, tag="bid.received"):
    """A bid for a tendered attempt, from a live agent of the task's role."""

    task_id: str
    attempt: int
    agent_id: str
    cost: float
    time_s: float
    confidence: float
    at: float


class ReplanRequested(_Event, frozen=True, tag="replan.requested"):
    """Retries of `task_id` are exhausted: a planner is asked for a revised remainder."""

    task_id: str
    error: str
    at: float


class PlanAdopted(_Event, frozen=True, tag="plan.adopted"):
    """A planner's revised remainder, validated (acyclic, known roles, within budget):
    its steps join the workflow and its tasks the graph; what they replace was skipped."""

    task_id: str
    steps: list[StepSpec]
    tasks: list[TaskSpec]
    at: float


class PlanRejected(_Event, frozen=True, tag="plan.rejected"):
    """A planner's proposal that failed validation; nothing of it was adopted."""

    task_id: str
    reason: str
    at: float


RunEvent = (
    RunStarted
    | ClockRebased
    | RunTakenOver
    | RunForked
    | TaskAssigned
    | TaskSucceeded
    | TaskAttemptFailed
    | TaskFailed
    | TaskCancelled
    | ResultRejected
    | RunCompleted
    | RunFailed
    | TaskSkipped
    | BranchTaken
    | TasksAdded
    | TokensReserved
    | UsageCharged
    | LimitReached
    | TaskDelegated
    | TaskHandedOff
    | TaskEscalated
    | HumanDecided
    | CancelRequested
    | RunStopped
    | ProposalsCalled
    | BidReceived
    | ReplanRequested
    | PlanAdopted
    | PlanRejected
)


class AgentJoined(_Event, frozen=True, tag="agent.joined"):
    agent_id: str
    role: str
    capabilities: list[str]
    capacity: int
    at: float


class AgentLost(_Event, frozen=True, tag="agent.lost"):
    agent_id: str
    silent_for_s: float
    at: float


class MessageRejected(_Event, frozen=True, tag="message.rejected"):
    """Audit: a message that did not decode, or came from the wrong place; nothing changed."""

    subject: str
    reason: str
    size: int
    at: float


class AgentRefused(_Event, frozen=True, tag="agent.refused"):
    """Audit: an agent whose role contract the orchestrator does not know, or whose
    contract digest differs; it is never routed to."""

    agent_id: str
    role: str
    contract_digest: str
    reason: str
    at: float


class MessagesSuppressed(_Event, frozen=True, tag="messages.suppressed"):
    """Audit: bad messages from one sender over its audit rate, counted here instead of
    recorded one by one (`rejected` messages, `refused` joins, `size` bytes in all, the
    last `reason`), from `since` to `at`. `sender` is '*' for senders the orchestrator
    stopped tracking (there were too many)."""

    sender: str
    rejected: int
    refused: int
    size: int
    reason: str
    since: float
    at: float


class MessageDeadLettered(_Event, frozen=True, tag="message.dead_lettered"):
    """Audit: a durable message whose handling failed on each of `deliveries` deliveries,
    taken out of the inbox and kept here (its first `len(data)` bytes) for a person."""

    subject: str
    reason: str
    deliveries: int
    size: int
    data: bytes
    at: float


class CredentialsIssued(_Event, frozen=True, tag="credentials.issued"):
    """Audit: a person let an agent started by hand onto the embedded server (`baton
    creds issue`, `baton admit`); the event's actor is that person. `login` is `nkey`
    (it logs in with the user nkey `public_key`, whose seed only its file holds) or
    `password` (a login URL)."""

    agent_id: str
    role: str
    login: str
    public_key: str
    at: float


class CredentialsRevoked(_Event, frozen=True, tag="credentials.revoked"):
    """Audit: a person took an agent's credentials away (`baton creds revoke`); the
    server no longer lets that login in, and closed its connections as it reloaded."""

    agent_id: str
    login: str
    public_key: str
    at: float


SystemEvent = (
    AgentJoined | AgentLost | MessageRejected | AgentRefused | MessagesSuppressed
    | MessageDeadLettered | CredentialsIssued | CredentialsRevoked
)  # fmt: skip

run_event_decoder: msgspec.msgpack.Decoder[RunEvent] = msgspec.msgpack.Decoder(RunEvent)
system_event_decoder: msgspec.msgpack.Decoder[SystemEvent] = msgspec.msgpack.Decoder(SystemEvent)
_encoder = msgspec.msgpack.Encoder()


def encode(event: RunEvent | SystemEvent) -> bytes:
    return _encoder.encode(event)


def type_of(event: RunEvent | SystemEvent) -> str:
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag
