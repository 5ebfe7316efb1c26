"""The orchestrator: a pure coordination core (`decide`, `evolve`, `effects`) over a
run's recorded events, the service shell that performs its effects on the bus, the
workflow format, the tools over the log, and the `baton` command line."""

from orchestrator.bootstrap import Stack, bootstrap
from orchestrator.decide import decide
from orchestrator.effects import effects, pending_effects
from orchestrator.errors import (
    OrchestratorError,
    UnknownEvent,
    UnknownRun,
    VersionGap,
    WorkflowError,
)
from orchestrator.service import Orchestrator
from orchestrator.state import RunState, TaskState, evolve, fold, replay
from orchestrator.workflow import AgentSpec, StepSpec, WorkflowSpec, compile_graph, load, parse

__all__ = [
    "AgentSpec",
    "Orchestrator",
    "OrchestratorError",
    "RunState",
    "Stack",
    "StepSpec",
    "TaskState",
    "UnknownEvent",
    "UnknownRun",
    "VersionGap",
    "WorkflowError",
    "WorkflowSpec",
    "bootstrap",
    "compile_graph",
    "decide",
    "effects",
    "evolve",
    "fold",
    "load",
    "parse",
    "pending_effects",
    "replay",
]
