"""How an agent says which model it calls, within protocol v1: a capability
`model:<name>` in its heartbeats. Capabilities are open strings that routing does not
use, so an orchestrator that does not read this one works as before; Baton's records it
with the agent's join (`agent.joined`) and prices the agent's usage by it (see
docs/protocol.md, *Joining*)."""

from __future__ import annotations

from collections.abc import Sequence

MODEL_CAPABILITY = "model:"
"""The prefix of the capability that names the model (the first such capability counts)."""


def model_capability(model: str) -> str:
    """The capability that announces `model`."""
    return MODEL_CAPABILITY + model


def model_of(capabilities: Sequence[str]) -> str:
    """The model the first `model:<name>` capability names ('' if none names one)."""
    for capability in capabilities:
        if capability.startswith(MODEL_CAPABILITY) and len(capability) > len(MODEL_CAPABILITY):
            return capability[len(MODEL_CAPABILITY) :]
    return ""


def announcing(capabilities: Sequence[str], model: str) -> list[str]:
    """`capabilities` with `model` announced in place of any model they name ('' none:
    they are kept as they are)."""
    if not model:
        return list(capabilities)
    kept = [c for c in capabilities if not c.startswith(MODEL_CAPABILITY)]
    return [*kept, model_capability(model)]
