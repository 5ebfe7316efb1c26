"""`decide`: given a run's state, a command and the context, what happens next.

Pure and synchronous: no I/O, no clock, no randomness but what the context hands in.
Every decision, including which agent gets a task and why, is returned as events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from bus.protocol import TaskFailure, TaskResult
from orchestrator.core import contract_net, limits, patterns, replan, report_check
from orchestrator.core.commands import (
    CancelRun,
    Command,
    Context,
    DeliveryFailed,
    HumanDecision,
    ReportFailure,
    ReportResult,
    Resume,
    StartRun,
    SubmitBid,
    Tick,
)
from orchestrator.core.events import (
    AttemptEnd,
    ClockRebased,
    LimitReached,
    ReplanRequested,
    ResultRejected,
    RunCompleted,
    RunEvent,
    RunFailed,
    RunStarted,
    RunTakenOver,
    TaskAssigned,
    TaskAttemptFailed,
    TaskCancelled,
    TaskDelegated,
    TaskEscalated,
    TaskFailed,
    TaskHandedOff,
    TaskSucceeded,
    TokensReserved,
    UsageCharged,
)
from orchestrator.core.human import cancel, human_decision
from orchestrator.core.state import TERMINAL_TASK, Folding, RunState, TaskState, fold

BACKOFF_BASE_S = 0.25
BACKOFF_CAP_S = 5.0

_RELEASING = (TaskSucceeded, TaskAttemptFailed, TaskDelegated, TaskHandedOff, TaskCancelled)


def load_delta(events: Sequence[RunEvent], into: dict[str, int] | None = None) -> dict[str, int]:
    """How `events` change each agent's number of running attempts, added into `into`
    (a new dict if None), which is returned."""
    delta: dict[str, int] = {} if into is None else into
    for event in events:
        if isinstance(event, TaskAssigned):
            delta[event.agent_id] = delta.get(event.agent_id, 0) + 1
        elif isinstance(event, _RELEASING) and event.agent_id:
            delta[event.agent_id] = delta.get(event.agent_id, 0) - 1
    return delta


def _attempt_failed(
    state: RunState, task: TaskState, reason: AttemptEnd, error: str, retryable: bool, ctx: Context
) -> list[RunEvent]:
    spec = state.graph[task.task_id]
    if retryable and task.attempt - task.attempt_base < spec.max_attempts:
        backoff = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (task.attempt - 1))
        retry_at = ctx.now + backoff * (0.5 + ctx.random())
        return [
            TaskAttemptFailed(
                task.task_id, task.attempt, task.agent_id, reason, error, retry_at, ctx.wall
            )
        ]
    why = error if not retryable else f"{error} (after {task.attempt} attempts)"
    ended = TaskAttemptFailed(
        task.task_id, task.attempt, task.agent_id, reason, error, None, ctx.wall
    )
    policy = state.step(spec.step).on_exhausted if not spec.parent else "fail"
    if policy == "escalate":
        return [ended, TaskEscalated(task.task_id, why, ctx.wall)]
    if policy == "replan":
        return [ended, *replan.request(state, task, why, ctx)]
    return [ended, TaskFailed(task.task_id, why, ctx.wall)]


def _on_report(
    state: RunState,
    report: TaskResult | TaskFailure,
    sender: str,
    ctx: Context,
    memory_refs: tuple[str, ...] = (),
) -> list[RunEvent]:
    code, reason = report_check.refusal(state, report, sender)
    if code == report_check.DUPLICATE:
        return []
    if code:
        return [
            ResultRejected(
                report.task_id, report.attempt, report.agent_id, sender, reason, ctx.wall
            )
        ]
    task = state.tasks[report.task_id]
    if isinstance(report, TaskResult):
        return _on_result(state, task, report, ctx, memory_refs)
    if report.escalate and not state.graph[task.task_id].parent:  # a subtask fails instead
        return [
            TaskAttemptFailed(
                task.task_id, task.attempt, task.agent_id, "error", report.error, None, ctx.wall
            ),
            TaskEscalated(task.task_id, report.error, ctx.wall),
        ]
    retryable = report.retryable and not report.escalate
    return _attempt_failed(state, task, "error", report.error, retryable, ctx)


def _on_result(
    state: RunState,
    task: TaskState,
    report: TaskResult,
    ctx: Context,
    memory_refs: tuple[str, ...] = (),
) -> list[RunEvent]:
    """A valid result: charge its usage, then grant what it asks (subtasks, a handoff, the
    next loop round) or record it as the task's output."""
    events: list[RunEvent] = []
    usage = report.usage
    spent = usage.tokens if usage is not None else 0
    if usage is not None and spent:
        events.append(
            UsageCharged(
                task.task_id, task.attempt, spent, ctx.wall, usage.input_tokens, usage.output_tokens
            )
        )
        state = fold(state, events)
    budget = limits.task_budget(state, task.task_id) if spent else 0
    if budget and spent > budget:
        detail = f"{task.task_id} used {spent} tokens, its budget is {budget}"
        events.append(LimitReached("task_tokens", detail, task.task_id, ctx.wall))
        return events + _attempt_failed(state, task, "error", detail, False, ctx)
    refused = patterns.refusal(state, task, report)
    if refused:
        error = f"refused: {refused}"
        return events + _attempt_failed(state, task, "error", error, True, ctx)
    if report.subtasks:
        return events + patterns.delegate(state, task, report, ctx)
    if report.handoff_to:
        handed = patterns.hand_off(state, task, report, ctx, memory_refs)
        if isinstance(handed[0], TaskHandedOff):
            return events + handed
        detail = handed[0].detail if isinstance(handed[0], LimitReached) else ""
        return events + handed + _attempt_failed(state, task, "error", detail, False, ctx)
    succeeded = TaskSucceeded(
        task.task_id, task.attempt, task.agent_id, report.output, report.elapsed_s, ctx.wall
    )
    spec = state.graph[task.task_id]
    step = state.step(spec.step) if spec.looped else None
    loop = step.loop if step is not None else None
    if step is None or loop is None or report.output.get(loop.until) == loop.equals:
        return [*events, succeeded]
    if spec.round < loop.max_rounds:
        return [*events, patterns.next_round(state, task, step, ctx), succeeded]
    detail = f"{step.id} not done after {loop.max_rounds} rounds ({loop.until} != {loop.equals!r})"
    events.append(LimitReached("max_loop_iterations", detail, task.task_id, ctx.wall))
    return events + _attempt_failed(state, task, "error", detail, False, ctx)


