"""Typed errors of the orchestrator, each carrying what a caller needs to act on it."""

from __future__ import annotations


class OrchestratorError(Exception):
    """Root of every error the orchestrator raises."""


class WorkflowError(OrchestratorError):
    """A workflow file or spec that cannot run, with where the problem is."""

    def __init__(self, location: str, message: str) -> None:
        super().__init__(f"{location}: {message}" if location else message)
        self.location = location
        self.message = message


class UnknownEvent(OrchestratorError):
    """`evolve` met an event it has no rule for: the log and the code disagree."""


class VersionGap(OrchestratorError):
    """An event folded out of order: its version is not the state's next one."""

    def __init__(self, run_id: str, expected: int, got: int) -> None:
        super().__init__(f"run {run_id}: expected event version {expected}, got {got}")
        self.run_id = run_id
        self.expected = expected
        self.got = got


class UnknownRun(OrchestratorError):
    """A run id with no events in the store."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"no run {run_id!r} in the event store")
        self.run_id = run_id


class UnknownStore(OrchestratorError):
    """A state directory with no event store in it."""


class AgentStartError(OrchestratorError):
    """An agent process `baton run` started died or never registered."""


class RunNotRecorded(OrchestratorError):
    """A new run's first events could not be appended, so the run does not exist."""

    def __init__(self, run_id: str) -> None:
        super().__init__(f"run {run_id} could not be recorded in the event store")
        self.run_id = run_id


class ControlRefused(OrchestratorError):
    """A person's decision that cannot apply (no such task, not escalated, run ended)."""


class LivenessConfigError(OrchestratorError):
    """A heartbeat interval or agent TTL that cannot work (not a positive number, or a TTL
    not longer than the interval: every agent would be lost between two heartbeats)."""
