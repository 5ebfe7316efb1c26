"""The orchestrator's spans, metrics and event log lines, kept out of the shell.

One trace per run: the run's trace id is chosen when it starts and recorded in
`RunStarted`; the run's root span and each task's span have ids derived from it
(`derived_span_id`), so any orchestrator process, after any restart, parents new spans
correctly and emits the run and task spans (with their recorded start and end times)
when they end. Decisions, dispatches, retries and other notable events get spans of their
own; the events a decision produced carry that decision's span id in the store.

Tree: run → task → dispatch (attempt n) → the agent's attempt span (another process) →
the decision that folded its report. Decisions not caused by an agent hang off the run.
"""

from __future__ import annotations

import functools
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import msgspec
from opentelemetry import trace
from opentelemetry.context import Context as OtelContext
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode

from bus import subjects
from bus.telemetry import Telemetry, derived_span_id, forced_ids, span_context_of
from bus.telemetry import trace_context_of as _trace_context_of
from bus.tracecontext import TraceContext
from orchestrator.core.commands import (
    Command,
    DeliveryFailed,
    ReportFailure,
    ReportResult,
    StartRun,
)
from orchestrator.core.effects import SendAssignment
from orchestrator.core.events import (
    RunCompleted,
    RunEvent,
    RunFailed,
    TaskAssigned,
    TaskAttemptFailed,
    TaskCancelled,
    TaskFailed,
    TaskSucceeded,
    UsageCharged,
    type_of,
)
from orchestrator.core.state import RunState
from orchestrator.service.journal import Cause
from orchestrator.service.registry import Registry

event_log = logging.getLogger("baton.events")
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


def budget_remaining(state: RunState) -> int | None:
    """Tokens left in the run's token budget; None for a run without one."""
    budget = state.workflow.limits.tokens if state.workflow is not None else 0
    return budget - state.tokens_spent if budget else None


class TaskFailedError(Exception):
    """Recorded on a failed task's span: the orchestrator has the error text, not the
    agent's exception object (which the agent's own attempt span records)."""


def run_span_id(trace_id: str) -> str:
    return derived_span_id(trace_id, RUN_SPAN)


def task_span_id(trace_id: str, task_id: str) -> str:
    return derived_span_id(trace_id, f"task/{task_id}")


def _ns(unix: float) -> int:
    return int(unix * 1e9)


def _task_of(command: Command) -> tuple[str, int]:
    match command:
        case ReportResult():
            return command.result.task_id, command.result.attempt
        case ReportFailure():
            return command.failure.task_id, command.failure.attempt
        case DeliveryFailed():
            return command.task_id, command.attempt
    return "", 0


def _scalars(event: RunEvent) -> dict[str, str | int | float | bool]:
    """An event's scalar fields as span attributes (`baton.event.<field>`)."""
    fields = msgspec.to_builtins(event)
    return {
        f"baton.event.{k}": v
        for k, v in fields.items()
        if isinstance(v, str | int | float | bool) and k != "type"
    }


