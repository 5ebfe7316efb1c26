"""Requests people and tools send the orchestrator service on `baton.api.*`."""

from __future__ import annotations

from typing import Any

import msgspec

from orchestrator.workflow import WorkflowSpec


class StartRunRequest(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, tag_field="kind", tag="run.start"
):
    workflow: WorkflowSpec
    input: dict[str, Any] = {}
    run_id: str = ""
    requested_by: str = "api"


class RunAccepted(msgspec.Struct, frozen=True, tag_field="kind", tag="run.accepted"):
    run_id: str
