"""Decisions for the coordination patterns beyond a plain graph, all as task-graph growth:
conditional branches, bounded loops, group chats, subtasks and handoffs.

Pure like `decide`: each function reads the state and returns the events that record
what it decided (`TasksAdded`, `BranchTaken`, `TaskSkipped`, `TaskHandedOff`...), so a
replay folds the recorded graph and never recomputes it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bus.protocol import TaskResult
from orchestrator.core import replan
from orchestrator.core.commands import Context
from orchestrator.core.events import (
    BranchTaken,
    LimitReached,
    RunEvent,
    TaskDelegated,
    TaskFailed,
    TaskHandedOff,
    TasksAdded,
    TaskSkipped,
    TaskSucceeded,
)
from orchestrator.core.limits import can_reserve, limits_of, task_budget
from orchestrator.core.state import TERMINAL_TASK, RunState, TaskState
from orchestrator.core.workflow import (
    Chat,
    Condition,
    StepSpec,
    TaskSpec,
    is_conditional,
    known_roles,
    loop_body,
    need_of,
    task_ids,
)

# -- conditions --------------------------------------------------------------------------


def latest_output(state: RunState, step: str) -> dict[str, Any] | None:
    """The output of the latest succeeded task of `step` (its last loop round)."""
    found: dict[str, Any] | None = None
    for task_id, spec in state.graph.items():
        if spec.step == step and not spec.parent:
            task = state.tasks[task_id]
            if task.status == "succeeded" and task.output is not None:
                found = task.output
    return found


def holds(state: RunState, cond: Condition) -> bool:
    output = latest_output(state, cond.step)
    return output is not None and cond.key in output and output[cond.key] == cond.equals


def gate(state: RunState, task_id: str, ctx: Context) -> list[RunEvent]:
    """A task whose deps are met but that needs a decision: start a chat, or take or
    skip a conditional branch."""
    spec = state.graph[task_id]
    step = state.step(spec.step)
    if step.chat is not None:
        return start_turn(state, task_id, step.chat, 1, ctx)
    if step.when is not None and not holds(state, step.when):
        c = step.when
        return [TaskSkipped(task_id, f"when: {c.step}.{c.key} != {c.equals!r}", ctx.wall)]
    if step.unless is not None and holds(state, step.unless):
        c = step.unless
        return [TaskSkipped(task_id, f"unless: {c.step}.{c.key} == {c.equals!r}", ctx.wall)]
    return [BranchTaken(task_id, "condition held", ctx.wall)]


def skip_blocked(state: RunState, task_id: str, ctx: Context) -> list[RunEvent]:
    """A task whose join can no longer be met because upstream tasks were skipped."""
    return [TaskSkipped(task_id, "its join can no longer be met: upstream skipped", ctx.wall)]


# -- loops -------------------------------------------------------------------------------


def _round_id(step: str, round_: int) -> str:
    return step if round_ == 1 else f"{step}@{round_}"


def next_round(state: RunState, task: TaskState, step: StepSpec, ctx: Context) -> TasksAdded:
    """Copies of the loop's steps for the next round; whatever waited for this round's
    loop step now waits for the next round's."""
    assert state.workflow is not None
    assert step.loop is not None
    spec = state.graph[task.task_id]
    r = spec.round + 1
    body = loop_body(state.workflow, step)
    by_id = {s.id: s for s in state.workflow.steps}
    tasks: list[TaskSpec] = []
    for member in body:
        s = by_id[member]
        deps = [_round_id(d, r) if d in body else t for d in s.needs for t in task_ids(by_id[d])]
        if member == step.loop.back_to:
            deps.append(task.task_id)
        tasks.append(
            TaskSpec(
                _round_id(member, r), member, 0, s.role, tuple(deps), s.params, s.timeout_s,
                s.max_attempts, need_of(s), "task", "", r,
                bid_window_s=s.bid_window_s if s.routing == "contract_net" else 0.0,
                conditional=is_conditional(s),
                looped=s.loop is not None,
            )
        )  # fmt: skip
    return TasksAdded(
        task.task_id, f"loop round {r}", tasks, {task.task_id: _round_id(step.id, r)}, ctx.wall
    )


# -- group chat --------------------------------------------------------------------------