class OrchestratorTelemetry:
    """Spans and metrics for one orchestrator; every method is cheap and never raises
    into the shell (telemetry must not stop coordination)."""

    def __init__(
        self,
        telemetry: Telemetry,
        registry: Registry,
        runs: Mapping[str, RunState],
        clock: Callable[[], float],
    ) -> None:
        self.telemetry = telemetry
        self._on = telemetry.enabled
        """With the SDK off, spans and metrics are skipped before any work goes into them."""
        self._tracer = telemetry.tracer
        self._registry = registry
        self._runs = runs
        self._clock = clock
        self._failed_at: dict[tuple[str, str], float] = {}
        self._tokens: defaultdict[str, int] = defaultdict(int)
        m = telemetry.meter
        self._started = m.create_counter("baton.tasks.started", "{attempt}", "attempts started")
        self._succeeded = m.create_counter("baton.tasks.succeeded", "{task}", "tasks succeeded")
        self._failed = m.create_counter("baton.tasks.failed", "{task}", "tasks failed for good")
        self._retried = m.create_counter("baton.tasks.retried", "{attempt}", "attempts retried")
        self._latency = m.create_histogram(
            "baton.task.duration", "s", "first assignment to the task's end"
        )
        self._queue_wait = m.create_histogram(
            "baton.task.queue_wait", "s", "ready to assigned, per attempt"
        )
        self._token_counter = m.create_counter(
            "baton.tokens", "{token}", "model tokens charged to runs, by role and type"
        )
        self._append = m.create_histogram(
            "baton.eventstore.append.duration", "s", "event store append latency"
        )
        m.create_observable_gauge(
            "baton.agent.load", [self._observe_load], "{attempt}", "attempts an agent holds"
        )
        m.create_observable_gauge(
            "baton.agent.heartbeat.age", [self._observe_age], "s", "since an agent's heartbeat"
        )
        m.create_observable_gauge(
            "baton.run.tokens.used", [self._observe_tokens], "{token}", "tokens charged per run"
        )
        m.create_observable_gauge(
            "baton.run.budget.remaining",
            [self._observe_budget],
            "{token}",
            "tokens left in a running run's budget",
        )

    # -- contexts ------------------------------------------------------------------------

    @staticmethod
    def run_context(trace_id: str) -> OtelContext | None:
        if not trace_id:
            return None
        return span_context_of(TraceContext(trace_id, run_span_id(trace_id)), remote=False)

    @staticmethod
    def task_context(trace_id: str, task_id: str) -> OtelContext | None:
        if not trace_id:
            return None
        return span_context_of(TraceContext(trace_id, task_span_id(trace_id, task_id)), False)

    def _parent(self, state: RunState, command: Command, cause: Cause) -> OtelContext | None:
        trace_id = command.trace_id if isinstance(command, StartRun) else state.trace_id
        if cause.span_id and cause.trace_id == trace_id:
            return span_context_of(TraceContext(trace_id, cause.span_id))
        task_id, _ = _task_of(command)
        if task_id in state.tasks:
            return self.task_context(trace_id, task_id)
        return self.run_context(trace_id)

    # -- decisions -----------------------------------------------------------------------

    def decided(
        self,
        state: RunState,
        command: Command,
        cause: Cause,
        events: Sequence[RunEvent],
        began_ns: int,
    ) -> str:
        """The span of one `decide` call that produced `events` (emitted after the fact,
        so a tick that decides nothing costs nothing); returns its span id ('' if off)."""
        if not events or not self._on:
            return ""
        task_id, attempt = _task_of(command)
        attributes: dict[str, Any] = {
            "baton.command": type(command).__name__,
            "baton.actor": cause.actor,
            "baton.events": len(events),
            "baton.event_types": ",".join(sorted({type_of(e) for e in events})),
        }
        if task_id:
            attributes.update({"baton.task_id": task_id, "baton.attempt": attempt})
        span = self._tracer.start_span(
            f"decide {type(command).__name__}",
            context=self._parent(state, command, cause),
            attributes=attributes,
            start_time=began_ns,
        )
        span.end()
        context = _trace_context_of(span)
        return context.span_id if context else ""

    def dispatch_span(
        self, effect: SendAssignment, parent: TraceContext
    ) -> tuple[trace.Span, TraceContext]:
        """Start one assignment's dispatch span; its context travels with the assignment
        (the agent's attempt span becomes its child). End it with `dispatched`."""
        if not self._on:
            return trace.INVALID_SPAN, parent
        a = effect.assignment
        span = self._tracer.start_span(
            f"dispatch {a.task_id}#{a.attempt}",
            context=self.task_context(parent.trace_id, a.task_id),
            kind=SpanKind.CLIENT,
            attributes={
                "baton.task_id": a.task_id,
                "baton.attempt": a.attempt,
                "baton.agent_id": effect.agent_id,
                "baton.role": a.role,
                "messaging.system": "nats",
                "messaging.destination.name": subjects.assign(effect.agent_id),
            },
        )
        return span, _trace_context_of(span) or parent

    @staticmethod
    def dispatched(span: trace.Span, error: str) -> None:
        """End a dispatch span once the agent answered; failed if it did not take it."""
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    # -- after an append ------------------------------------------------------------------

    def appended(self, stream_kind: str, seconds: float) -> None:
        if self._on:
            self._append.record(seconds, {"baton.stream": stream_kind})

    def recorded(
        self,
        before: RunState,
        after: RunState,
        events: Sequence[RunEvent],
        span_ids: Sequence[str],
    ) -> None:
        """Metrics, spans and one log line for each event now durable in the run's log."""
        if not self._on and not event_log.isEnabledFor(logging.INFO):
            return
        try:
            self._recorded(before, after, events, span_ids)
        except Exception:  # telemetry must never stop the shell
            logging.getLogger("baton.telemetry").exception("telemetry for %s", after.run_id)

    def _recorded(
        self,
        before: RunState,
        after: RunState,
        events: Sequence[RunEvent],
        span_ids: Sequence[str],
    ) -> None:
        log_events = event_log.isEnabledFor(logging.INFO)
        version = before.version
        for event, span_id in zip(events, span_ids, strict=True):
            version += 1
            if self._on:
                self._measure(after, event)
                self._span_for(after, event)
            if log_events:
                event_log.info(
                    "%s %s",
                    type_of(event),
                    getattr(event, "task_id", ""),
                    extra={
                        "event_type": type_of(event),
                        "run_id": after.run_id,
                        "version": version,
                        "task_id": getattr(event, "task_id", ""),
                        "trace_id": after.trace_id,
                        "span_id": span_id,
                    },
                )

    def _role(self, state: RunState, task_id: str) -> str:
        spec = state.graph.get(task_id)
        return spec.role if spec else ""

    def _measure(self, state: RunState, event: RunEvent) -> None:
        key = (state.run_id, getattr(event, "task_id", ""))
        match event:
            case TaskAssigned():
                role = self._role(state, event.task_id)
                self._started.add(1, {"baton.role": role})
                ready_at = self._ready_at(state, event)
                if ready_at is not None:
                    kind = "first" if event.attempt == 1 else "retry"
                    self._queue_wait.record(
                        max(0.0, event.at - ready_at), {"baton.role": role, "baton.attempt": kind}
                    )
            case TaskSucceeded():
                role = self._role(state, event.task_id)
                self._succeeded.add(1, {"baton.role": role})
                task = state.tasks[event.task_id]
                self._latency.record(
                    max(0.0, event.at - task.started_at),
                    {"baton.role": role, "baton.outcome": "succeeded"},
                )
                self._failed_at.pop(key, None)
            case TaskAttemptFailed():
                if event.retry_at is not None:
                    self._retried.add(
                        1, {"baton.role": self._role(state, event.task_id), "reason": event.reason}
                    )
                self._failed_at[key] = event.at
            case TaskFailed():
                role = self._role(state, event.task_id)
                self._failed.add(1, {"baton.role": role})
                task = state.tasks[event.task_id]
                if task.started_at:
                    self._latency.record(
                        max(0.0, event.at - task.started_at),
                        {"baton.role": role, "baton.outcome": "failed"},
                    )
                self._failed_at.pop(key, None)
            case RunCompleted() | RunFailed():
                for k in [k for k in self._failed_at if k[0] == state.run_id]:
                    del self._failed_at[k]
            case UsageCharged():
                role = self._role(state, event.task_id)
                for kind, count in (
                    ("input", event.input_tokens),
                    ("output", event.output_tokens),
                    ("other", event.tokens - event.input_tokens - event.output_tokens),
                ):
                    if count:
                        self._token_counter.add(
                            count, {"baton.role": role, "gen_ai.token.type": kind}
                        )
                self._tokens[state.run_id] += event.tokens

    def _ready_at(self, state: RunState, event: TaskAssigned) -> float | None:
        if event.attempt > 1:
            return self._failed_at.get((state.run_id, event.task_id))
        spec = state.graph.get(event.task_id)
        if spec is None:
            return None
        return max([state.started_at, *(state.tasks[d].finished_at for d in spec.deps)])

    def _span_for(self, state: RunState, event: RunEvent) -> None:
        trace_id = state.trace_id
        if not trace_id:
            return
        match event:
            case TaskAttemptFailed():
                name = "retry" if event.retry_at is not None else "attempt failed"
                run_now = self._clock() - state.clock_shift  # retry_at is on the run's clock
                self._instant(
                    f"{name} {event.task_id}#{event.attempt}",
                    self.task_context(trace_id, event.task_id),
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
                        self.task_context(trace_id, task_id)
                        if task_id in state.tasks
                        else self.run_context(trace_id)
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
            "baton.role": self._role(state, task.task_id),
            "baton.status": task.status,
            "baton.attempts": task.attempt,
            "baton.agent_id": task.agent_id,
        }
        start = task.started_at or event.at
        with forced_ids(trace_id, task_span_id(trace_id, task.task_id)):
            span = self._tracer.start_span(
                f"task {task.task_id}",
                context=self.run_context(trace_id),
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
                    "baton.tokens": self._tokens.pop(state.run_id, 0),
                },
                start_time=_ns(state.started_at or event.at),
            )
        if isinstance(event, RunFailed):
            span.set_status(Status(StatusCode.ERROR, event.reason))
        span.end(end_time=_ns(max(state.started_at, event.at)))

    # -- gauges --------------------------------------------------------------------------

    def _observe_load(self, options: CallbackOptions) -> Iterable[Observation]:
        for hb in self._registry.heartbeats():
            yield Observation(
                self._registry.load(hb.agent_id),
                {"baton.agent_id": hb.agent_id, "baton.role": hb.role},
            )

    def _observe_age(self, options: CallbackOptions) -> Iterable[Observation]:
        now = self._clock()
        for agent_id, role, age in self._registry.ages(now):
            yield Observation(age, {"baton.agent_id": agent_id, "baton.role": role})

    def _observe_budget(self, options: CallbackOptions) -> Iterable[Observation]:
        for state in list(self._runs.values()):
            left = None if state.terminal else budget_remaining(state)
            if left is not None:
                yield Observation(left, {"baton.run_id": state.run_id})

    def _observe_tokens(self, options: CallbackOptions) -> Iterable[Observation]:
        for run_id, used in list(self._tokens.items()):
            yield Observation(used, {"baton.run_id": run_id})
