"""Text people read: live progress lines, a replayed run's table, audit lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec

from bus import blobs
from bus.protocol import Progress
from eventstore import StoredEvent
from orchestrator.core.effects import SendAssignment
from orchestrator.core.events import RunEvent, SystemEvent
from orchestrator.core.state import RunState
from orchestrator.service.agentlog import AgentRecord


def _short(value: Any, width: int = 60) -> str:
    text = json.dumps(msgspec.to_builtins(value), separators=(",", ":"), default=str)
    return text if len(text) <= width else text[: width - 1] + "…"


def clock(unix: float) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%H:%M:%S.%f")[:-3]


def progress_line(p: Progress, since_start: float) -> str:
    head = f"  +{since_start:8.3f}s  "
    match p.event:
        case "run.started":
            return f"{head}run started"
        case "run.forked":
            return f"{head}run forked"
        case "task.assigned":
            return f"{head}{p.task_id:<16} started  on {p.agent_id} (attempt {p.attempt})"
        case "task.succeeded" if not p.agent_id:
            return f"{head}{p.task_id:<16} finished"
        case "task.succeeded":
            return f"{head}{p.task_id:<16} finished on {p.agent_id} in {p.elapsed_s:.3f}s"
        case "task.attempt_failed":
            return f"{head}{p.task_id:<16} attempt {p.attempt} on {p.agent_id} ended: {p.detail}"
        case "task.failed" | "task.cancelled":
            return f"{head}{p.task_id:<16} {p.event.split('.')[1]}: {p.detail}"
        case "run.completed":
            return f"{head}run completed in {p.elapsed_s:.3f}s"
        case "run.failed":
            return f"{head}run failed after {p.elapsed_s:.3f}s: {p.detail}"
        case "run.stopped":
            return f"{head}run stopped after {p.elapsed_s:.3f}s: {p.detail}"
    return f"{head}{p.event:<16} {p.task_id} {p.detail}".rstrip()


def run_table(state: RunState) -> str:
    """A replayed run: header, one row per task, result or failure."""
    name = state.workflow.name if state.workflow else "?"
    took = state.finished_at - state.started_at
    if not state.finished_at:
        ended = ""
    elif took >= 0:
        ended = f", finished after {took:.3f}s"
    else:  # a fork made past its origin's end holds that end, from before the fork
        ended = f", ended in {state.forked_from or 'its origin'} before it was forked"
    lines = [
        f"run {state.run_id}  workflow {name}  status {state.status}  "
        f"events {state.version}  trace {state.trace_id}",
        f"started {clock(state.started_at)} UTC{ended}",
        "",
        f"{'task':<18} {'status':<10} {'agent':<24} {'att':>3} {'start':>9} {'took':>8}  output",
    ]
    for task in state.tasks.values():
        # a fork's tasks copied from its origin started before it did: a negative offset
        start = f"{task.started_at - state.started_at:+.3f}" if task.started_at else "-"
        took_s = f"{task.elapsed_s:.3f}" if task.status == "succeeded" else "-"
        shown = _short(task.output, 48) if task.output is not None else task.error[:48]
        lines.append(
            f"{task.task_id:<18} {task.status:<10} {task.agent_id or '-':<24} "
            f"{task.attempt:>3} {start:>9} {took_s:>8}  {shown}"
        )
    if state.rejected:
        lines.append(f"\n{state.rejected} result(s) rejected (stale or forged): see baton audit")
    if state.result is not None:
        lines += ["", "result:", json.dumps(state.result, indent=2, default=str)]
    if state.reason:
        lines += ["", f"{state.status}: {state.reason}"]  # as the trace says it
    return "\n".join(lines)


def audit_line(stored: StoredEvent, event: RunEvent | SystemEvent | AgentRecord) -> str:
    fields = msgspec.to_builtins(event)
    fields.pop("type", None)
    fields.pop("kind", None)
    fields.pop("at", None)
    if isinstance(fields.get("workflow"), dict):
        fields["workflow"] = fields["workflow"].get("name")
    return (
        f"{stored.position:>7} {clock(stored.recorded_at)} {stored.stream:<28} "
        f"{stored.type:<20} {stored.actor:<24} {_short(fields, 90)}"
    )


def audit_json(stored: StoredEvent, event: RunEvent | SystemEvent | AgentRecord) -> str:
    envelope = msgspec.to_builtins(stored)
    envelope["data"] = msgspec.to_builtins(event)
    return json.dumps(envelope, separators=(",", ":"), default=str)


def pending(state: RunState, resend: list[SendAssignment]) -> str:
    """What an orchestrator restarted at this point would do next."""
    if state.terminal:
        return f"  nothing: the run is {state.status}"
    lines = [
        f"  re-send {s.assignment.task_id} attempt {s.assignment.attempt} to {s.agent_id}"
        for s in resend
    ]
    ready = [t for tasks in state.ready.values() for t in tasks]
    if ready:
        lines.append(f"  assign when an agent is free: {', '.join(ready)}")
    waiting = sorted(state.waiting)
    if waiting:
        lines.append(f"  then, as dependencies finish: {', '.join(waiting)}")
    return "\n".join(lines) or "  nothing yet"


def ended(state: RunState, where: str) -> str:
    """What `baton run` says of a run that ended: how, its result, and how to read the
    large values it refers to (`where`: the options that find the store)."""
    if state.status == "failed":
        return f"run {state.run_id} failed: {state.reason}\n"
    said = (
        f"run {state.run_id} completed; result:"
        if state.status == "completed"
        else f"run {state.run_id} stopped ({state.limit}): {state.reason}; finished so far:"
    )
    return f"{said}\n{json.dumps(state.result, indent=2, default=str)}\n" + blob_hint(
        state.result, where
    )


def blob_hint(value: object, where: str = "") -> str:
    """How to read the large values `value` refers to (kept beside the log), if any;
    `where` is the options that find the store (`--state-dir ...`)."""
    refs = list(dict.fromkeys(ref.digest for ref in blobs.refs_in(value)))
    if not refs:
        return ""
    lines = [f"the result refers to {len(refs)} large value(s) kept beside the log; read one with:"]
    lines += [f"  baton blobs get {digest} -o FILE{where}" for digest in refs]
    return "\n".join(lines) + "\n"
