"""Requests people and tools send the orchestrator service on `baton.api.*`."""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from bus.protocol import HeldTask
from orchestrator.core.workflow import WorkflowSpec


class StartRunRequest(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="run.start"
):
    """Start a run (`baton submit`). With a `request_id` the request is idempotent: sent
    again (after a timeout, a restart, even once the run ended) it is answered with the
    run it started, never a second one."""

    workflow: WorkflowSpec
    input: dict[str, Any] = {}
    run_id: str = ""
    requested_by: str = "api"
    request_id: str = ""
    """Chosen by the client, the same for each retry of one request (at most 200 chars)."""


class RunAccepted(msgspec.Struct, frozen=True, tag_field="kind", tag="run.accepted"):
    run_id: str
    earlier: bool = False
    """The run was started by an earlier try of this request (same request id), not now."""


class RunControlRequest(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="run.control"
):
    """A person's decision on a run: approve/reject/retry an escalated task, or cancel a
    task (or the whole run, with no `task_id`). `actor` is recorded as who decided."""

    run_id: str
    action: Literal["approve", "reject", "retry", "cancel"]
    actor: str
    task_id: str = ""
    note: str = ""
    output: dict[str, Any] = {}


class ControlAccepted(msgspec.Struct, frozen=True, tag_field="kind", tag="run.control.accepted"):
    """The reply once a person's decision is recorded in the run's log."""

    run_id: str
    status: str
    """The run's status once the decision is recorded."""


class StatusRequest(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="status"
):
    """`baton status`: the runs the orchestrator serves (finished ones too if `all`)."""

    all: bool = False


class RunProgress(msgspec.Struct, frozen=True):
    run_id: str
    workflow: str
    status: str
    trace_id: str
    started_at: float
    elapsed_s: float
    tasks: int
    succeeded: int
    running: int
    failed: int
    pending: int
    attempts: int
    """Attempts made so far, over all tasks (more than `tasks` means retries)."""


class StatusReply(msgspec.Struct, frozen=True, tag_field="kind", tag="status.reply"):
    runs: list[RunProgress]


class AgentsRequest(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="agents"
):
    """`baton agents`: the live agents the orchestrator's registry knows."""


class AgentStatus(msgspec.Struct, frozen=True):
    agent_id: str
    role: str
    capacity: int
    load: int
    """Attempts the orchestrator has out on this agent."""
    reported_load: int
    """What the agent's last heartbeat said it runs."""
    heartbeat_age_s: float
    held: list[HeldTask]


class AgentsReply(msgspec.Struct, frozen=True, tag_field="kind", tag="agents.reply"):
    agents: list[AgentStatus]
