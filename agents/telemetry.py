"""Spans an agent process emits: one per attempt it executes (parented on the
assignment's `traceparent`, so it joins the run's trace across processes), and helpers
for what a handler does inside an attempt: model calls, following the OpenTelemetry GenAI
semantic conventions, and governed tool calls.

Tokens a handler reports through `llm_call(...).record(...)` go to the attempt's
`UsageMeter` (`task.usage`) and are returned to the orchestrator in `TaskResult.usage`,
which charges them to the run.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar

from opentelemetry import metrics, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from agents.usage import UsageMeter
from bus.protocol import Assignment
from bus.telemetry import Telemetry, span_context_of, trace_context_of
from bus.tracecontext import TraceContext

_meter: ContextVar[UsageMeter | None] = ContextVar("baton_attempt_usage", default=None)
_failed: ContextVar[list[str] | None] = ContextVar("baton_attempt_failed", default=None)
_SCOPE = "baton.agents"
log = logging.getLogger("baton.agent.attempts")
_token_usage = metrics.get_meter(_SCOPE).create_histogram(
    "gen_ai.client.token.usage", "{token}", "tokens used by model calls"
)


def attempt_meter() -> UsageMeter:
    """The current attempt's token meter (a new one outside an attempt's span)."""
    meter = _meter.get()
    return meter if meter is not None else UsageMeter()


def _outcome(failed: list[str]) -> str:
    return "failed" if failed else "succeeded"


class AgentTelemetry:
    """One agent process's attempt spans and metrics."""

    def __init__(self, telemetry: Telemetry, agent_id: str, role: str) -> None:
        self.telemetry = telemetry
        self._agent_id = agent_id
        self._role = role
        meter = telemetry.meter
        self._attempts = meter.create_counter(
            "baton.agent.attempts", "{attempt}", "attempts executed, by role and outcome"
        )
        self._duration = meter.create_histogram(
            "baton.agent.attempt.duration", "s", "time an attempt ran in the agent"
        )

    async def traced(
        self,
        a: Assignment,
        parent: TraceContext | None,
        work: Callable[[Assignment, TraceContext | None], Awaitable[None]],
    ) -> None:
        """Run `work` for one attempt inside its span; `work` gets the span's context to
        send with the outcome, so the orchestrator's decision on it joins the trace. With
        the SDK off there is no span to make, and `work` gets `parent` as it came."""
        meter = UsageMeter()
        failed: list[str] = []
        meter_token, failed_token = _meter.set(meter), _failed.set(failed)
        began = time.monotonic()
        try:
            if self.telemetry.enabled:
                await self._in_span(a, parent, work, meter, failed)
            else:
                await work(a, parent)
                self._log(a, meter, failed)
        finally:
            _meter.reset(meter_token)
            _failed.reset(failed_token)
            if self.telemetry.enabled:
                labels = {"baton.role": self._role, "baton.outcome": _outcome(failed)}
                self._attempts.add(1, labels)
                self._duration.record(time.monotonic() - began, labels)

    async def _in_span(
        self,
        a: Assignment,
        parent: TraceContext | None,
        work: Callable[[Assignment, TraceContext | None], Awaitable[None]],
        meter: UsageMeter,
        failed: list[str],
    ) -> None:
        attributes: dict[str, str | int] = {
            "baton.run_id": a.run_id,
            "baton.task_id": a.task_id,
            "baton.attempt": a.attempt,
            "baton.step": a.step,
            "baton.role": a.role,
            "baton.agent_id": self._agent_id,
            "messaging.system": "nats",
            "messaging.operation.type": "process",
        }
        with self.telemetry.tracer.start_as_current_span(
            f"attempt {a.task_id}#{a.attempt}",
            context=span_context_of(parent) if parent else None,
            kind=SpanKind.CONSUMER,
            attributes=attributes,
        ) as span:
            await work(a, trace_context_of(span) or parent)
            if meter.calls:
                span.set_attribute("gen_ai.usage.input_tokens", meter.input_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", meter.output_tokens)
            self._log(a, meter, failed)  # inside the span: the log line carries its ids

    def _log(self, a: Assignment, meter: UsageMeter, failed: list[str]) -> None:
        if not log.isEnabledFor(logging.INFO):
            return
        usage = {"input_tokens": meter.input_tokens, "output_tokens": meter.output_tokens}
        log.info(
            "attempt %s#%d %s",
            a.task_id,
            a.attempt,
            _outcome(failed),
            extra={
                "event_type": f"attempt.{_outcome(failed)}",
                "run_id": a.run_id,
                "task_id": a.task_id,
                "attempt": a.attempt,
                "agent_id": self._agent_id,
                "error": failed[0] if failed else "",
                "usage": usage if meter.calls else {},
            },
        )

    @staticmethod
    def failed(error: str, retryable: bool) -> None:
        """Mark the current attempt's span failed; call it inside the `except` that caught
        the handler's exception, so the exception itself is recorded."""
        flags = _failed.get()
        if flags is not None:
            flags.append(error)
        span = trace.get_current_span()
        exc = sys.exc_info()[1]
        if exc is not None:
            span.record_exception(exc, attributes={"baton.retryable": retryable})
            span.set_attribute("error.type", type(exc).__name__)
        span.set_status(Status(StatusCode.ERROR, error))


class LlmCall:
    """What a handler learns from a model call, put on its span and charged to the run."""

    def __init__(self, span: trace.Span, system: str, model: str, meter: UsageMeter | None) -> None:
        self.span = span
        self._system = system
        self._model = model
        self._meter = meter

    def record(
        self,
        *,
        input_tokens: int,
        output_tokens: int,
        response_model: str = "",
        finish_reason: str = "",
    ) -> None:
        if input_tokens < 0 or output_tokens < 0:
            raise ValueError("token counts cannot be negative")
        self.span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        self.span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
        if response_model:
            self.span.set_attribute("gen_ai.response.model", response_model)
        if finish_reason:
            self.span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
        if self._meter is not None:
            self._meter.add(input_tokens, output_tokens)
        for kind, count in (("input", input_tokens), ("output", output_tokens)):
            _token_usage.record(
                count,
                {
                    "gen_ai.system": self._system,
                    "gen_ai.request.model": self._model,
                    "gen_ai.token.type": kind,
                },
            )


@contextlib.contextmanager
def llm_call(
    *,
    system: str,
    model: str,
    operation: str = "chat",
    meter: UsageMeter | None = None,
    **attributes: str | int | float,
) -> Iterator[LlmCall]:
    """A span for one model call (`gen_ai.*` attributes); an exception marks it failed.
    `record` charges `meter` (default: the current attempt's)."""
    tracer = trace.get_tracer(_SCOPE)
    with tracer.start_as_current_span(
        f"{operation} {model}",
        kind=SpanKind.CLIENT,
        attributes={
            "gen_ai.operation.name": operation,
            "gen_ai.system": system,
            "gen_ai.provider.name": system,
            "gen_ai.request.model": model,
            **{f"gen_ai.request.{k}": v for k, v in attributes.items()},
        },
    ) as span:
        try:
            yield LlmCall(span, system, model, meter if meter is not None else _meter.get())
        except Exception as exc:
            span.set_attribute("error.type", type(exc).__name__)
            raise


@contextlib.contextmanager
def tool_call(
    tool: str, *, decision: str = "allowed", reason: str = "", call_id: str = ""
) -> Iterator[trace.Span]:
    """A span for one tool call with the governance decision taken on it; a refused call
    is a failed span (with the reason), an exception in the tool is recorded."""
    tracer = trace.get_tracer(_SCOPE)
    with tracer.start_as_current_span(
        f"execute_tool {tool}",
        kind=SpanKind.INTERNAL,
        attributes={
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.call.id": call_id,
            "baton.governance.decision": decision,
            "baton.governance.reason": reason,
        },
    ) as span:
        if decision in ("refused", "denied"):
            span.set_status(Status(StatusCode.ERROR, f"{decision}: {reason}"))
        yield span
