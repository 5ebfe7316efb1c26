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
API_START_RUN = "baton.api.run.start"


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
