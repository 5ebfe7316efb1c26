"""The orchestrator's domain events: every state change of a run, and of agent membership.

Frozen, tagged Structs; the tag is the stored `type` and never changes once written.
One strict decoder per union; an unknown tag or field is an error, never a guess.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from orchestrator.workflow import WorkflowSpec


class _Event(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="type"):
    pass


class RunStarted(_Event, frozen=True, tag="run.started"):
    run_id: str
    workflow: WorkflowSpec
    input: dict[str, Any]
    trace_id: str
    requested_by: str
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


RunEvent = (
    RunStarted
    | RunForked
    | TaskAssigned
    | TaskSucceeded
    | TaskAttemptFailed
    | TaskFailed
    | TaskCancelled
    | ResultRejected
    | RunCompleted
    | RunFailed
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


SystemEvent = AgentJoined | AgentLost | MessageRejected | AgentRefused

run_event_decoder: msgspec.msgpack.Decoder[RunEvent] = msgspec.msgpack.Decoder(RunEvent)
system_event_decoder: msgspec.msgpack.Decoder[SystemEvent] = msgspec.msgpack.Decoder(SystemEvent)
_encoder = msgspec.msgpack.Encoder()


def encode(event: RunEvent | SystemEvent) -> bytes:
    return _encoder.encode(event)


def type_of(event: RunEvent | SystemEvent) -> str:
    tag = type(event).__struct_config__.tag
    assert isinstance(tag, str)
    return tag
