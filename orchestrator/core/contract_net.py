"""Contract-net routing, decided in the core: a ready task of a `contract_net` step is
put out to tender (`proposals.called`), live agents of its role bid before the window
closes (`bid.received`, each bid a command the shell hands in), and then the best bid
among the agents still free wins the attempt, deterministically: lowest cost, then
shortest time, then highest confidence, then agent id. No usable bid: plain routing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from orchestrator.core.commands import AgentView, Context, SubmitBid
from orchestrator.core.events import BidReceived, ProposalsCalled, RunEvent
from orchestrator.core.state import RunState, TaskState


def tender(task: TaskState, window_s: float, ctx: Context) -> ProposalsCalled:
    return ProposalsCalled(task.task_id, task.attempt + 1, ctx.now + window_s, ctx.wall)


def refusal(state: RunState, command: SubmitBid, ctx: Context) -> str:
    """Why a bid cannot count ('' if it can)."""
    bid = command.bid
    if command.sender != bid.agent_id:
        return f"sent by {command.sender} but claims to be from {bid.agent_id}"
    task = state.tasks.get(bid.task_id)
    if state.status != "running" or task is None:
        return f"no open task {bid.task_id!r} in run {state.run_id}"
    if task.status != "pending" or not task.cfp_until or bid.attempt != task.attempt + 1:
        return f"attempt {bid.attempt} of {bid.task_id} is not out to tender"
    if ctx.now > task.cfp_until:
        return "the bidding window has closed"
    live = {a.agent_id: a for a in ctx.agents}
    if bid.agent_id not in live or live[bid.agent_id].role != state.role_of(bid.task_id):
        return f"{bid.agent_id} is not a live agent of role {state.role_of(bid.task_id)}"
    if any(b.agent_id == bid.agent_id for b in task.bids):
        return f"{bid.agent_id} already bid"
    if min(bid.cost, bid.time_s) < 0 or not 0 <= bid.confidence <= 1:
        return "cost and time must not be negative, confidence is between 0 and 1"
    return ""


def on_bid(state: RunState, command: SubmitBid, ctx: Context) -> list[RunEvent]:
    if refusal(state, command, ctx):
        return []
    b = command.bid
    return [BidReceived(b.task_id, b.attempt, b.agent_id, b.cost, b.time_s, b.confidence, ctx.wall)]


def award(
    task: TaskState, free: Sequence[AgentView], loads: Mapping[str, int]
) -> tuple[AgentView, str] | None:
    """The free agent whose bid is best, with the reason; None when no bid is usable."""
    by_id = {a.agent_id: a for a in free}
    usable = [b for b in task.bids if b.agent_id in by_id]
    if not usable:
        return None
    best = min(usable, key=lambda b: (b.cost, b.time_s, -b.confidence, b.agent_id))
    agent = by_id[best.agent_id]
    reason = (
        f"contract net: best of {len(usable)} usable bid(s) of {len(task.bids)}: cost "
        f"{best.cost:g}, time {best.time_s:g}s, confidence {best.confidence:g}; "
        f"load {loads.get(agent.agent_id, 0)}/{agent.capacity}"
    )
    return agent, reason
