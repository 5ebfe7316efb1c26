"""Handlers of the governed example: researchers share their notes through run memory,
the editor reads them back from memory (not from its dependencies' outputs), drafts the
brief into run memory and hands the task off to the publisher, which reads the draft by
the memory refs the handoff passed it and publishes it through a tool that needs approval
(a policy approves it; `baton run --human-approval` asks you instead)."""

from __future__ import annotations

from typing import Any

from agents import Reply, TaskContext, TaskError
from agents.tools import ToolRegistry

tools = ToolRegistry()
"""Tools this module's handlers may call through `task.tools` (the contract decides which)."""

PUBLISHED: list[str] = []

NOTES: dict[str, str] = {
    "state": "Shared state kept in one append-only log lets every agent's view be rebuilt.",
    "failure": "A lease with heartbeats turns a silent agent into a detected failure.",
    "governance": "Tool access checked against a role contract keeps agents in their mandate.",
}


@tools.tool(risk="medium", needs_approval=True)
async def publish(title: str, body: str) -> str:
    """Publish a brief (stands in for anything with side effects: needs approval)."""
    PUBLISHED.append(title)
    return f"published {title!r} ({len(body)} characters)"


async def research(task: TaskContext) -> dict[str, Any]:
    if task.memory is None:
        raise TaskError("this example runs under role contracts (roles.toml)", retryable=False)
    angle = task.params["angles"][int(task.input["index"])]
    await task.memory.write("run", f"note:{angle}", f"{angle}: {NOTES[angle]}")
    return {"angle": angle, "by": task.agent_id}


async def edit(task: TaskContext) -> Reply:
    """Drafts the brief from the notes in run memory, then hands the task to the
    publisher (its contract and the step both allow it)."""
    if task.memory is None:
        raise TaskError("this example runs under role contracts (roles.toml)", retryable=False)
    hits = await task.memory.search("agent state log contract role", ["run"], limit=10)
    if not hits:
        raise TaskError("no research notes in run memory", retryable=True)
    topic = str(task.input.get("input", {}).get("topic", ""))
    body = " ".join(sorted(h.text for h in hits))
    await task.memory.write("run", "draft:brief", body)  # its ref goes with the handoff
    notes = [h.ref for h in hits]
    return Reply({"title": f"Brief: {topic}", "notes": notes}, handoff_to="publisher")


async def publish_brief(task: TaskContext) -> dict[str, Any]:
    """Takes over a handed-off draft: reads it by the memory refs the handoff passed on,
    and publishes it (the tool needs approval)."""
    if task.memory is None or task.tools is None:
        raise TaskError("this example runs under role contracts (roles.toml)", retryable=False)
    if not task.context:
        raise TaskError("the publisher only takes handed-off drafts", retryable=False)
    editor = task.context[-1]
    drafts = await task.memory.read(task.memory_refs)
    if not drafts:
        raise TaskError("the handoff passed no readable draft", retryable=False)
    title, body = str(editor["output"]["title"]), drafts[0].text
    receipt = await task.tools.call("publish", {"title": title, "body": body})
    return {
        "title": title,
        "text": body,
        "memory_refs": editor["output"]["notes"],
        "draft_ref": drafts[0].ref,
        "handed_off_by": editor["role"],
        "receipt": receipt,
    }
