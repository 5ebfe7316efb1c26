"""Hard limits of a run, decided in the core: token budgets (reserved before dispatch,
charged from reported usage), the wall-clock deadline and the step count.

Hitting a run-wide limit stops the run in one defined way (`stop`): a `LimitReached`
naming the limit, every unfinished task cancelled (the agents holding work are told),
and `RunStopped` carrying the outputs finished so far. Never a hang.
"""

from __future__ import annotations

from typing import Any

from orchestrator.core.commands import Context
from orchestrator.core.events import LimitReached, RunEvent, RunStopped, TaskCancelled
from orchestrator.core.state import TERMINAL_TASK, RunState
from orchestrator.core.workflow import Limits


def limits_of(state: RunState) -> Limits:
    return state.workflow.limits if state.workflow is not None else Limits()


def task_budget(state: RunState, task_id: str) -> int:
    """Tokens one attempt of `task_id` may use (0: no per-task limit).

    A retry of a step with `retry.tokens` gets that (smaller) budget instead."""
    spec = state.graph[task_id]
    limits = limits_of(state)
    if spec.kind == "chat" or state.workflow is None:
        return 0
    step = state.step(spec.step)
    task = state.tasks[task_id]
    if task.attempt > task.attempt_base and step.retry is not None and step.retry.tokens:
        return step.retry.tokens
    return step.tokens or limits.task_tokens


def can_reserve(state: RunState, tokens: int, extra_reserved: int = 0) -> bool:
    """Whether `tokens` more fit in the run's budget beside what is spent and reserved."""
    budget = limits_of(state).tokens
    if not budget:
        return True
    return state.tokens_spent + state.tokens_reserved + extra_reserved + tokens <= budget


def partial_result(state: RunState) -> dict[str, Any]:
    """The outputs finished so far, by task."""
    return {
        t.task_id: t.output
        for t in state.tasks.values()
        if t.status == "succeeded" and not state.graph[t.task_id].parent
    }


def stop(state: RunState, limit: str, detail: str, ctx: Context) -> list[RunEvent]:
    """End the run because of `limit` (or a cancellation), keeping what was done."""
    events: list[RunEvent] = []
    if limit != "cancelled":
        events.append(LimitReached(limit, detail, "", ctx.wall))
    events += [
        TaskCancelled(
            t.task_id, f"run stopped: {detail}", t.agent_id if t.status == "running" else "",
            ctx.wall,
        )
        for t in state.tasks.values()
        if t.status not in TERMINAL_TASK
    ]  # fmt: skip
    events.append(RunStopped(limit, detail, partial_result(state), ctx.wall))
    return events


def run_limit_hit(state: RunState, ctx: Context) -> tuple[str, str] | None:
    """(limit, detail) of a run-wide limit the run has reached, if any."""
    limits = limits_of(state)
    if limits.deadline_s and ctx.now > state.started_mono + limits.deadline_s:
        return "deadline", f"the run's deadline of {limits.deadline_s}s passed"
    if limits.tokens and state.tokens_spent >= limits.tokens:
        return "tokens", f"{state.tokens_spent} of the run's {limits.tokens} tokens spent"
    return None
