"""Handlers the shared-memory tests run in real agent processes."""

from __future__ import annotations

from agents.memory import MemoryDenied
from agents.sdk import TaskContext, TaskError
from bus.protocol import Payload


async def remember(task: TaskContext) -> Payload:
    """Writes each `params.notes` entry (key → text) to run memory."""
    if task.memory is None:
        raise TaskError("no memory: this agent serves no contract", retryable=False)
    notes = task.params.get("notes", {})
    ids = [await task.memory.write("run", key, text) for key, text in notes.items()]
    return {"written": len(ids)}


async def recall(task: TaskContext) -> Payload:
    """Searches memory for `params.query` in `params.scopes`; also tries a write it may
    not make, and reports the refusal."""
    if task.memory is None:
        raise TaskError("no memory: this agent serves no contract", retryable=False)
    hits = await task.memory.search(
        str(task.params["query"]),
        task.params.get("scopes"),
        mode=task.params.get("mode", "lexical"),
    )
    try:
        await task.memory.write("global", "graffiti", "should never be stored")
        refused = ""
    except MemoryDenied as exc:
        refused = str(exc)
    return {
        "hits": [{"key": h.key, "text": h.text, "scope": h.scope, "ref": h.ref} for h in hits],
        "refused": refused,
    }
