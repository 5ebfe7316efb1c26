"""Whether an agent's report may change its run: the fencing check, and the verdict the
agent is answered with.

Pure: the same state and report give the same verdict, so the shell can tell an agent
exactly what the decision made of its report (accepted, a duplicate, or refused and why).
"""

from __future__ import annotations

from bus.protocol import ReportVerdict, TaskFailure, TaskResult
from orchestrator.core.commands import Command, ReportFailure, ReportResult
from orchestrator.core.state import RunState

DUPLICATE = "duplicate"
"""The code of a re-delivery of the very report that already ended its attempt."""

ACCEPTED = ReportVerdict()
DUPLICATE_VERDICT = ReportVerdict(True, DUPLICATE, "duplicate: already recorded")


def refusal(state: RunState, report: TaskResult | TaskFailure, sender: str) -> tuple[str, str]:
    """(code, reason) of why a report must not change state: ('', '') if it may, code
    `DUPLICATE` for a re-delivery of the very report that already ended its attempt. The
    codes are `bus.protocol.REPORT_CODES`."""
    task_id, attempt, lease, agent_id = (
        report.task_id, report.attempt, report.lease_token, report.agent_id
    )  # fmt: skip
    if sender != agent_id:
        return "forged", f"sent by {sender} but claims to be from {agent_id}"
    task = state.tasks.get(task_id)
    if task is None:
        return "unknown_task", f"no task {task_id!r} in this run"
    if attempt == task.attempt and lease == task.lease_token and task.ended_by:
        same_kind = "result" if isinstance(report, TaskResult) else "error"
        if task.ended_by == same_kind:
            return DUPLICATE, DUPLICATE_VERDICT.reason
        return "attempt_ended", f"attempt {attempt} already ended ({task.ended_by})"
    if state.terminal:
        return "run_ended", f"run is already {state.status}"
    if attempt != task.attempt:
        return "stale_attempt", f"stale attempt {attempt}; the current attempt is {task.attempt}"
    if task.status != "running":
        return "not_running", f"task is {task.status}"
    if lease != task.lease_token:
        return "lease_mismatch", "lease token does not match the attempt's"
    if agent_id != task.agent_id:
        return "not_holder", f"{agent_id} does not hold attempt {attempt}"
    return "", ""


def verdict(state: RunState, command: Command) -> ReportVerdict:
    """What deciding `command` on `state` makes of its report (accepted for any command
    that is not a report). Read the state before the decision folds into it."""
    if isinstance(command, ReportResult):
        code, reason = refusal(state, command.result, command.sender)
    elif isinstance(command, ReportFailure):
        code, reason = refusal(state, command.failure, command.sender)
    else:
        return ACCEPTED
    if not code:
        return ACCEPTED
    if code == DUPLICATE:
        return DUPLICATE_VERDICT
    return ReportVerdict(False, code, reason)