def _expire_leases(state: RunState, ctx: Context) -> list[RunEvent]:
    live = {a.agent_id for a in ctx.agents}
    events: list[RunEvent] = []
    seen = state  # the run's counters as this decision changes them (replans)
    for task in state.tasks.values():
        if task.status != "running":
            continue
        ended: list[RunEvent] = []
        if task.agent_id not in live:
            error = f"agent {task.agent_id} stopped sending heartbeats"
            ended = _attempt_failed(seen, task, "agent_lost", error, True, ctx)
        elif ctx.now > task.assigned_mono + state.graph[task.task_id].timeout_s:
            error = f"no result within {state.graph[task.task_id].timeout_s}s"
            ended = _attempt_failed(seen, task, "timeout", error, True, ctx)
        if any(isinstance(e, ReplanRequested) for e in ended):
            seen = fold(seen, ended)
        events += ended
    return events


def _dispatch(state: RunState, ctx: Context, earlier: Sequence[RunEvent]) -> list[RunEvent]:
    loads = load_delta(earlier, {a.agent_id: a.load for a in ctx.agents})
    events: list[RunEvent] = []
    bounded = limits.limits_of(state)
    steps = state.steps if bounded.max_steps else 0
    reserved = 0
    for role, ready in state.ready.items():
        agents = [a for a in ctx.agents if a.role == role]
        for task_id in ready:
            task = state.tasks[task_id]
            if task.not_before > ctx.now:
                continue
            if bounded.max_steps and steps >= bounded.max_steps:
                detail = f"{steps} steps dispatched, the run allows {bounded.max_steps}"
                return limits.stop(state, "max_steps", detail, ctx)  # nothing more goes out
            tokens = limits.task_budget(state, task_id) if bounded.tokens else 0
            if tokens and not limits.can_reserve(state, tokens, reserved):
                if state.tokens_reserved + reserved == 0:
                    detail = (
                        f"{task_id} needs {tokens} tokens; {state.tokens_spent} of "
                        f"{bounded.tokens} spent"
                    )
                    return limits.stop(state, "tokens", detail, ctx)
                continue  # wait until a running attempt gives its reservation back
            window = state.graph[task_id].bid_window_s
            if window and not task.cfp_until:
                events.append(contract_net.tender(task, window, ctx))
                continue
            if window and ctx.now < task.cfp_until:
                continue  # bids are still coming in
            free = [a for a in agents if loads[a.agent_id] < a.capacity]
            if not free:
                break
            fresh = [a for a in free if a.agent_id not in task.excluded]
            won = contract_net.award(task, fresh or free, loads) if window else None
            if won is not None:
                best, reason = won
            else:
                best = min(fresh or free, key=lambda a: (loads[a.agent_id], a.agent_id))
                reason = (
                    f"role {role}: least loaded of {len(free)} free live agent(s), "
                    f"load {loads[best.agent_id]}/{best.capacity}"
                )
                if window:
                    reason = f"contract net: no usable bid; {reason}"
            if task.excluded:
                reason += (
                    f"; avoided {', '.join(sorted(set(task.excluded)))}"
                    if fresh
                    else ("; no other agent free, reusing one that failed it")
                )
            loads[best.agent_id] += 1
            steps += 1
            if tokens:
                reserved += tokens
                events.append(TokensReserved(task_id, task.attempt + 1, tokens, ctx.wall))
            events.append(
                TaskAssigned(
                    task_id,
                    task.attempt + 1,
                    best.agent_id,
                    ctx.new_token(),
                    reason,
                    ctx.wall,
                    ctx.now,
                )
            )
    return events


