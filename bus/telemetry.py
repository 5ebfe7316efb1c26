"""OpenTelemetry set up the same way in every Baton process, from the standard `OTEL_*`
environment variables, plus the two seams cross-process tracing needs: the W3C context of
a span as a `TraceContext` for NATS headers (and back), and ids chosen by the caller, so
spans that must be found again after a restart (a run, a task) have ids derived from the
run's trace id instead of random ones.

Exporters: none by default (spans still get real ids, which events record); `console`
and `otlp` when `OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` say so or an
`OTEL_EXPORTER_OTLP_*ENDPOINT` is set; and a JSON-lines file when `BATON_TRACE_FILE` is
set (one span a line, appended by every process: what tests and `jq` read; written in
batches, so a process killed with SIGKILL loses its last half second of spans).
`BATON_TELEMETRY=off` turns the SDK off altogether (no-op spans).

Logs: `BATON_LOG_FORMAT=json` makes every log record one JSON line carrying the current
trace and span ids; `BATON_LOG_FILE` sends them to a file instead of standard error.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextvars import ContextVar
from pathlib import Path
from typing import IO, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

import private
from bus.tracecontext import TraceContext

TRACE_FILE_ENV = "BATON_TRACE_FILE"
TELEMETRY_ENV = "BATON_TELEMETRY"
LOG_FORMAT_ENV = "BATON_LOG_FORMAT"
LOG_FILE_ENV = "BATON_LOG_FILE"
LOG_LEVEL_ENV = "BATON_LOG_LEVEL"

_forced: ContextVar[tuple[int, int] | None] = ContextVar("baton_forced_ids", default=None)


class TelemetryConfigError(ValueError):
    """An `OTEL_*` / `BATON_*` telemetry variable with a value Baton cannot use."""


class _CallerChosenIds(RandomIdGenerator):
    """Random ids, except inside `forced_ids(...)`, where the caller's are used."""

    def generate_span_id(self) -> int:
        forced = _forced.get()
        return forced[1] if forced else super().generate_span_id()

    def generate_trace_id(self) -> int:
        forced = _forced.get()
        return forced[0] if forced else super().generate_trace_id()


@contextlib.contextmanager
def forced_ids(trace_id: str, span_id: str) -> Iterator[None]:
    """Spans started inside get this span id (and, if they are roots, this trace id)."""
    token = _forced.set((int(trace_id, 16), int(span_id, 16)))
    try:
        yield
    finally:
        _forced.reset(token)


def derived_span_id(trace_id: str, name: str) -> str:
    """A stable, non-zero span id for `name` within a trace, the same in every process and
    after any restart (a run's root span, a task's span)."""
    digest = hashlib.blake2b(f"{trace_id}/{name}".encode(), digest_size=8).hexdigest()
    return digest if digest != "0" * 16 else "0" * 15 + "1"


def span_context_of(tc: TraceContext, remote: bool = True) -> otel_context.Context:
    """An OpenTelemetry context whose current span is the one `tc` names."""
    parent = SpanContext(
        int(tc.trace_id, 16),
        int(tc.span_id, 16),
        is_remote=remote,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )
    return trace.set_span_in_context(NonRecordingSpan(parent), otel_context.Context())


def trace_context_of(span: trace.Span) -> TraceContext | None:
    """The `traceparent` value of a span, for NATS headers; None for an invalid span."""
    ctx = span.get_span_context()
    if not ctx.is_valid:
        return None
    return TraceContext(format(ctx.trace_id, "032x"), format(ctx.span_id, "016x"))


def ids_of(span: trace.Span) -> tuple[str, str]:
    """(trace id, span id) of a span as hex, ('', '') when it has none."""
    current = trace_context_of(span)
    return (current.trace_id, current.span_id) if current else ("", "")


# -- exporters ---------------------------------------------------------------------------


def span_record(span: ReadableSpan) -> dict[str, Any]:
    """A finished span as a plain JSON-able dict (ids in W3C hex)."""
    ctx = span.get_span_context()
    assert ctx is not None
    return {
        "name": span.name,
        "trace_id": format(ctx.trace_id, "032x"),
        "span_id": format(ctx.span_id, "016x"),
        "parent_span_id": format(span.parent.span_id, "016x") if span.parent else "",
        "kind": span.kind.name,
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": span.status.status_code.name,
        "status_description": span.status.description or "",
        "attributes": dict(span.attributes or {}),
        "events": [{"name": e.name, "attributes": dict(e.attributes or {})} for e in span.events],
        "service": str(span.resource.attributes.get("service.name", "")),
        "pid": os.getpid(),
    }


