"""The wire vocabulary agents and the orchestrator share, and nothing else.

Each message is a frozen, tagged msgspec Struct: the tag (not the class name) is the wire
identity, unknown fields are refused, and each subject has one decoder for exactly the
messages that may arrive on it. An agent written in another language needs only this.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

Payload = dict[str, Any]
"""Task input or output: user data, any msgpack/JSON value under string keys."""


class _Message(msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind"):
    pass


class HeldTask(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """An attempt an agent is working on; listing it in a heartbeat renews its lease."""

    run_id: str
    task_id: str
    attempt: int


class Heartbeat(_Message, frozen=True, tag="agent.heartbeat"):
    """Agent → registry, periodically: I am alive, this is what I serve and hold."""

    agent_id: str
    role: str
    capabilities: list[str]
    capacity: int
    load: int
    held: list[HeldTask] = []


class Assignment(_Message, frozen=True, tag="task.assign"):
    """Orchestrator → the chosen agent: run this attempt, fenced by its lease token."""

    run_id: str
    task_id: str
    attempt: int
    lease_token: str
    step: str
    role: str
    input: Payload
    timeout_s: float


class AssignAck(_Message, frozen=True, tag="task.assign.ack"):
    """Agent's reply to an assignment: taken (or already taken, for a re-send)."""

    accepted: bool
    reason: str = ""


class AssignBatch(_Message, frozen=True, tag="task.assign.batch"):
    """Orchestrator → one agent: the assignments one decision gave it, in one message."""

    assignments: list[Assignment]


class AssignAcks(_Message, frozen=True, tag="task.assign.acks"):
    """Agent's reply to an `AssignBatch`: one `AssignAck` per assignment, in order."""

    acks: list[AssignAck]


class Control(_Message, frozen=True, tag="agent.control"):
    """Orchestrator → agent: cancel one attempt, or drain."""

    action: Literal["cancel", "drain"]
    run_id: str = ""
    task_id: str = ""
    attempt: int = 0


class TaskResult(_Message, frozen=True, tag="task.result"):
    """Agent → orchestrator's durable inbox: the attempt succeeded."""

    run_id: str
    task_id: str
    attempt: int
    lease_token: str
    agent_id: str
    output: Payload
    elapsed_s: float


class TaskFailure(_Message, frozen=True, tag="task.failure"):
    """Agent → orchestrator's durable inbox: the attempt failed."""

    run_id: str
    task_id: str
    attempt: int
    lease_token: str
    agent_id: str
    error: str
    retryable: bool = True


class ReportBatch(_Message, frozen=True, tag="task.reports"):
    """Agent → orchestrator: several outcomes of one run in one message, so one durable
    (fsynced) inbox write carries every result that finished while the last was stored."""

    reports: list[TaskResult | TaskFailure]


class ReportAck(_Message, frozen=True, tag="task.report.ack"):
    """Orchestrator's reply to a fast report: what it says is now durable in the log."""


class ErrorReply(_Message, frozen=True, tag="error"):
    """Any request's reply when the request itself was refused."""

    error: str
    detail: str = ""


class Progress(_Message, frozen=True, tag="run.progress"):
    """Orchestrator → watchers: one line of a run's live progress."""

    run_id: str
    event: str
    task_id: str = ""
    agent_id: str = ""
    attempt: int = 0
    elapsed_s: float = 0.0
    detail: str = ""


AgentInbound = Assignment | AssignBatch | Control
InboxMessage = TaskResult | TaskFailure | ReportBatch
AssignReply = AssignAck | AssignAcks | ErrorReply
ReportReply = ReportAck | ErrorReply
