"""`effects`: what the shell must do after events are durable, derived from state and events.

Because effects are derived, a restarted orchestrator re-derives every pending one from
the replayed state (`pending_effects`); agents deduplicate re-sent assignments by
(task, attempt), so sending one twice is safe and sending none is impossible. Cancels
(`agent.control`) go for every attempt the orchestrator ends while its agent may still
hold it; they are sent once, after the events that ended the attempt are durable.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from bus.protocol import Assignment, CallForProposals, Control, Progress
from orchestrator.core import patterns, replan
from orchestrator.core.events import (
    BidReceived,
    BranchTaken,
    ClockRebased,
    HumanDecided,
    LimitReached,
    PlanAdopted,
    PlanRejected,
    ProposalsCalled,
    ReplanRequested,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunStopped,
    RunTakenOver,
    TaskAssigned,
    TaskAttemptFailed,
    TaskCancelled,
    TaskDelegated,
    TaskEscalated,
    TaskFailed,
    TaskHandedOff,
    TasksAdded,
    TaskSkipped,
    TaskSucceeded,
    TokensReserved,
    UsageCharged,
    type_of,
)
from orchestrator.core.state import RunState, TaskState


class SendAssignment(msgspec.Struct, frozen=True):
    agent_id: str
    assignment: Assignment


class SendControl(msgspec.Struct, frozen=True):
    agent_id: str
    control: Control


class PublishProgress(msgspec.Struct, frozen=True):
    progress: Progress


class PublishCallForProposals(msgspec.Struct, frozen=True):
    call: CallForProposals


Effect = SendAssignment | SendControl | PublishProgress | PublishCallForProposals


ENDED_FOR_THE_AGENT = frozenset({"timeout", "agent_lost", "undeliverable"})
"""The ways the orchestrator ends an attempt without its agent's word: the agent may
still hold it (working past `timeout_s`, silent but alive, or it took an assignment whose
ack was lost), so it is sent a cancel and drops the dead attempt from its load. An
attempt that ended with the agent's own failure report (`error`) is no longer held."""


def task_input(state: RunState, task_id: str) -> dict[str, Any]:
    """What an agent receives: the run's input, the step's params and its dependencies' outputs."""
    spec = state.graph[task_id]
    given: dict[str, Any] = {
        "input": state.input,
        "params": {**spec.params, **spec.params_extra} if spec.params_extra else spec.params,
        "index": spec.index,
        "deps": {dep: state.tasks[dep].output for dep in spec.deps},
    }
    return (
        given | extra_input(state, task_id)
        if spec.kind != "task" or spec.round > 1 or (state.tasks[task_id].context)
        else given
    )


def extra_input(state: RunState, task_id: str) -> dict[str, Any]:
    """What the patterns add: the chat transcript for a turn, everything said before a
    handoff, the loop round, the parent's own output for a subtask."""
    spec = state.graph[task_id]
    extra: dict[str, Any] = {"round": spec.round}
    task = state.tasks[task_id]
    if task.context:
        extra["context"] = list(task.context)
        refs = [ref for said in task.context for ref in said.get("memory_refs", ())]
        if refs:
            extra["memory_refs"] = refs
    if spec.kind in ("turn", "select"):
        extra["transcript"] = patterns.transcript(state, spec.parent)
        extra["turn"] = spec.round
        step = state.step(spec.step)
        if step.chat is not None:
            extra["participants"] = step.chat.participants
    if spec.kind == "plan":
        extra |= replan.planner_input(state, task_id)
    if spec.kind == "subtask":
        extra["parent"] = spec.parent
        extra["parent_output"] = state.tasks[spec.parent].output
    return extra


def _assignment(state: RunState, task: TaskState) -> SendAssignment:
    spec = state.graph[task.task_id]
    return SendAssignment(
        task.agent_id,
        Assignment(
            run_id=state.run_id,
            task_id=task.task_id,
            attempt=task.attempt,
            lease_token=task.lease_token,
            step=spec.step,
            role=state.role_of(task.task_id),
            input=task_input(state, task.task_id),
            timeout_s=spec.timeout_s,
        ),
    )


def _progress(state: RunState, event: RunEvent) -> Progress:
    kind = type_of(event)
    run_id = state.run_id
    match event:
        case TaskAssigned():
            return Progress(run_id, kind, event.task_id, event.agent_id, event.attempt)
        case TaskSucceeded():
            return Progress(
                run_id, kind, event.task_id, event.agent_id, event.attempt, event.elapsed_s
            )
        case TaskAttemptFailed():
            detail = f"{event.reason}: {event.error}"
            return Progress(run_id, kind, event.task_id, event.agent_id, event.attempt, 0.0, detail)
        case TaskFailed() | TaskCancelled():
            detail = event.error if isinstance(event, TaskFailed) else event.reason
            return Progress(run_id, kind, event.task_id, detail=detail)
        case RunCompleted() | RunFailed():
            detail = event.reason if isinstance(event, RunFailed) else ""
            elapsed = state.finished_at - state.started_at
            return Progress(run_id, kind, elapsed_s=elapsed, detail=detail)
    return pattern_progress(state, event)


