"""The orchestrator: a pure coordination core (`decide`, `evolve`, `effects`) over a
run's recorded events, the service shell that performs its effects on the bus, the
workflow format, the tools over the log, and the `baton` command line."""

from orchestrator.core.decide import decide
from orchestrator.core.effects import effects, pending_effects
from orchestrator.core.errors import (
    OrchestratorError,
    UnknownEvent,
    UnknownRun,
    VersionGap,
    WorkflowError,
)
from orchestrator.core.state import RunState, TaskState, evolve, fold, replay
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec, compile_graph, parse
from orchestrator.service.bootstrap import Stack, bootstrap
from orchestrator.service.service import Orchestrator
from orchestrator.service.workflow_files import load

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
