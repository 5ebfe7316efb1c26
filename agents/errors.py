"""Typed errors of the agent side's governance: tools, approvals and model calls.

Every refusal carries the data a caller needs (which tool, why), so the tool-calling loop
can tell the model what went wrong and the audit log can say it precisely.
"""

from __future__ import annotations


class AgentError(Exception):
    """Root of the errors the agent-side tool gateway and LLM loop raise."""


class ToolDefinitionError(AgentError):
    """A tool function that cannot be governed: no type hints, not async, a bad name."""


class ToolError(AgentError):
    """A tool call that did not run to a result."""

    def __init__(self, tool: str, reason: str) -> None:
        super().__init__(f"tool {tool!r}: {reason}")
        self.tool = tool
        self.reason = reason


class ToolRefused(ToolError):
    """Outside the caller's contract or budget, or not a registered tool: never ran."""


class ToolArgumentsInvalid(ToolRefused):
    """Arguments that do not match the tool's schema: never ran."""


class ToolDenied(ToolError):
    """The tool needs approval and the policy or a human said no (or nobody answered)."""


class ToolFailed(ToolError):
    """The tool ran and raised."""


class LlmConfigError(AgentError):
    """An LLM agent spec that does not load or does not hold together; names where."""

    def __init__(self, location: str, message: str) -> None:
        super().__init__(f"{location}: {message}")
        self.location = location
        self.message = message


class InteropMissing(AgentError):
    """An A2A or MCP feature was asked for without the `interop` extra installed."""


class AgentIdTaken(AgentError):
    """The orchestrator refused this process its agent id: another live process has it."""

    def __init__(self, agent_id: str) -> None:
        super().__init__(
            f"agent id {agent_id!r} is in use by another live agent process (refused by the "
            "orchestrator); stop that one or give this one another --id"
        )
        self.agent_id = agent_id
