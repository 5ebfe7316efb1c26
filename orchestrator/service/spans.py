"""The spans of a run's recorded events, and the span ids that tie one run's trace
together across processes and restarts.

The run's root span and each task's span have ids derived from the run's trace id
(`derived_span_id`), so any orchestrator process, after any restart, parents new spans
correctly and emits the run and task spans (with their recorded start and end times)
when they end. Retries and other notable events get instant spans of their own.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from typing import Any

import msgspec
from opentelemetry import trace
from opentelemetry.context import Context as OtelContext
from opentelemetry.trace import SpanKind, Status, StatusCode

from bus.telemetry import derived_span_id, forced_ids, span_context_of
from bus.tracecontext import TraceContext
from orchestrator.core.events import (
    RunCompleted,
    RunEvent,
    RunFailed,
    TaskAttemptFailed,
    TaskCancelled,
    TaskFailed,
    TaskSucceeded,
    type_of,
)
from orchestrator.core.state import RunState
from orchestrator.service.metrics import task_role

RUN_SPAN = "run"
NOTABLE = (
    "handoff", "handed_off", "delegat", "escalat", "budget", "limit", "usage.charged",
    "tokens.reserved", "replan", "approval", "human.decided",
)  # fmt: skip
"""Event types containing one of these get a span of their own, named by their type:
handoffs, delegations, escalations, budget and limit events, human decisions (the kinds
the coordination patterns add to the log), whatever module defines them."""
FAILING = ("exceeded", "exhausted", "denied", "limit.reached")
"""Of those, the ones whose span is marked failed."""


@functools.cache
def _notable(kind: str) -> bool:
    return any(word in kind for word in NOTABLE)


class TaskFailedError(Exception):
    """Recorded on a failed task's span: the orchestrator has the error text, not the
    agent's exception object (which the agent's own attempt span records)."""


def run_span_id(trace_id: str) -> str:
    return derived_span_id(trace_id, RUN_SPAN)


def task_span_id(trace_id: str, task_id: str) -> str:
    return derived_span_id(trace_id, f"task/{task_id}")


def run_context(trace_id: str) -> OtelContext | None:
    """The run's root span as a parent, for spans of the run's own."""
    if not trace_id:
        return None
    return span_context_of(TraceContext(trace_id, run_span_id(trace_id)), remote=False)


def task_context(trace_id: str, task_id: str) -> OtelContext | None:
    """A task's span as a parent, for the spans of its attempts and events."""
    if not trace_id:
        return None
    return span_context_of(TraceContext(trace_id, task_span_id(trace_id, task_id)), False)


def _ns(unix: float) -> int:
    return int(unix * 1e9)


def _scalars(event: RunEvent) -> dict[str, str | int | float | bool]:
    """An event's scalar fields as span attributes (`baton.event.<field>`)."""
    fields = msgspec.to_builtins(event)
    return {
        f"baton.event.{k}": v
        for k, v in fields.items()
        if isinstance(v, str | int | float | bool) and k != "type"
    }


class EventSpans:
    """Emits the span each recorded event calls for: a task's or the run's when it
    ends, an instant one for a retry, a failed attempt or a notable event."""

    def __init__(
        self,
        tracer: trace.Tracer,
        clock: Callable[[], float],
        tokens_of: Callable[[str], int],
    ) -> None:
        self._tracer = tracer
        self._clock = clock
        self._tokens_of = tokens_of
        """Tokens charged to a run that ended (then forgotten)."""

    def span_for(self, state: RunState, event: RunEvent) -> None:
        trace_id = state.trace_id
        if not trace_id:
            return
        match event:
            case TaskAttemptFailed():
                name = "retry" if event.retry_at is not None else "attempt failed"
                run_now = self._clock() - state.clock_shift  # retry_at is on the run's clock
                self._instant(
                    f"{name} {event.task_id}#{event.attempt}",
                    task_context(trace_id, event.task_id),
                    event,
                    error=f"{event.reason}: {event.error}",
                    extra={"baton.retry_in_s": max(0.0, (event.retry_at or 0) - run_now)}
                    if event.retry_at is not None
                    else {},
                )
            case TaskSucceeded() | TaskFailed() | TaskCancelled():
                self._task_span(state, event)
            case RunCompleted() | RunFailed():
                self._run_span(state, event)
            case _:
                kind = type_of(event)
                if _notable(kind):
                    task_id = getattr(event, "task_id", "")
                    parent = (
                        task_context(trace_id, task_id)
                        if task_id in state.tasks
                        else run_context(trace_id)
                    )
                    failed = any(w in kind for w in FAILING)
                    self._instant(kind, parent, event, error=kind if failed else "")

    def _instant(
        self,
        name: str,
        parent: OtelContext | None,
        event: RunEvent,
        *,
        error: str = "",
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        at = _ns(getattr(event, "at", time.time()))
        span = self._tracer.start_span(
            name, context=parent, attributes={**_scalars(event), **(extra or {})}, start_time=at
        )
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end(end_time=at)

    def _task_span(
        self, state: RunState, event: TaskSucceeded | TaskFailed | TaskCancelled
    ) -> None:
        task = state.tasks[event.task_id]
        trace_id = state.trace_id
        attributes: dict[str, Any] = {
            "baton.task_id": task.task_id,
            "baton.role": task_role(state, task.task_id),
            "baton.status": task.status,
            "baton.attempts": task.attempt,
            "baton.agent_id": task.agent_id,
        }
        start = task.started_at or event.at
        with forced_ids(trace_id, task_span_id(trace_id, task.task_id)):
            span = self._tracer.start_span(
                f"task {task.task_id}",
                context=run_context(trace_id),
                attributes=attributes,
                start_time=_ns(start),
                record_exception=False,
            )
        if isinstance(event, TaskFailed):
            span.record_exception(TaskFailedError(event.error), timestamp=_ns(event.at))
            span.set_status(Status(StatusCode.ERROR, event.error))
        span.end(end_time=_ns(max(start, event.at)))

    def _run_span(self, state: RunState, event: RunCompleted | RunFailed) -> None:
        trace_id = state.trace_id
        with forced_ids(trace_id, run_span_id(trace_id)):
            span = self._tracer.start_span(
                f"run {state.workflow.name if state.workflow else state.run_id}",
                context=OtelContext(),
                kind=SpanKind.SERVER,
                attributes={
                    "baton.run_id": state.run_id,
                    "baton.status": state.status,
                    "baton.tasks": len(state.tasks),
                    "baton.tokens": self._tokens_of(state.run_id),
                },
                start_time=_ns(state.started_at or event.at),
            )
        if isinstance(event, RunFailed):
            span.set_status(Status(StatusCode.ERROR, event.reason))
        span.end(end_time=_ns(max(state.started_at, event.at)))
