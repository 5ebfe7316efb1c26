"""Handlers the handoff-with-memory tests run in real agent processes."""

from __future__ import annotations

from agents.sdk import Reply, TaskContext, TaskError
from bus.protocol import Payload


async def draft(task: TaskContext) -> Payload | Reply:
    """Writes `params.notes` to run memory and one private note, then hands the task to
    `params.to`."""
    if task.memory is None:
        raise TaskError("no memory: this agent serves no contract", retryable=False)
    for key, text in task.params.get("notes", {}).items():
        await task.memory.write("run", key, text)
    await task.memory.write("agent", "private", "only the drafter may read this")
    return Reply({"drafted": True}, handoff_to=str(task.params["to"]))


async def check(task: TaskContext) -> Payload:
    """Reads the memory the previous owner passed on, by its refs."""
    if task.memory is None:
        raise TaskError("no memory: this agent serves no contract", retryable=False)
    hits = await task.memory.read(task.memory_refs)
    return {
        "refs": task.memory_refs,
        "read": {h.key: h.text for h in hits},
        "from": [said["role"] for said in task.context],
    }
