"""Every NATS subject Baton uses, built here and nowhere else, from validated tokens.

A token with a dot or a wildcard would silently change which subscribers a message
reaches, so builders reject it instead of escaping it.
"""

from __future__ import annotations

import re

from bus.errors import InvalidSubjectToken

_TOKEN = re.compile(r"^[A-Za-z0-9_\-:]+$")

INBOX_STREAM = "BATON_INBOX"
INBOX_ALL = "baton.inbox.>"
REPORT_ALL = "baton.report.*.*"
HEARTBEAT_ALL = "baton.registry.heartbeat.*"
BIDS_ALL = "baton.bids.*.*"
API_START_RUN_ALL = "baton.api.run.start.*"
"""People and tools → orchestrator: start a run (see `run_start`)."""
API_RUN_CONTROL_ALL = "baton.api.run.control.*"
"""People → orchestrator: approve, reject or retry an escalated task; cancel (see
`run_control`)."""
API_STATUS = "baton.api.status"
API_HEALTH = "baton.api.health"
"""`baton health`: the orchestrator's issues, for people and probes."""
API_AGENTS = "baton.api.agents"
API_ADMIT = "baton.api.admit"
"""A person → the orchestrator that owns the embedded server: credentials for an agent
started by hand (`baton admit`)."""
API_CREDS_ALL = "baton.api.creds.*"
"""People → the orchestrator that owns the embedded server: issue, revoke and list
agents' credentials (`baton creds`; see `creds`)."""


def token(value: str) -> str:
    """`value` if it is safe as one subject token, else `InvalidSubjectToken`."""
    if not _TOKEN.match(value):
        raise InvalidSubjectToken(value)
    return value


def assign(agent_id: str) -> str:
    """Orchestrator → one agent: a task assignment (request/reply)."""
    return f"baton.agent.{token(agent_id)}.assign"


def control(agent_id: str) -> str:
    """Orchestrator → one agent: cancel, drain."""
    return f"baton.agent.{token(agent_id)}.control"


def registry(agent_id: str) -> str:
    """Orchestrator → every process with this agent id: the answer to each heartbeat
    (whether that process owns the id, the interval and TTL to keep)."""
    return f"baton.agent.{token(agent_id)}.registry"


def heartbeat(agent_id: str) -> str:
    """Agent → registry: liveness, role, capacity and load."""
    return f"baton.registry.heartbeat.{token(agent_id)}"


def inbox(run_id: str, agent_id: str) -> str:
    """Agent → orchestrator, durable: results and failures for one run.

    The sender's agent id is part of the subject, so subject permissions can stop an
    agent from publishing as another, and the orchestrator can check the subject
    against the owner of the attempt instead of trusting the payload.
    """
    return f"baton.inbox.{token(run_id)}.{token(agent_id)}"


def inbox_sender(subject: str) -> tuple[str, str]:
    """(run_id, agent_id) of an inbox subject, or `InvalidSubjectToken`."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != ["baton", "inbox"]:
        raise InvalidSubjectToken(subject)
    return token(parts[2]), token(parts[3])


def run_control(person: str) -> str:
    """A person → the orchestrator: a decision on a run (request/reply). The person is in
    the subject, which on the embedded server only that person may publish to, so the
    orchestrator records who decided from the server, never from a claim in the payload."""
    return f"baton.api.run.control.{token(person)}"


def run_start(requester: str) -> str:
    """A person (or tool) → the orchestrator: start a run (request/reply). As for
    `run_control`, the requester is in the subject, which on the embedded server only
    that login may publish to, so the log's `requested_by` comes from the server."""
    return f"baton.api.run.start.{token(requester)}"


def creds(person: str) -> str:
    """A person → the orchestrator that owns the embedded server: issue, revoke or list
    agents' credentials (request/reply). As for `run_control`, the person is in the
    subject, so the log records who issued or revoked from the server, not the payload."""
    return f"baton.api.creds.{token(person)}"


def creds_requester(subject: str) -> str:
    """The person of a credentials subject, or `InvalidSubjectToken`."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:3] != ["baton", "api", "creds"]:
        raise InvalidSubjectToken(subject)
    return token(parts[3])


def run_starter(subject: str) -> str:
    """The requester of a run start subject, or `InvalidSubjectToken`."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[:4] != ["baton", "api", "run", "start"]:
        raise InvalidSubjectToken(subject)
    return token(parts[4])


def run_controller(subject: str) -> str:
    """The person of a run control subject, or `InvalidSubjectToken`."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[:4] != ["baton", "api", "run", "control"]:
        raise InvalidSubjectToken(subject)
    return token(parts[4])


TOOL_CALL_ALL = "baton.tool.call.*"


def tool_call(tool: str) -> str:
    """Agent → a tool served on the bus (request/reply); role permissions name these."""
    return f"baton.tool.call.{token(tool)}"


def tool_decision(agent_id: str, call_id: str) -> str:
    """A human → the agent holding a tool call that waits for approval (request/reply).
    The agent is in the subject, so on the embedded server each agent can subscribe to the
    decisions addressed to it and to no one else's."""
    return f"baton.tool.decision.{token(agent_id)}.{token(call_id)}"


TOOL_DECISIONS_ALL = "baton.tool.decision.*.*"
TOOL_APPROVALS_ALL = "baton.tool.approval.*.*"


