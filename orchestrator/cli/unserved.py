"""Roles a run waits on that no agent serves, said where a person would otherwise wait
in silence: when `baton run` starts a workflow with a step whose role has no `[[agents]]`
entry, and when a run is past its `--timeout` with ready tasks no live agent can take."""

from __future__ import annotations

import contextlib
from pathlib import Path

from orchestrator.core.errors import OrchestratorError
from orchestrator.core.workflow import WorkflowSpec
from orchestrator.service.bootstrap import Stack


def unlisted(workflow: WorkflowSpec, path: Path) -> str:
    """The line `baton run` prints when a step's role has no `[[agents]]` entry; ""."""
    roles = sorted({s.role for s in workflow.steps if s.role} - {a.role for a in workflow.agents})
    if not roles:
        return ""
    return (
        f"baton: no [[agents]] entry of {path.name} serves {', '.join(roles)}: its tasks wait "
        "for such an agent to join the bus (baton agent --role ROLE)"
    )


def waiting(stack: Stack, run_id: str) -> str:
    """A clause naming the roles of the run's ready tasks that no live agent serves; ""."""
    with contextlib.suppress(OrchestratorError):  # ended meanwhile, or handed on
        ready = stack.orchestrator.run(run_id).ready
        served = {heartbeat.role for heartbeat in stack.orchestrator.agents()}
        if idle := sorted(role for role, tasks in ready.items() if tasks and role not in served):
            return (
                f"; its ready tasks wait for a role no agent serves: {', '.join(idle)} (an "
                "[[agents]] entry of the workflow starts one, or baton agent --role ROLE)"
            )
    return ""
