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
    run it started, never a second one. Who asked is not a field: it is the requester
    whose subject the request came on (`bus.subjects.run_start`)."""

    workflow: WorkflowSpec
    input: dict[str, Any] = {}
    run_id: str = ""
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
    task (or the whole run, with no `task_id`). Who decided is not a field: it is the
    person whose subject the request came on (`bus.subjects.run_control`)."""

    run_id: str
    action: Literal["approve", "reject", "retry", "cancel"]
    task_id: str = ""
    note: str = ""
    output: dict[str, Any] = {}


class ControlAccepted(msgspec.Struct, frozen=True, tag_field="kind", tag="run.control.accepted"):
    """The reply once a person's decision is recorded in the run's log."""

    run_id: str
    status: str
    """The run's status once the decision is recorded."""
    actor: str = ""
    """Who the decision is recorded as (the person the request came from)."""


class StatusRequest(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="status"
):
    """`baton status`: the runs the orchestrator serves (and, if `all`, the newest finished
    ones it keeps in memory), with its health."""

    all: bool = False


class RunProgress(msgspec.Struct, frozen=True):
    """One run as `baton status` shows it: its status, task counts and elapsed time."""

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
    by_status: dict[str, int] = {}
    """Tasks per status, for every status the core has (`TaskStatus`), zeros included."""


class HealthIssue(msgspec.Struct, frozen=True):
    """One thing wrong with a running orchestrator (or that was, until `until`)."""

    kind: str
    """`storage` (the event store refuses writes), `bus` (the NATS connection is down),
    `loop` (a loop of the shell stopped) or `run` (a run nothing moves any more)."""
    subject: str
    """What: `event store`, `nats`, the loop's name, the run's id."""
    since: float
    """Unix time it began (for a stuck run: the time of its last event)."""
    detail: str
    count: int = 1
    """Failures since `since`."""
    until: float = 0.0
    """Unix time it ended; 0 while it lasts."""


class StatusReply(msgspec.Struct, frozen=True, tag_field="kind", tag="status.reply"):
    runs: list[RunProgress]
    health: list[HealthIssue] = []
    """What is wrong with the orchestrator now (and what was, recently)."""


class HealthRequest(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="health"
):
    """`baton health`: is the orchestrator well? (for probes: it exits by the answer)"""


class HealthReply(msgspec.Struct, frozen=True, tag_field="kind", tag="health.reply"):
    healthy: bool
    """No issue is going on (ones that ended recently are listed, and do not count)."""
    issues: list[HealthIssue]
    at: float
    """Unix time of the answer."""


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
    contract_digest: str = ""
    """The digest of the role contract its heartbeats advertise ('' when it serves none)."""


class AgentsReply(msgspec.Struct, frozen=True, tag_field="kind", tag="agents.reply"):
    agents: list[AgentStatus]


class AdmitRequest(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="admit"
):
    """A person asks for credentials for an agent they start by hand (`baton admit`)."""

    agent_id: str
    role: str


class Admitted(msgspec.Struct, frozen=True, tag_field="kind", tag="admitted"):
    """The agent's own login: `url` is `nats://<user>:<password>@host:port`, its
    `BATON_NATS_URL`; the server lets it act only as `agent_id`."""

    agent_id: str
    url: str


class CredsRequest(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="creds"
):
    """A person asks about agents' credentials on the embedded server (`baton creds`):
    `issue` lets `agent_id` in, serving `role`, with the user nkey `public_key` (the CLI
    made the key pair and keeps the seed in the person's file: only the public half is
    sent); `revoke` takes `agent_id`'s login away; `list` names the agents let in by
    hand. Who asked is not a field: it is the person whose subject the request came on
    (`bus.subjects.creds`)."""

    action: Literal["issue", "revoke", "list"]
    agent_id: str = ""
    role: str = ""
    public_key: str = ""


class Credential(msgspec.Struct, frozen=True):
    """One agent's login on the embedded server: how it logs in (`nkey`, with its public
    key, or `password`) and the role it was let in for."""

    agent_id: str
    role: str
    login: str
    public_key: str = ""


class CredsReply(msgspec.Struct, frozen=True, tag_field="kind", tag="creds.reply"):
    """What a `CredsRequest` did, once it is recorded in the log: the credentials issued
    or revoked, or (for `list`) every agent's let in by hand; `url` is the server's
    address (without any login), which an nkey login connects to."""

    action: str
    credentials: list[Credential]
    url: str