def tool_approval(run_id: str, agent_id: str) -> str:
    """Agent → orchestrator: a tool call of this run waits for a human. The sender is in
    the subject, which on the embedded server only that agent may publish to; the
    orchestrator checks that it holds the attempt the call is made for, then passes it
    on to whoever watches the run (`tool_prompt`), or refuses and audits it."""
    return f"baton.tool.approval.{token(run_id)}.{token(agent_id)}"


def tool_approval_sender(subject: str) -> tuple[str, str]:
    """(run_id, agent_id) of a tool approval subject, or `InvalidSubjectToken`."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[:3] != ["baton", "tool", "approval"]:
        raise InvalidSubjectToken(subject)
    return token(parts[3]), token(parts[4])


def tool_prompt(run_id: str) -> str:
    """Orchestrator → whoever watches a run (`baton run --human-approval`): a tool call of
    this run, checked against the run's assignments, waits for a human."""
    return f"baton.tool.prompt.{token(run_id)}"


TOOL_PROMPT_ALL = "baton.tool.prompt.*"


BLOB_PUT_ALL = "baton.blob.*.put"
BLOB_GET_ALL = "baton.blob.*.get"


def blob_put(agent_id: str) -> str:
    """Agent → orchestrator: a chunk of a blob upload (request/reply), on a subject only
    that agent may publish to, so the orchestrator knows the uploader from the server."""
    return f"baton.blob.{token(agent_id)}.put"


def blob_get(agent_id: str) -> str:
    """Agent → orchestrator: a range of a blob (request/reply), as `blob_put`."""
    return f"baton.blob.{token(agent_id)}.get"


def blob_sender(subject: str) -> str:
    """The agent id of a blob subject, or `InvalidSubjectToken`."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != ["baton", "blob"] or parts[3] not in ("put", "get"):
        raise InvalidSubjectToken(subject)
    return token(parts[2])


MEMORY_SEARCH_ALL = "baton.memory.*.search"


def memory_search(agent_id: str) -> str:
    """Agent → memory service: a search, on a subject only that agent may publish to, so
    the service knows who asks from the server, not from the payload."""
    return f"baton.memory.{token(agent_id)}.search"


def memory_searcher(subject: str) -> str:
    """The agent id of a memory search subject, or `InvalidSubjectToken`."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != ["baton", "memory"] or parts[3] != "search":
        raise InvalidSubjectToken(subject)
    return token(parts[2])


def report(run_id: str, agent_id: str) -> str:
    """Agent → orchestrator, request/reply on core NATS: an outcome, answered once the
    orchestrator has recorded it. Unanswered, the agent sends it to the durable `inbox`
    instead. Not covered by the inbox stream, on purpose."""
    return f"baton.report.{token(run_id)}.{token(agent_id)}"


def report_sender(subject: str) -> tuple[str, str]:
    """(run_id, agent_id) of a report subject, or `InvalidSubjectToken`."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != ["baton", "report"]:
        raise InvalidSubjectToken(subject)
    return token(parts[2]), token(parts[3])


def progress(run_id: str) -> str:
    """Orchestrator → anyone watching: live progress of one run."""
    return f"baton.events.{token(run_id)}"


PROGRESS_ALL = "baton.events.*"
AGENT_CHANGES = "baton.agents.changed"
"""Orchestrator → anyone watching: an agent joined, was lost or was refused (a `Progress`
line, already recorded in the `system` stream)."""


CFP_ALL = "baton.cfp.*"


def cfp(role: str) -> str:
    """Orchestrator → every agent of a role: a call for proposals (contract net)."""
    return f"baton.cfp.{token(role)}"


def bids(run_id: str, agent_id: str) -> str:
    """Agent → orchestrator: a bid; the sender is in the subject, as for the inbox."""
    return f"baton.bids.{token(run_id)}.{token(agent_id)}"


def bid_sender(subject: str) -> tuple[str, str]:
    """(run_id, agent_id) of a bids subject, or `InvalidSubjectToken`."""
    parts = subject.split(".")
    if len(parts) != 4 or parts[:2] != ["baton", "bids"]:
        raise InvalidSubjectToken(subject)
    return token(parts[2]), token(parts[3])


DISCOVERY_PREFIX = "$SRV"
DISCOVERY_VERBS = ("PING", "INFO", "STATS")
AGENT_SERVICE = "baton-agent"
"""The NATS micro service name every agent process answers discovery to."""
ORCHESTRATOR_SERVICE = "baton-orchestrator"
"""The NATS micro service name every orchestrator process answers discovery to."""


def discovery(verb: str, name: str = "", service_id: str = "") -> str:
    """Anyone → micro services (request, replies from each; NATS ADR-32): `$SRV.<verb>`
    reaches every service, `$SRV.<verb>.<name>` every one of that name, and
    `$SRV.<verb>.<name>.<id>` one instance; the verbs are PING, INFO and STATS."""
    if verb not in DISCOVERY_VERBS:
        raise InvalidSubjectToken(verb)
    subject = f"{DISCOVERY_PREFIX}.{verb}"
    if name:
        subject += f".{token(name)}"
        if service_id:
            subject += f".{token(service_id)}"
    return subject


def discovery_all(name: str, service_id: str) -> list[str]:
    """Every subject one micro service instance answers on: three per verb."""
    return [
        discovery(verb, *scope)
        for verb in DISCOVERY_VERBS
        for scope in ((), (name,), (name, service_id))
    ]