class JsonLinesSpanExporter(SpanExporter):
    """Appends one JSON line per span to a file; several processes may share the file,
    each line going out in a single `write` on an `O_APPEND` descriptor."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = threading.Lock()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = "".join(json.dumps(span_record(s), default=str) + "\n" for s in spans)
        with self._lock, private.append(self._path) as f:  # 0600 if new: spans hold task data
            f.write(data.encode())
        return SpanExportResult.SUCCESS

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _choices(env: Mapping[str, str], variable: str, signal: str) -> list[str]:
    endpoint = any(
        env.get(v)
        for v in ("OTEL_EXPORTER_OTLP_ENDPOINT", f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    )
    raw = env.get(variable, "otlp" if endpoint else "none")
    chosen = [c.strip().lower() for c in raw.split(",") if c.strip()]
    for c in chosen:
        if c not in {"none", "console", "otlp"}:
            raise TelemetryConfigError(f"{variable}={raw!r}: use none, console or otlp")
    return [c for c in chosen if c != "none"]


def _endpoint(env: Mapping[str, str], signal: str) -> str | None:
    """The OTLP/HTTP URL for one signal, as the specification derives it from `env`
    (None: the exporter's default); the exporter reads its other settings (headers,
    certificates, timeout) from the process environment itself."""
    specific = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
    if specific:
        return specific
    base = env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    return f"{base.rstrip('/')}/v1/{signal}" if base else None


def span_processors(env: Mapping[str, str]) -> list[SpanProcessor]:
    """The span processors the environment asks for (none by default)."""
    processors: list[SpanProcessor] = []
    for choice in _choices(env, "OTEL_TRACES_EXPORTER", "traces"):
        if choice == "console":
            processors.append(SimpleSpanProcessor(ConsoleSpanExporter(out=sys.stderr)))
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            processors.append(BatchSpanProcessor(OTLPSpanExporter(_endpoint(env, "traces"))))
    if env.get(TRACE_FILE_ENV):
        # batched on a background thread; flushed when the process shuts telemetry down
        exporter = JsonLinesSpanExporter(Path(env[TRACE_FILE_ENV]))
        processors.append(BatchSpanProcessor(exporter, schedule_delay_millis=500))
    return processors


def metric_readers(env: Mapping[str, str]) -> list[MetricReader]:
    """The metric readers the environment asks for (none by default)."""
    readers: list[MetricReader] = []
    for choice in _choices(env, "OTEL_METRICS_EXPORTER", "metrics"):
        if choice == "console":
            readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=sys.stderr)))
        else:
            from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
                OTLPMetricExporter,
            )

            exporter = OTLPMetricExporter(_endpoint(env, "metrics"))
            readers.append(PeriodicExportingMetricReader(exporter))
    return readers


# -- the providers -----------------------------------------------------------------------


class Telemetry:
    """One process's tracer and meter, and how to flush and stop them.

    Built explicitly (tests hand in in-memory exporters) or from the environment; never
    installed globally unless `install_global()` is called, so several orchestrators in
    one test process do not share spans.
    """

    def __init__(
        self,
        service: str,
        *,
        processors: Sequence[SpanProcessor] = (),
        readers: Sequence[MetricReader] = (),
        enabled: bool = True,
    ) -> None:
        self.service = service
        self.enabled = enabled
        self._tracer_provider: TracerProvider | None = None
        self._meter_provider: MeterProvider | None = None
        if enabled:
            resource = Resource.create({"service.name": service})
            self._tracer_provider = TracerProvider(
                resource=resource, id_generator=_CallerChosenIds()
            )
            for processor in processors:
                self._tracer_provider.add_span_processor(processor)
            self._meter_provider = MeterProvider(resource=resource, metric_readers=list(readers))
            self.tracer: trace.Tracer = self._tracer_provider.get_tracer("baton")
            self.meter: metrics.Meter = self._meter_provider.get_meter("baton")
        else:
            self.tracer = trace.NoOpTracer()
            self.meter = metrics.NoOpMeter("baton")

    @classmethod
    def from_env(cls, service: str, env: Mapping[str, str] | None = None) -> Telemetry:
        """Configured by `OTEL_*` and `BATON_TELEMETRY` / `BATON_TRACE_FILE`.

        `BATON_TELEMETRY=auto` (the default) runs the SDK only when something exports what
        it records (an exporter or a trace file): spans nobody reads cost ~30% of the
        orchestrator's time per task. `on` runs it regardless, `off` never."""
        env = os.environ if env is None else env
        switch = env.get(TELEMETRY_ENV, "auto").strip().lower()
        if switch not in {"auto", "on", "off"}:
            raise TelemetryConfigError(f"{TELEMETRY_ENV}={switch!r}: use auto, on or off")
        if switch == "off":
            return cls(service, enabled=False)
        processors, readers = span_processors(env), metric_readers(env)
        if switch == "auto" and not (processors or readers):
            return cls(service, enabled=False)
        service = env.get("OTEL_SERVICE_NAME", service)
        return cls(service, processors=processors, readers=readers)

    def install_global(self) -> None:
        """Make this the process's global provider (agent processes: for handler code that
        calls `opentelemetry.trace.get_tracer`)."""
        if self._tracer_provider is not None:
            trace.set_tracer_provider(self._tracer_provider)
        if self._meter_provider is not None:
            metrics.set_meter_provider(self._meter_provider)

    def shutdown(self) -> None:
        """Flush what exporters hold and stop them."""
        if self._tracer_provider is not None:
            self._tracer_provider.shutdown()
        if self._meter_provider is not None:
            self._meter_provider.shutdown()