def transcript(state: RunState, chat: str) -> list[dict[str, Any]]:
    """Every turn said so far in `chat`, in order."""
    said: list[dict[str, Any]] = []
    for child in state.children.get(chat, ()):
        spec, task = state.graph[child], state.tasks[child]
        if spec.kind == "turn" and task.status == "succeeded":
            said.append(
                {"turn": spec.round, "role": spec.role, "agent_id": task.agent_id,
                 "output": task.output}
            )  # fmt: skip
    return sorted(said, key=lambda t: int(t["turn"]))


def _speaker(chat: Chat, turn: int, said: list[dict[str, Any]]) -> str:
    n = len(chat.participants)
    if chat.selector == "rule" and said:
        follow = chat.rules.get(str(said[-1]["role"]))
        if follow:
            return follow
    return chat.participants[(turn - 1) % n]


def start_turn(
    state: RunState, chat_id: str, chat: Chat, turn: int, ctx: Context
) -> list[RunEvent]:
    """Add turn `turn` of the chat (after asking the selector agent, for `agent`)."""
    spec = state.graph[chat_id]
    step = state.step(spec.step)
    if chat.selector == "agent":
        role, kind, task_id = chat.selector_role, "select", f"{chat_id}#{turn}-select"
    else:
        role, kind = _speaker(chat, turn, transcript(state, chat_id)), "turn"
        task_id = f"{chat_id}#{turn}"
    added = TaskSpec(
        task_id, spec.step, turn, role, (), step.params, step.timeout_s, step.max_attempts,
        -1, kind, chat_id, turn,  # type: ignore[arg-type]
    )  # fmt: skip
    return [TasksAdded(chat_id, f"chat turn {turn}", [added], {}, ctx.wall)]


def _end_chat(state: RunState, chat_id: str, turns: int, why: str, ctx: Context) -> TaskSucceeded:
    output = {"transcript": transcript(state, chat_id), "turns": turns, "ended_by": why}
    chat = state.tasks[chat_id]
    return TaskSucceeded(chat_id, 0, "", output, ctx.wall - chat.started_at, ctx.wall)


def settle_chat(state: RunState, chat_id: str, ctx: Context) -> list[RunEvent]:
    """After a chat's last task ended: the next turn, or the end of the chat."""
    step = state.step(state.graph[chat_id].step)
    assert step.chat is not None
    chat = step.chat
    last_id = state.children[chat_id][-1]
    last, spec = state.tasks[last_id], state.graph[last_id]
    if last.status != "succeeded":
        return [TaskFailed(chat_id, f"{last_id} {last.status}: {last.error}", ctx.wall)]
    output = last.output or {}
    if spec.kind == "select":
        chosen = output.get("next")
        role = chosen if chosen in chat.participants else _speaker(chat, spec.round, [])
        why = "chosen by the selector" if chosen == role else f"selector said {chosen!r}"
        turn = TaskSpec(
            f"{chat_id}#{spec.round}", spec.step, spec.round, role, (), spec.params,
            spec.timeout_s, spec.max_attempts, -1, "turn", chat_id, spec.round,
        )  # fmt: skip
        return [TasksAdded(chat_id, f"chat turn {spec.round}: {role} {why}", [turn], {}, ctx.wall)]
    turns = spec.round
    if chat.until and output.get(chat.until) == chat.equals:
        return [_end_chat(state, chat_id, turns, "condition", ctx)]
    if turns >= chat.max_turns:
        return [_end_chat(state, chat_id, turns, "max_turns", ctx)]
    budget = task_budget(state, chat_id) or step.tokens or limits_of(state).task_tokens
    if not can_reserve(state, budget):
        detail = f"no budget for turn {turns + 1} of chat {chat_id}"
        return [
            LimitReached("tokens", detail, chat_id, ctx.wall),
            _end_chat(state, chat_id, turns, "budget", ctx),
        ]
    return start_turn(state, chat_id, chat, turns + 1, ctx)


# -- subtasks ----------------------------------------------------------------------------


def settle_delegated(state: RunState, parent_id: str, ctx: Context) -> list[RunEvent]:
    """After every subtask of a delegating task ended: it succeeds with their outputs."""
    parent = state.tasks[parent_id]
    children = state.children[parent_id]
    bad = [c for c in children if state.tasks[c].status != "succeeded"]
    if bad:
        child = state.tasks[bad[0]]
        return [TaskFailed(parent_id, f"subtask {bad[0]} {child.status}: {child.error}", ctx.wall)]
    output = {**(parent.output or {}), "subtasks": {c: state.tasks[c].output for c in children}}
    # agent '' : the agent was freed when it delegated, so no load comes back now
    return [TaskSucceeded(parent_id, parent.attempt, "", output, 0.0, ctx.wall)]


