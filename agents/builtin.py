"""Handlers every Baton install has, for benchmarks, tests and trying things out."""

from __future__ import annotations

import asyncio

from agents.sdk import Offer, Reply, TaskContext, TaskError
from bus.protocol import Payload, SubtaskRequest


async def noop(task: TaskContext) -> Payload:
    """Does nothing and says which task it was: the unit of the dispatch benchmarks."""
    return {"task": task.task_id}


async def echo(task: TaskContext) -> Payload:
    """Returns its whole input, to see exactly what an agent receives."""
    return {"echo": task.input}


async def sleep(task: TaskContext) -> Payload:
    """Waits `params.seconds` (default 0.1): stands in for slow, I/O-bound work."""
    seconds = float(task.params.get("seconds", 0.1))
    await asyncio.sleep(seconds)
    return {"task": task.task_id, "slept_s": seconds}


async def fail(task: TaskContext) -> Payload:
    """Always fails; `params.retryable` (default true) says whether a retry could help."""
    raise TaskError(
        f"{task.task_id} fails on purpose", retryable=bool(task.params.get("retryable", True))
    )


async def writer(task: TaskContext) -> Payload:
    """Writes draft N of round N, saying which review notes it took in."""
    notes = [d.get("notes") for d in task.deps.values() if isinstance(d, dict) and "notes" in d]
    return {"draft": f"draft {task.round} of {task.params.get('topic', 'the brief')}",
            "took_notes": notes}  # fmt: skip


async def reviewer(task: TaskContext) -> Payload:
    """Approves in round `params.approve_on` (default 2), asks for another round before."""
    approve_on = int(task.params.get("approve_on", 2))
    approved = task.round >= approve_on
    return {"approved": approved, "round": task.round,
            "notes": "ship it" if approved else f"round {task.round}: tighten it"}  # fmt: skip


async def chatter(task: TaskContext) -> Payload:
    """A chat participant that never agrees, unless `params.agree_on_turn` says when."""
    agree_on = int(task.params.get("agree_on_turn", 0))
    turn = int(task.input.get("turn", 0))
    said = f"turn {turn}: I have heard {len(task.transcript)} turns and disagree"
    return {"agree": bool(agree_on) and turn >= agree_on, "say": said}


async def selector(task: TaskContext) -> Payload:
    """A chat selector agent: picks the participant who spoke least so far."""
    participants = [str(p) for p in task.input.get("participants", [])]
    spoken = [str(t.get("role")) for t in task.transcript]
    return {"next": min(participants, key=lambda p: (spoken.count(p), p)) if participants else ""}


async def spender(task: TaskContext) -> Reply:
    """Reports `params.tokens` (default 1000) tokens of usage: a budget's worst customer."""
    return Reply({"task": task.task_id}, tokens=int(task.params.get("tokens", 1000)))


async def delegator(task: TaskContext) -> Payload | Reply:
    """Asks for `params.subtasks` subtasks of role `params.sub_role` (a subtask itself
    just answers), and completes with their outputs."""
    if task.input.get("parent"):
        return {"part": task.params.get("part"), "by": task.agent_id}
    count = int(task.params.get("subtasks", 2))
    role = str(task.params.get("sub_role", task.role))
    asks = [SubtaskRequest(role, {"part": i}) for i in range(count)]
    return Reply({"asked": count}, subtasks=asks)


async def triage(task: TaskContext) -> Payload | Reply:
    """Hands its task to role `params.to` the first time; answers when it has context."""
    if task.context:
        return {"answered_by": task.role, "context_seen": len(task.context)}
    return Reply({"note": f"{task.role} passes this on"}, handoff_to=str(task.params["to"]))


async def bid_by_number(task: TaskContext) -> Offer:
    """A contract-net bidder: agent `<role>-<n>-<hex>` asks cost n, so agent 1 is the
    cheapest; a stand-in for agents that price work by what they know of it."""
    parts = task.agent_id.rsplit("-", 2)
    number = int(parts[1]) if len(parts) == 3 and parts[1].isdigit() else 99
    return Offer(cost=float(number), time_s=0.1 * number, confidence=0.9)


async def planner(task: TaskContext) -> Payload:
    """A planner for `on_exhausted = "replan"`: the failed step again, done by role
    `params.fallback_role`, and every step that had not started, renamed for this round
    (no fallback role: an empty plan, i.e. finish with what is done)."""
    role = task.params.get("fallback_role")
    failed, remaining = task.input.get("failed_step"), task.input.get("remaining", [])
    if not role or not isinstance(failed, dict):
        return {"steps": []}
    rename = {s["id"]: f"{s['id']}_r{task.round}" for s in [failed, *remaining]}
    steps = []
    for step in [failed, *remaining]:
        new = {k: v for k, v in step.items() if v is not None}
        new["id"] = rename[step["id"]]
        new["needs"] = [rename.get(n, n) for n in step.get("needs", [])]
        if step is failed:
            new.update(role=role, on_exhausted="fail")
        steps.append(new)
    return {"steps": steps}