def on_run_clock(state: RunState, ctx: Context) -> Context:
    """`ctx` with `now` read on the run's own clock (see `ClockRebased`): every time the
    run holds is on it."""
    if not state.clock_shift:
        return ctx
    return dataclasses.replace(ctx, now=ctx.now - state.clock_shift)


def _rebased(state: RunState, ctx: Context, host_now: float) -> ClockRebased:
    """The shift that makes the run's clock go on in step with the wall clock on this
    boot: a reading `m` of the run's clock happened at wall time `m + (started_at -
    started_mono)`, whatever boot read it. The downtime counts (a deadline or a backoff
    may have passed meanwhile)."""
    run_now = ctx.wall - (state.started_at - state.started_mono)
    return ClockRebased(ctx.boot, host_now - run_now, ctx.wall)


def _fail_run(state: RunState, culprit: str, ctx: Context) -> list[RunEvent]:
    task = state.tasks[culprit]
    cancels: list[RunEvent] = [
        TaskCancelled(
            t.task_id,
            f"run failed: task {culprit} {task.status}",
            t.agent_id if t.status == "running" else "",
            ctx.wall,
        )
        for t in state.tasks.values()
        if t.status not in TERMINAL_TASK
    ]
    verb = "failed" if task.status == "failed" else task.status
    return [*cancels, RunFailed(f"task {culprit} {verb}: {task.error}", ctx.wall)]


def _unblock(state: RunState, ctx: Context) -> list[RunEvent]:
    """Tasks whose join can no longer be met: the run fails if a failure caused it, else
    they are skipped (every way in was skipped)."""
    for task_id in state.blocked:
        deps = state.graph[task_id].deps
        culprit = next((d for d in deps if state.tasks[d].status in ("failed", "cancelled")), "")
        if culprit:
            return _fail_run(state, culprit, ctx)
        return patterns.skip_blocked(state, task_id, ctx)
    return []


def _grow(state: RunState, ctx: Context) -> list[RunEvent]:
    """The next decision the patterns owe: a blocked join, a gated task, a parent whose
    added tasks have ended. [] when nothing is owed."""
    events = _unblock(state, ctx)
    if events:
        return events
    for task_id in state.gated:
        return patterns.gate(state, task_id, ctx)
    for parent in state.children:
        events = patterns.settle_parent(state, parent, ctx)
        if events:
            return events
    return []