def settle_parent(state: RunState, parent_id: str, ctx: Context) -> list[RunEvent]:
    """An active chat or delegating task whose added tasks have all ended."""
    parent = state.tasks[parent_id]
    children = state.children.get(parent_id, ())
    if parent.status != "active" or not children:
        return []
    if any(state.tasks[c].status not in TERMINAL_TASK for c in children):
        return []
    if state.graph[parent_id].kind == "chat":
        return settle_chat(state, parent_id, ctx)
    if state.graph[children[-1]].kind == "plan":
        return replan.settle(state, parent_id, ctx)
    return settle_delegated(state, parent_id, ctx)


def _subtask_refusal(state: RunState, task: TaskState, report: TaskResult) -> str:
    spec = state.graph[task.task_id]
    step = state.step(spec.step)
    limits = limits_of(state)
    depth = spec.round if spec.kind == "subtask" else 0
    if spec.kind not in ("task", "subtask"):
        return f"a {spec.kind} task may not ask for subtasks"
    if len(report.subtasks) > step.max_subtasks:
        return f"{len(report.subtasks)} subtasks asked, step {step.id} allows {step.max_subtasks}"
    if depth + 1 > limits.max_subtask_depth:
        return f"subtasks at depth {depth + 1}, the run allows {limits.max_subtask_depth}"
    assert state.workflow is not None
    known = known_roles(state.workflow)
    for req in report.subtasks:
        if req.role not in known:
            return f"unknown subtask role {req.role!r}: not one of {sorted(known)}"
    return ""


def delegate(state: RunState, task: TaskState, report: TaskResult, ctx: Context) -> list[RunEvent]:
    """The attempt asked for subtasks: spawn them within bounds, or say why not ('')."""
    spec = state.graph[task.task_id]
    depth = (spec.round if spec.kind == "subtask" else 0) + 1
    children = [
        TaskSpec(
            f"{task.task_id}/{i}", spec.step, i, req.role, (), spec.params, spec.timeout_s,
            spec.max_attempts, -1, "subtask", task.task_id, depth, req.params,
        )
        for i, req in enumerate(report.subtasks)
    ]  # fmt: skip
    return [
        TaskDelegated(task.task_id, task.attempt, task.agent_id, report.output, ctx.wall),
        TasksAdded(task.task_id, f"{len(children)} subtasks", children, {}, ctx.wall),
    ]


# -- handoff -----------------------------------------------------------------------------


def _handoff_refusal(state: RunState, task: TaskState, to_role: str) -> str:
    spec = state.graph[task.task_id]
    if spec.kind != "task":
        return f"a {spec.kind} task may not be handed off"
    allowed = state.step(spec.step).handoff_to
    if to_role not in allowed:
        return f"handoff to {to_role!r} not allowed; step {spec.step} allows {allowed}"
    return ""


def refusal(state: RunState, task: TaskState, report: TaskResult) -> str:
    """Why the requests in a valid result cannot be granted ('' if they can)."""
    if report.subtasks and report.handoff_to:
        return "a result may ask for subtasks or a handoff, not both"
    if report.subtasks:
        return _subtask_refusal(state, task, report)
    if report.handoff_to:
        return _handoff_refusal(state, task, report.handoff_to)
    return ""


def hand_off(
    state: RunState,
    task: TaskState,
    report: TaskResult,
    ctx: Context,
    memory_refs: Sequence[str] = (),
) -> list[RunEvent]:
    """Ownership moves to `report.handoff_to` with everything said so far and the refs
    of the memory the attempt wrote (known to the shell, handed in with the command)."""
    limit = limits_of(state).max_handoffs
    if state.handoffs >= limit:
        detail = f"{state.handoffs} handoffs done, the run allows {limit}"
        return [LimitReached("max_handoffs", detail, task.task_id, ctx.wall)]
    return [
        TaskHandedOff(
            task.task_id, task.attempt, task.agent_id, state.role_of(task.task_id),
            report.handoff_to, report.output, ctx.wall, list(memory_refs),
        )
    ]  # fmt: skip
