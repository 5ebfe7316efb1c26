"""Agents: the runtime that makes one process a Baton agent, and the SDK handlers use.
Knows only the wire protocol in `bus`; never imports the orchestrator or the event store."""

from agents.runtime import AgentRuntime
from agents.sdk import Handler, HandlerNotFound, Reply, TaskContext, TaskError, load_handler

__all__ = [
    "AgentRuntime",
    "Handler",
    "HandlerNotFound",
    "Reply",
    "TaskContext",
    "TaskError",
    "load_handler",
]