def _ending(state: RunState, ctx: Context, decided: Sequence[RunEvent]) -> list[RunEvent]:
    """The run's end, if it has come: a failure nothing can absorb, every task ended, or a
    run-wide limit. A failure is judged when it happens (`decided` holds this decision's
    events): a failed or cancelled task nothing depends on and no parent answers for."""
    for e in decided:
        if (
            isinstance(e, TaskFailed | TaskCancelled)
            and not state.graph[e.task_id].parent
            and not state.dependents[e.task_id]
        ):
            return _fail_run(state, e.task_id, ctx)
    if (
        not state.gated
        and not any(state.ready.values())
        # newest tasks last: from the end an unfinished one is found at once
        and all(t.status in TERMINAL_TASK for t in reversed(state.tasks.values()))
    ):
        sinks = [t for t, deps in state.dependents.items() if not deps]
        result = {
            t: state.tasks[t].output
            for t in sinks
            if not state.graph[t].parent and state.tasks[t].status == "succeeded"
        }
        return [RunCompleted(result, ctx.wall)]
    hit = limits.run_limit_hit(state, ctx)
    if hit is not None:
        return limits.stop(state, hit[0], hit[1], ctx)
    return []


def _settle(state: RunState, ctx: Context, earlier: Sequence[RunEvent]) -> list[RunEvent]:
    """End the run if it is over, else grow the graph as owed and hand out what is ready."""
    out: list[RunEvent] = []
    while state.status == "running":
        grown = _grow(state, ctx)
        if not grown:
            break
        out += grown
        state = fold(state, grown)
    if state.status != "running":
        return out
    ending = _ending(state, ctx, [*earlier, *out])
    if ending:
        return out + ending
    return out + _dispatch(state, ctx, [*earlier, *out])


def decide(state: RunState, command: Command, ctx: Context) -> list[RunEvent]:
    """The events that `command` causes in `state`; [] when it changes nothing."""
    return decide_and_fold(state, command, ctx)[0]


def decide_and_fold(
    state: RunState, command: Command, ctx: Context
) -> tuple[list[RunEvent], RunState]:
    """`decide`, with the state after its events (`fold(state, events)`), folded once."""
    folding = Folding(state)
    return decide_into(folding, command, ctx), folding.state


def decide_into(folding: Folding, command: Command, ctx: Context) -> list[RunEvent]:
    """`decide` on `folding.state`, folding the events into it: how the shell decides a
    batch of commands with one copy of the run (see `Folding`)."""
    state = folding.state
    host_now = ctx.now
    ctx = on_run_clock(state, ctx)
    events: list[RunEvent]
    match command:
        case StartRun():
            if state.status != "new":
                return []
            events = [
                RunStarted(
                    command.run_id,
                    command.workflow,
                    command.input,
                    command.trace_id,
                    command.requested_by,
                    ctx.wall,
                    ctx.now,
                    ctx.boot,
                )
            ]
        case ReportResult():
            events = _on_report(state, command.result, command.sender, ctx, command.memory_refs)
        case ReportFailure():
            events = _on_report(state, command.failure, command.sender, ctx)
        case DeliveryFailed():
            task = state.tasks.get(command.task_id)
            if state.terminal or task is None or task.status != "running":
                return []
            if task.attempt != command.attempt:
                return []
            events = _attempt_failed(state, task, "undeliverable", command.error, True, ctx)
        case Tick():
            if state.status != "running":
                return []
            events = _expire_leases(state, ctx) if command.check_leases else []
        case Resume():
            if state.status != "running":
                return []
            events = []
            if command.owner and command.owner != state.owner:
                owner, partition, lease = command.owner, command.partition, command.lease
                events.append(RunTakenOver(owner, partition, lease, ctx.wall))
            if state.boot and ctx.boot and state.boot != ctx.boot:
                rebased = _rebased(state, ctx, host_now)
                ctx = dataclasses.replace(ctx, now=host_now - rebased.clock_shift)
                events.append(rebased)
            if not events:
                return []  # its owner already, on the same clock (or one not told apart)
        case HumanDecision():
            events = human_decision(state, command, ctx)
        case CancelRun():
            events = cancel(state, command, ctx)
        case SubmitBid():
            events = contract_net.on_bid(state, command, ctx)
            folding.fold(events)
            return events  # nothing to settle before the award
    if not isinstance(command, Tick) and all(isinstance(e, ResultRejected) for e in events):
        folding.fold(events)
        return events  # nothing changed, so there is nothing to settle
    return events + folding.fold_then(events, lambda folded: _settle(folded, ctx, events))