# -- structured logs ---------------------------------------------------------------------

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonLogFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, the current trace and span
    ids, the exception if any, and every `extra=` field."""

    def format(self, record: logging.LogRecord) -> str:
        span = trace.get_current_span()
        trace_id, span_id = ids_of(span)
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
            "pid": record.process,
        }
        if trace_id:
            line["trace_id"], line["span_id"] = trace_id, span_id
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


SSL_EOF_NOTE = "returning true from eof_received() has no effect when using ssl"
"""What asyncio warns each time a TLS connection of nats-py's ends (its protocol's
`eof_received` returns True): nothing a user can act on."""


def _not_the_ssl_eof_note(record: logging.LogRecord) -> bool:
    return not (record.name == "asyncio" and record.getMessage() == SSL_EOF_NOTE)


def configure_logging(
    env: Mapping[str, str] | None = None, *, default_level: str = "WARNING"
) -> logging.Handler:
    """Install the root log handler `BATON_LOG_FORMAT` (text|json), `BATON_LOG_FILE` and
    `BATON_LOG_LEVEL` ask for (without asyncio's `SSL_EOF_NOTE`), in place of the one an
    earlier call installed (a command run again in one process logs each line once, and
    never to the standard error of before); returns it so a caller can remove it again."""
    env = os.environ if env is None else env
    form = env.get(LOG_FORMAT_ENV, "text").strip().lower()
    if form not in {"text", "json"}:
        raise TelemetryConfigError(f"{LOG_FORMAT_ENV}={form!r}: use text or json")
    level = env.get(LOG_LEVEL_ENV, default_level).strip().upper()
    if level not in logging.getLevelNamesMapping():
        raise TelemetryConfigError(f"{LOG_LEVEL_ENV}={level!r}: not a log level")
    handler = (
        logging.StreamHandler(private.append_text(Path(env[LOG_FILE_ENV])))  # as the process
        if env.get(LOG_FILE_ENV)
        else _StandardError()
    )
    handler.setFormatter(
        JsonLogFormatter()
        if form == "json"
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    )
    handler.addFilter(_not_the_ssl_eof_note)
    root = logging.getLogger()
    while _installed:
        root.removeHandler(_installed.pop())
    root.addHandler(handler)
    _installed.append(handler)
    root.setLevel(level)
    return handler


class _StandardError(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes each line to the standard error of the moment (`sys.stderr` as it is then,
    not as it was when logging was set up, which may be closed since)."""

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


_installed: list[logging.Handler] = []
"""The root handler `configure_logging` installed last (none, or one)."""
