"""The orchestrator's spans, metrics and event log lines, kept out of the shell.

One trace per run: the run's trace id is chosen when it starts and recorded in
`RunStarted`; the run and task spans have ids derived from it (see `spans`). Decisions
and dispatches get spans here, as they happen; the events a decision produced carry that
decision's span id in the store. Once events are durable, each is measured (`metrics`),
gets the span it calls for (`spans`) and one log line.

Tree: run → task → dispatch (attempt n) → the agent's attempt span (another process) →
the decision that folded its report. Decisions not caused by an agent hang off the run.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context as OtelContext
from opentelemetry.trace import SpanKind, Status, StatusCode

from bus import subjects
from bus.telemetry import Telemetry, span_context_of
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
from orchestrator.core.events import RunEvent, type_of
from orchestrator.core.state import RunState
from orchestrator.service.journal import Cause
from orchestrator.service.metrics import RunMetrics
from orchestrator.service.registry import Registry
from orchestrator.service.spans import EventSpans, run_context, task_context

event_log = logging.getLogger("baton.events")


def _task_of(command: Command) -> tuple[str, int]:
    match command:
        case ReportResult():
            return command.result.task_id, command.result.attempt
        case ReportFailure():
            return command.failure.task_id, command.failure.attempt
        case DeliveryFailed():
            return command.task_id, command.attempt
    return "", 0


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
        self._metrics = RunMetrics(telemetry.meter, registry, runs, clock)
        self._spans = EventSpans(telemetry.tracer, clock, self._metrics.take_tokens)

    def _parent(self, state: RunState, command: Command, cause: Cause) -> OtelContext | None:
        trace_id = command.trace_id if isinstance(command, StartRun) else state.trace_id
        if cause.span_id and cause.trace_id == trace_id:
            return span_context_of(TraceContext(trace_id, cause.span_id))
        task_id, _ = _task_of(command)
        if task_id in state.tasks:
            return task_context(trace_id, task_id)
        return run_context(trace_id)

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
            context=task_context(parent.trace_id, a.task_id),
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
            self._metrics.appended(stream_kind, seconds)

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
                self._metrics.measure(after, event)
                self._spans.span_for(after, event)
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