def pattern_progress(state: RunState, event: RunEvent) -> Progress:
    """Progress lines for the patterns' and limits' events."""
    kind, run_id = type_of(event), state.run_id
    match event:
        case RunStopped():
            elapsed = state.finished_at - state.started_at
            return Progress(
                run_id, kind, elapsed_s=elapsed, detail=f"{event.limit}: {event.reason}"
            )
        case LimitReached():
            return Progress(run_id, kind, event.task_id, detail=f"{event.limit}: {event.detail}")
        case TaskSkipped() | BranchTaken():
            return Progress(run_id, kind, event.task_id, detail=event.reason)
        case TaskEscalated():
            return Progress(run_id, kind, event.task_id, detail=event.error)
        case TaskHandedOff():
            detail = f"{event.from_role} -> {event.to_role}"
            return Progress(run_id, kind, event.task_id, event.agent_id, event.attempt, 0.0, detail)
        case TasksAdded():
            added = ", ".join(t.task_id for t in event.tasks)
            return Progress(run_id, kind, event.parent, detail=f"{event.reason}: {added}")
        case TokensReserved() | UsageCharged():
            return Progress(
                run_id, kind, event.task_id, "", event.attempt, 0.0, f"{event.tokens} tokens"
            )
        case TaskDelegated():
            return Progress(run_id, kind, event.task_id, event.agent_id, event.attempt)
        case ProposalsCalled():
            return Progress(run_id, kind, event.task_id, attempt=event.attempt)
        case BidReceived():
            detail = f"cost {event.cost:g}, time {event.time_s:g}s, confidence {event.confidence:g}"
            return Progress(run_id, kind, event.task_id, event.agent_id, event.attempt, 0.0, detail)
        case ReplanRequested() | PlanRejected():
            detail = event.error if isinstance(event, ReplanRequested) else event.reason
            return Progress(run_id, kind, event.task_id, detail=detail)
        case PlanAdopted():
            detail = "new steps: " + ", ".join(s.id for s in event.steps)
            return Progress(run_id, kind, event.task_id, detail=detail)
        case HumanDecided():
            return Progress(
                run_id, kind, event.task_id, detail=f"{event.decision} by {event.actor}"
            )
        case RunTakenOver():
            detail = f"taken over by {event.owner} (partition {event.partition})"
            return Progress(run_id, kind, detail=detail)
        case ClockRebased():
            detail = f"taken over on boot {event.boot}: run clock {event.clock_shift:+.3f}s off"
            return Progress(run_id, kind, detail=detail)
    return Progress(run_id, kind)


def effects(state: RunState, events: Sequence[RunEvent]) -> list[Effect]:
    """What to do now that `events` are durable and folded into `state`."""
    out: list[Effect] = []
    for event in events:
        if isinstance(event, TaskAssigned):
            task = state.tasks[event.task_id]
            if task.status == "running" and task.attempt == event.attempt:
                out.append(_assignment(state, task))
        elif isinstance(event, ProposalsCalled):
            spec = state.graph[event.task_id]
            call = CallForProposals(
                state.run_id, event.task_id, event.attempt, spec.step,
                state.role_of(event.task_id), task_input(state, event.task_id), spec.bid_window_s,
            )  # fmt: skip
            out.append(PublishCallForProposals(call))
        elif isinstance(event, TaskCancelled) and event.agent_id:
            task = state.tasks[event.task_id]
            control = Control("cancel", state.run_id, event.task_id, task.attempt)
            out.append(SendControl(event.agent_id, control))
        elif isinstance(event, TaskAttemptFailed) and event.reason in ENDED_FOR_THE_AGENT:
            control = Control("cancel", state.run_id, event.task_id, event.attempt)
            out.append(SendControl(event.agent_id, control))
        out.append(PublishProgress(_progress(state, event)))
    return out


def pending_effects(state: RunState, agent_id: str = "") -> list[SendAssignment]:
    """After a restart: re-send every assignment still running (given `agent_id`, those
    of that agent only); nothing else is owed."""
    if state.terminal:
        return []
    return [
        _assignment(state, t)
        for t in state.tasks.values()
        if t.status == "running" and (not agent_id or t.agent_id == agent_id)
    ]
