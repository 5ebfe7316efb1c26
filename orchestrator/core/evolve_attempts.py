"""The evolve rules of a task's attempts: assigned, charged, ended (a result, a failure
that may be retried, a final failure, a cancellation or skip), handed off to another
role, escalated to a person and decided by one, and put out to tender (contract net).
"""

from __future__ import annotations

from msgspec.structs import replace

from orchestrator.core.draft import Draft, Rule, rule
from orchestrator.core.events import (
    BidReceived,
    HumanDecided,
    ProposalsCalled,
    TaskAssigned,
    TaskAttemptFailed,
    TaskCancelled,
    TaskEscalated,
    TaskFailed,
    TaskHandedOff,
    TaskSkipped,
    TaskSucceeded,
    TokensReserved,
    UsageCharged,
)
from orchestrator.core.workflow import Retry, StepSpec


def assigned(d: Draft, e: TaskAssigned) -> None:
    task = d.tasks[e.task_id]
    d.tasks[e.task_id] = replace(
        task,
        status="running",
        attempt=e.attempt,
        agent_id=e.agent_id,
        lease_token=e.lease_token,
        assigned_mono=e.mono,
        started_at=task.started_at or e.at,
        assigned_event=d.version,
        ended_by="",
    )
    d.unready(e.task_id)


def succeeded(d: Draft, e: TaskSucceeded) -> None:
    d.tasks[e.task_id] = replace(
        d.tasks[e.task_id],
        status="succeeded",
        output=e.output,
        finished_at=e.at,
        elapsed_s=e.elapsed_s,
        ended_by="result" if e.attempt else "",
    )
    d.release(e.task_id, 0)
    for dependent in d.dependents[e.task_id]:
        if dependent not in d.waiting or d.tasks[dependent].status != "pending":
            continue  # a join already met (any, quorum), or a task that already ended
        d.waiting[dependent] -= 1
        if d.waiting[dependent] == 0:
            del d.waiting[dependent]
            d.make_ready(dependent)


def _retry_policy(d: Draft, task_id: str) -> Retry | None:
    workflow = d.get("workflow")
    spec = d.graph[task_id]
    if workflow is None or spec.parent:
        return None
    step: StepSpec = next(s for s in workflow.steps if s.id == spec.step)
    return step.retry


def attempt_failed(d: Draft, e: TaskAttemptFailed) -> None:
    # an attempt that ended without reporting usage is charged its reservation
    d.release(e.task_id, d.tasks[e.task_id].reserved)
    task = d.tasks[e.task_id]
    role = task.role
    if e.retry_at is not None:
        retry = _retry_policy(d, e.task_id)
        role = retry.role if retry is not None and retry.role else role
    d.tasks[e.task_id] = replace(
        task,
        status="pending",
        error=e.error,
        excluded=(*task.excluded, e.agent_id),
        not_before=e.retry_at or 0.0,
        ended_by=e.reason,
        role=role,
        cfp_until=0.0,
        bids=(),
    )
    if e.retry_at is not None:  # else a TaskFailed follows in this decision
        d.make_ready(e.task_id)


def failed(d: Draft, e: TaskFailed) -> None:
    d.end(e.task_id, "failed", e.error, e.at)


def cancelled(d: Draft, e: TaskCancelled) -> None:
    d.end(e.task_id, "cancelled", e.reason, e.at)


def skipped(d: Draft, e: TaskSkipped) -> None:
    d.end(e.task_id, "skipped", e.reason, e.at)


def tokens_reserved(d: Draft, e: TokensReserved) -> None:
    task = d.tasks[e.task_id]
    d.tasks[e.task_id] = replace(task, reserved=task.reserved + e.tokens)
    d.bump("tokens_reserved", e.tokens)


def usage_charged(d: Draft, e: UsageCharged) -> None:
    d.release(e.task_id, e.tokens)


def handed_off(d: Draft, e: TaskHandedOff) -> None:
    d.release(e.task_id, 0)
    task = d.tasks[e.task_id]
    said = {"role": e.from_role, "agent_id": e.agent_id, "output": e.output}
    if e.memory_refs:
        said["memory_refs"] = list(e.memory_refs)
    d.tasks[e.task_id] = replace(
        task,
        status="pending",
        role=e.to_role,
        attempt_base=e.attempt,
        context=(*task.context, said),
        excluded=(),
        not_before=0.0,
        ended_by="handoff",
        cfp_until=0.0,
        bids=(),
    )
    d.bump("handoffs", 1)
    d.make_ready(e.task_id)


def escalated(d: Draft, e: TaskEscalated) -> None:
    task = d.tasks[e.task_id]
    d.tasks[e.task_id] = replace(task, status="escalated", error=e.error)
    d.unready(e.task_id)


def human_decided(d: Draft, e: HumanDecided) -> None:
    if e.decision == "retry":
        task = d.tasks[e.task_id]
        d.tasks[e.task_id] = replace(
            task,
            status="pending",
            attempt_base=task.attempt,
            not_before=0.0,
            cfp_until=0.0,
            bids=(),
        )
        d.make_ready(e.task_id)


def proposals_called(d: Draft, e: ProposalsCalled) -> None:
    task = d.tasks[e.task_id]
    d.tasks[e.task_id] = replace(task, cfp_until=e.until, bids=())


def bid_received(d: Draft, e: BidReceived) -> None:
    task = d.tasks[e.task_id]
    d.tasks[e.task_id] = replace(task, bids=(*task.bids, e))


RULES: dict[type, Rule] = dict(
    [
        rule(TaskAssigned, assigned),
        rule(TaskSucceeded, succeeded),
        rule(TaskAttemptFailed, attempt_failed),
        rule(TaskFailed, failed),
        rule(TaskCancelled, cancelled),
        rule(TaskSkipped, skipped),
        rule(TokensReserved, tokens_reserved),
        rule(UsageCharged, usage_charged),
        rule(TaskHandedOff, handed_off),
        rule(TaskEscalated, escalated),
        rule(HumanDecided, human_decided),
        rule(ProposalsCalled, proposals_called),
        rule(BidReceived, bid_received),
    ]
)
