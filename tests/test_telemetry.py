"""OpenTelemetry across processes: the example run is one trace whose spans, from the
orchestrator (in-memory exporter) and from every agent process (a JSON-lines file the
agents append to), form one correctly parented tree; failures are error spans with the
exception recorded; token metrics equal the usage the log charged."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import sys
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bus.connection import Bus
from bus.telemetry import (
    SSL_EOF_NOTE,
    JsonLogFormatter,
    Telemetry,
    TelemetryConfigError,
    configure_logging,
    span_processors,
    span_record,
)
from bus.tracecontext import TraceContext
from orchestrator.core.commands import DeliveryFailed
from orchestrator.core.effects import SendAssignment, effects
from orchestrator.core.events import (
    RunEvent,
    RunStarted,
    TaskAssigned,
    TaskAttemptFailed,
    TaskEscalated,
    UsageCharged,
)
from orchestrator.core.state import RunState, fold
from orchestrator.core.workflow import AgentSpec, Limits, StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.journal import Cause
from orchestrator.service.metrics import budget_remaining
from orchestrator.service.registry import Registry
from orchestrator.service.service import Orchestrator
from orchestrator.service.spans import run_span_id, task_span_id
from orchestrator.service.telemetry import OrchestratorTelemetry
from orchestrator.service.workflow_files import load
from tests.cluster import EXAMPLE, cluster


class Recorded:
    """The orchestrator's in-memory exporters and the agents' span file, read together."""

    def __init__(self, tmp_path: Path) -> None:
        self.exporter = InMemorySpanExporter()
        self.reader = InMemoryMetricReader()
        self.telemetry = Telemetry(
            "baton-orchestrator",
            processors=[SimpleSpanProcessor(self.exporter)],
            readers=[self.reader],
        )
        self.span_file = tmp_path / "agent-spans.jsonl"
        self.agents_at_end: dict[str, list[Any]] = {}
        """The agents' gauges (load, heartbeat age) read once the run ended, while every
        agent still beats: they report the agents the orchestrator knows at that moment."""

    def spans(self) -> list[dict[str, Any]]:
        ours = [span_record(s) for s in self.exporter.get_finished_spans()]
        theirs = [json.loads(line) for line in self.span_file.read_text().splitlines()]
        return ours + theirs

    def metric_points(self, name: str) -> list[Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return [
            point
            for rm in data.resource_metrics
            for sm in rm.scope_metrics
            for metric in sm.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def recorded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorded]:
    rec = Recorded(tmp_path)
    # agent processes inherit the environment: they append their spans to one file and
    # write JSON log lines (their stdout/stderr goes to the state directory's logs)
    monkeypatch.setenv("BATON_TRACE_FILE", str(rec.span_file))
    monkeypatch.setenv("BATON_LOG_FORMAT", "json")
    monkeypatch.setenv("BATON_LOG_LEVEL", "INFO")
    yield rec
    rec.telemetry.shutdown()


async def _run(
    tmp_path: Path, rec: Recorded, workflow: WorkflowSpec, base: Path
) -> tuple[RunState, list[Any]]:
    async with cluster(tmp_path / "state", telemetry=rec.telemetry) as c:
        await c.add_agents(workflow.agents, base=base)
        run_id = await c.orchestrator.start_run(workflow)
        state = await c.orchestrator.wait(run_id, timeout=60)
        stored = await c.stack.store.read_stream(journal.run_stream(run_id))
        async with asyncio.timeout(30):
            while any(a.load for a in c.orchestrator.agents()):
                await asyncio.sleep(0.05)
        for gauge in ("baton.agent.load", "baton.agent.heartbeat.age"):
            rec.agents_at_end[gauge] = rec.metric_points(gauge)
    # the agents have drained and exited here, so their spans are in the file
    return state, stored


def _by_id(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    by_id = {s["span_id"]: s for s in spans}
    assert len(by_id) == len(spans), "span ids are unique"
    return by_id


def test_example_run_is_one_trace_parented_across_processes(
    tmp_path: Path, recorded: Recorded
) -> None:
    workflow = load(EXAMPLE)
    state, stored = asyncio.run(_run(tmp_path, recorded, workflow, EXAMPLE.parent))
    assert state.status == "completed"
    spans = recorded.spans()
    by_id = _by_id(spans)

    assert {s["trace_id"] for s in spans} == {state.trace_id}, "one trace for the whole run"
    roots = [s for s in spans if not s["parent_span_id"]]
    assert [r["span_id"] for r in roots] == [run_span_id(state.trace_id)]
    assert roots[0]["name"] == "run research-brief"
    for s in spans:
        if s["parent_span_id"]:
            assert s["parent_span_id"] in by_id, f"{s['name']} has a parent in the trace"

    tasks = {"plan", "research[0]", "research[1]", "research[2]", "write"}
    task_spans = {s["attributes"]["baton.task_id"]: s for s in spans if s["name"][:5] == "task "}
    assert set(task_spans) == tasks
    for task_id, s in task_spans.items():
        assert s["span_id"] == task_span_id(state.trace_id, task_id)
        assert s["parent_span_id"] == roots[0]["span_id"]
        assert s["status"] != "ERROR"

    attempts = [s for s in spans if s["name"].startswith("attempt ")]
    assert len(attempts) == 5
    orchestrator_pid = roots[0]["pid"]
    assert len({a["pid"] for a in attempts}) == 5, "five agent processes"
    assert orchestrator_pid not in {a["pid"] for a in attempts}
    for attempt in attempts:
        dispatch = by_id[attempt["parent_span_id"]]
        assert dispatch["name"] == f"dispatch {attempt['attributes']['baton.task_id']}#1"
        assert dispatch["pid"] == orchestrator_pid
        assert dispatch["parent_span_id"] == task_span_id(
            state.trace_id, attempt["attributes"]["baton.task_id"]
        )
        decisions = [s for s in spans if s["parent_span_id"] == attempt["span_id"]]
        assert [d["name"] for d in decisions if d["name"].startswith("decide")] == [
            "decide ReportResult"
        ], "the orchestrator's decision on a result is a child of the agent's attempt"

    llm = [s for s in spans if s["name"] == "chat corpus-lookup"]
    assert len(llm) == 3
    for call in llm:
        parent = by_id[call["parent_span_id"]]
        assert parent["name"].startswith("attempt research[")
        assert call["attributes"]["gen_ai.system"] == "offline"
        assert call["attributes"]["gen_ai.request.model"] == "corpus-lookup"
        assert call["attributes"]["gen_ai.usage.output_tokens"] > 0

    # every stored event names the decision span that produced it
    for event in stored:
        assert event.trace_id == state.trace_id
        assert by_id[event.span_id]["name"].startswith("decide ")

    # token metrics equal the usage charged in the log
    charged: Counter[str] = Counter()
    for event in stored:
        decoded = journal.decode_run_event(event)
        if isinstance(decoded, UsageCharged):
            charged.update(input_tokens=decoded.input_tokens, output_tokens=decoded.output_tokens)
    assert charged["input_tokens"] > 0
    assert charged["output_tokens"] > 0
    points = recorded.metric_points("baton.tokens")
    by_type = Counter[str]()
    for p in points:
        assert p.attributes["baton.role"] == "researcher"
        by_type[str(p.attributes["gen_ai.token.type"])] += p.value
    assert by_type == {
        "input": charged["input_tokens"],
        "output": charged["output_tokens"],
    }
    started = {
        p.attributes["baton.role"]: p.value for p in recorded.metric_points("baton.tasks.started")
    }
    assert started == {"planner": 1, "researcher": 3, "writer": 1}
    succeeded = recorded.metric_points("baton.tasks.succeeded")
    assert sum(p.value for p in succeeded) == 5
    latency = recorded.metric_points("baton.task.duration")
    assert sum(p.count for p in latency) == 5
    waits = recorded.metric_points("baton.task.queue_wait")
    assert sum(p.count for p in waits) == 5
    loads = recorded.agents_at_end["baton.agent.load"]
    assert len(loads) == 5
    assert {p.attributes["baton.role"] for p in loads} == {"planner", "researcher", "writer"}
    assert all(p.value == 0 for p in loads), "nothing held once the run is over"
    ages = recorded.agents_at_end["baton.agent.heartbeat.age"]
    assert len(ages) == 5
    assert all(0 <= p.value < 5 for p in ages)
    appends = recorded.metric_points("baton.eventstore.append.duration")
    # start, plan's result, the research results (one batch or more), write's result
    assert sum(p.count for p in appends if p.attributes["baton.stream"] == "run") >= 4
    assert all(p.min >= 0 for p in appends)


def test_every_process_logs_json_lines_with_the_run_trace(
    tmp_path: Path, recorded: Recorded
) -> None:
    workflow = WorkflowSpec(
        name="two",
        agents=[AgentSpec(role="noop", handler="agents.builtin:noop")],
        steps=[StepSpec(id="a", role="noop"), StepSpec(id="b", role="noop", needs=["a"])],
    )
    ours = tmp_path / "orchestrator.log"
    handler = configure_logging(
        {"BATON_LOG_FORMAT": "json", "BATON_LOG_FILE": str(ours), "BATON_LOG_LEVEL": "INFO"}
    )
    try:
        state, stored = asyncio.run(_run(tmp_path, recorded, workflow, tmp_path))
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
        logging.getLogger().setLevel(logging.WARNING)
    assert state.status == "completed"
    # the orchestrator: one line per recorded event, with its trace and decision span
    lines = [json.loads(line) for line in ours.read_text().splitlines()]
    events = [line for line in lines if line["logger"] == "baton.events"]
    assert [(e["event_type"], e["version"]) for e in events] == [
        (s.type, s.version) for s in stored
    ]
    for line, event in zip(events, stored, strict=True):
        assert (line["trace_id"], line["span_id"]) == (event.trace_id, event.span_id)
    logs = list((tmp_path / "state" / "logs").glob("noop-*.log"))
    assert len(logs) == 1
    agent_lines = [json.loads(x) for x in logs[0].read_text().splitlines() if x[:1] == "{"]
    attempts = [line for line in agent_lines if line["logger"] == "baton.agent.attempts"]
    assert [(a["task_id"], a["event_type"]) for a in attempts] == [
        ("a", "attempt.succeeded"),
        ("b", "attempt.succeeded"),
    ]
    spans = _by_id(recorded.spans())
    for line in attempts:
        assert line["trace_id"] == state.trace_id
        assert spans[line["span_id"]]["name"] == f"attempt {line['task_id']}#1"


def test_a_failing_task_is_an_error_span_with_its_exception(
    tmp_path: Path, recorded: Recorded
) -> None:
    workflow = WorkflowSpec(
        name="doomed",
        agents=[AgentSpec(role="worker", handler="agents.builtin:fail", count=2)],
        steps=[StepSpec(id="bad", role="worker", max_attempts=2)],
    )
    state, _ = asyncio.run(_run(tmp_path, recorded, workflow, tmp_path))
    assert state.status == "failed"
    spans = recorded.spans()

    (task,) = [s for s in spans if s["name"] == "task bad"]
    assert task["status"] == "ERROR"
    assert "bad fails on purpose" in task["status_description"]
    assert [e["name"] for e in task["events"]] == ["exception"]

    attempts = sorted((s for s in spans if s["name"].startswith("attempt bad#")),
                      key=lambda s: s["name"])  # fmt: skip
    assert [a["name"] for a in attempts] == ["attempt bad#1", "attempt bad#2"]
    for attempt in attempts:
        assert attempt["status"] == "ERROR"
        (exc,) = [e for e in attempt["events"] if e["name"] == "exception"]
        assert exc["attributes"]["exception.type"] == "agents.sdk.TaskError"
        assert exc["attributes"]["exception.message"] == "bad fails on purpose"

    (retry,) = [s for s in spans if s["name"] == "retry bad#1"]
    assert retry["parent_span_id"] == task["span_id"]
    assert retry["status"] == "ERROR"
    (run,) = [s for s in spans if not s["parent_span_id"]]
    assert run["status"] == "ERROR"

    failed = recorded.metric_points("baton.tasks.failed")
    assert [(p.attributes["baton.role"], p.value) for p in failed] == [("worker", 1)]
    retried = recorded.metric_points("baton.tasks.retried")
    assert [(p.attributes["reason"], p.value) for p in retried] == [("error", 1)]


def test_json_log_lines_carry_the_current_trace(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry("t", processors=[SimpleSpanProcessor(exporter)])
    path = tmp_path / "log.jsonl"
    handler = configure_logging({"BATON_LOG_FORMAT": "json", "BATON_LOG_FILE": str(path)})
    try:
        with telemetry.tracer.start_as_current_span("work") as span:
            logging.getLogger("baton.test").warning("inside %s", "work", extra={"k": 1})
        logging.getLogger("baton.test").warning("outside")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    inside, outside = (json.loads(line) for line in path.read_text().splitlines())
    ctx = span.get_span_context()
    assert inside["msg"] == "inside work"
    assert inside["k"] == 1
    assert inside["trace_id"] == format(ctx.trace_id, "032x")
    assert inside["span_id"] == format(ctx.span_id, "016x")
    assert "trace_id" not in outside
    assert isinstance(JsonLogFormatter().format(logging.makeLogRecord({"msg": "x"})), str)


def test_exporters_come_from_the_standard_environment() -> None:
    assert span_processors({}) == []
    console = span_processors({"OTEL_TRACES_EXPORTER": "console"})
    assert [type(p).__name__ for p in console] == ["SimpleSpanProcessor"]
    otlp = span_processors({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:1"})
    assert [type(p).__name__ for p in otlp] == ["BatchSpanProcessor"]
    for p in otlp:
        p.shutdown()
    assert span_processors({"OTEL_TRACES_EXPORTER": "none"}) == []
    off = Telemetry.from_env("x", {"BATON_TELEMETRY": "off"})
    assert not off.enabled
    assert not off.tracer.start_span("s").get_span_context().is_valid
    assert trace.get_current_span().get_span_context().is_valid is False
    # auto, the default: the SDK only when something exports what it records
    assert not Telemetry.from_env("x", {}).enabled
    assert not Telemetry.from_env("x", {"BATON_TELEMETRY": "auto"}).enabled
    forced = Telemetry.from_env("x", {"BATON_TELEMETRY": "on"})
    assert forced.enabled
    assert forced.tracer.start_span("s").get_span_context().is_valid
    forced.shutdown()
    exporting = Telemetry.from_env("x", {"OTEL_TRACES_EXPORTER": "console"})
    assert exporting.enabled
    exporting.shutdown()


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_TRACES_EXPORTER": "zipkin"},
        {"OTEL_METRICS_EXPORTER": "prometheus"},
        {"BATON_TELEMETRY": "maybe"},
    ],
)
def test_bad_telemetry_settings_are_refused(env: dict[str, str]) -> None:
    with pytest.raises(TelemetryConfigError):
        Telemetry.from_env("x", env)


@pytest.mark.parametrize("env", [{"BATON_LOG_FORMAT": "xml"}, {"BATON_LOG_LEVEL": "LOUD"}])
def test_bad_log_settings_are_refused(env: dict[str, str]) -> None:
    before = list(logging.getLogger().handlers)
    with pytest.raises(TelemetryConfigError):
        configure_logging(env)
    assert logging.getLogger().handlers == before, "nothing changed"


def test_pattern_events_get_spans_and_charged_usage_counts() -> None:
    """Events other modules add (escalations, limits, usage charged as its own event) are
    traced and measured by their type, with no code naming them here."""
    exporter = InMemorySpanExporter()
    reader = InMemoryMetricReader()
    telemetry = Telemetry("t", processors=[SimpleSpanProcessor(exporter)], readers=[reader])
    workflow = WorkflowSpec(name="w", steps=[StepSpec(id="a", role="r")])
    started = fold(RunState("r1"), [RunStarted("r1", workflow, {}, "ab" * 16, "cli", 10.0)])
    obs = OrchestratorTelemetry(telemetry, Registry(1.0), {"r1": started}, lambda: 0.0)
    events: list[RunEvent] = [
        UsageCharged("a", 1, 42, 11.0, input_tokens=30, output_tokens=12),
        TaskEscalated("a", "needs a human", 12.0),
    ]
    obs.recorded(started, started, events, ["", ""])
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"usage.charged", "task.escalated"}
    span = spans["task.escalated"]
    assert span.parent is not None
    assert format(span.parent.span_id, "016x") == task_span_id("ab" * 16, "a")
    assert span.attributes is not None
    assert span.attributes["baton.event.error"] == "needs a human"
    data = reader.get_metrics_data()
    assert data is not None
    tokens = [
        (dict(p.attributes or {}), p.value)
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "baton.tokens"
        for p in m.data.data_points
        if isinstance(p, NumberDataPoint)
    ]
    assert sorted(tokens, key=str) == [
        ({"baton.role": "r", "gen_ai.token.type": "input"}, 30),
        ({"baton.role": "r", "gen_ai.token.type": "output"}, 12),
    ]
    telemetry.shutdown()


def test_budget_remaining_is_the_run_budget_less_what_was_spent() -> None:
    workflow = WorkflowSpec(name="w", steps=[StepSpec(id="a", role="r")])
    assert budget_remaining(RunState("r1", workflow=workflow)) is None
    budgeted = msgspec.structs.replace(workflow, limits=Limits(tokens=100))
    assert budget_remaining(RunState("r1", workflow=budgeted, tokens_spent=30)) == 70


def test_an_undeliverable_assignment_fails_its_dispatch_span() -> None:
    exporter = InMemorySpanExporter()
    telemetry = Telemetry("t", processors=[SimpleSpanProcessor(exporter)])
    trace_id = "ab" * 16
    workflow = WorkflowSpec(name="w", steps=[StepSpec(id="a", role="r")])
    assigned = TaskAssigned("a", 1, "agent-1", "lease", "only one", 11.0, 0.0)
    state = fold(RunState("r1"), [RunStarted("r1", workflow, {}, trace_id, "cli", 10.0), assigned])
    obs = OrchestratorTelemetry(telemetry, Registry(1.0), {"r1": state}, lambda: 0.0)
    (send_effect, _) = effects(state, [assigned])
    assert isinstance(send_effect, SendAssignment)
    span, sent_with = obs.dispatch_span(send_effect, TraceContext(trace_id, "cd" * 8))
    obs.dispatched(span, "no responders")
    failed = TaskAttemptFailed("a", 1, "agent-1", "undeliverable", "no responders", 1.0, 12.0)
    command = DeliveryFailed("a", 1, "no responders")
    obs.decided(state, command, Cause("a:1:undeliverable", "orchestrator"), [failed], 0)
    spans = {s.name: s for s in exporter.get_finished_spans()}
    dispatch, decision = spans["dispatch a#1"], spans["decide DeliveryFailed"]
    assert dispatch.status.status_code.name == "ERROR"
    assert dispatch.status.description == "no responders"
    assert dispatch.context is not None
    assert sent_with.span_id == format(dispatch.context.span_id, "016x")
    assert dispatch.parent is not None
    assert format(dispatch.parent.span_id, "016x") == task_span_id(trace_id, "a")
    assert decision.parent is not None
    assert format(decision.parent.span_id, "016x") == task_span_id(trace_id, "a")
    telemetry.shutdown()


def test_otlp_exports_to_the_endpoint_the_standard_variables_name() -> None:
    """A real OTLP/HTTP receiver on a free port gets the spans and the metrics."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    received: dict[str, list[bytes]] = {}

    class Receiver(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.setdefault(self.path, []).append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        telemetry = Telemetry.from_env(
            "baton-test", {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": "svc"}
        )
        with telemetry.tracer.start_as_current_span("exported", attributes={"k": "v"}):
            pass
        telemetry.meter.create_counter("baton.test.counter").add(3)
        telemetry.shutdown()  # flushes the batch processor and the periodic reader
    finally:
        server.shutdown()
        server.server_close()
    (traces,) = received["/v1/traces"]
    request = ExportTraceServiceRequest.FromString(traces)
    (resource_spans,) = request.resource_spans
    service = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert service["service.name"] == "svc"
    names = [s.name for ss in resource_spans.scope_spans for s in ss.spans]
    assert names == ["exported"]
    metrics_request = ExportMetricsServiceRequest.FromString(received["/v1/metrics"][-1])
    counters = [
        point.as_int
        for rm in metrics_request.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "baton.test.counter"
        for point in metric.sum.data_points
    ]
    assert counters == [3]


def test_console_exporter_writes_spans_to_standard_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    telemetry = Telemetry.from_env("svc", {"OTEL_TRACES_EXPORTER": "console"})
    with telemetry.tracer.start_as_current_span("shown"):
        pass
    telemetry.shutdown()
    out, err = capsys.readouterr()
    assert out == ""
    assert json.loads(err)["name"] == "shown"


def test_a_run_finished_by_a_restarted_orchestrator_is_still_one_tree(
    tmp_path: Path, recorded: Recorded
) -> None:
    """Run and task span ids are derived from the run's trace id, so the second
    orchestrator parents its spans under the same run and task spans the first one did."""
    workflow = WorkflowSpec(
        name="restarted",
        steps=[
            # longer than the stopped orchestrator's last inbox fetch can wait (1 s), so no
            # result goes to a fetch nobody reads any more (redelivered only after 30 s)
            StepSpec(id="fan", role="worker", fan_out=2, params={"seconds": 1.5}),
            StepSpec(id="join", role="worker", needs=["fan"], params={"seconds": 0}),
        ],
    )
    workers = [AgentSpec(role="worker", handler="agents.builtin:sleep", count=2)]
    second_exporter = InMemorySpanExporter()
    second_telemetry = Telemetry(
        "baton-orchestrator", processors=[SimpleSpanProcessor(second_exporter)]
    )

    async def scenario() -> RunState:
        async with cluster(tmp_path / "state", telemetry=recorded.telemetry) as c:
            await c.add_agents(workers)
            run_id = await c.orchestrator.start_run(workflow)
            state = await c.until(run_id, lambda s: s.tasks["fan[1]"].status == "running")
            for task_id in ("fan[0]", "fan[1]"):  # the first orchestrator's dispatches landed
                await c.until_held(state.tasks[task_id].agent_id, run_id, task_id, 1)
            await c.orchestrator.stop()
            bus = await Bus.connect(c.stack.nats_url, name="orchestrator-2")
            second = Orchestrator(
                bus, c.stack.store, agent_ttl=1.0, tick_s=0.05, telemetry=second_telemetry
            )
            await second.start()
            final = await second.wait(run_id, timeout=30)
            await second.stop()
            await bus.close()
            return final

    final = asyncio.run(scenario())
    assert final.status == "completed"
    first = [span_record(s) for s in recorded.exporter.get_finished_spans()]
    second = [span_record(s) for s in second_exporter.get_finished_spans()]
    spans = recorded.spans() + second
    by_id = _by_id(spans)
    assert {s["trace_id"] for s in spans} == {final.trace_id}
    (root,) = [s for s in spans if not s["parent_span_id"]]
    assert root["span_id"] == run_span_id(final.trace_id)
    assert root in second, "the orchestrator that saw the run end emitted its span"
    assert all(s["parent_span_id"] in by_id for s in spans if s["parent_span_id"])
    assert {s["name"] for s in first} >= {"decide StartRun", "dispatch fan[0]#1"}
    assert {s["name"] for s in second} >= {"task fan[0]", "task join", "dispatch join#1"}
    second_telemetry.shutdown()


def test_the_log_leaves_out_asyncios_note_on_each_tls_connection_closed(tmp_path: Path) -> None:
    path = tmp_path / "baton.log"
    handler = configure_logging({"BATON_LOG_FILE": str(path)})
    try:
        logging.getLogger("asyncio").warning(SSL_EOF_NOTE)
        logging.getLogger("asyncio").warning("another asyncio warning")
        logging.getLogger("baton.x").warning(SSL_EOF_NOTE)  # only asyncio's is left out
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2, lines
    assert lines[0].endswith("WARNING asyncio another asyncio warning")
    assert lines[1].endswith(f"WARNING baton.x {SSL_EOF_NOTE}")


def test_logging_configured_again_replaces_its_handler(tmp_path: Path) -> None:
    """A command run twice in one process (as tests do) logs each line once, to the newer
    destination only."""
    root = logging.getLogger()
    before = list(root.handlers)
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    configure_logging({"BATON_LOG_FILE": str(first)})
    handler = configure_logging({"BATON_LOG_FILE": str(second)})
    try:
        assert [h for h in root.handlers if h not in before] == [handler]
        logging.getLogger("baton.test").warning("once")
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(logging.WARNING)
    assert first.read_text() == ""
    assert second.read_text().count("once") == 1


def test_logging_to_standard_error_writes_to_the_one_of_the_moment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Set up while one standard error was in place (a test's capture, since closed), it
    writes to the one in place when a line is logged, never to the closed one."""
    root = logging.getLogger()
    first, second = io.StringIO(), io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    handler = configure_logging({})
    try:
        first.close()
        monkeypatch.setattr(sys, "stderr", second)
        logging.getLogger("baton.test").warning("now")
    finally:
        root.removeHandler(handler)
        root.setLevel(logging.WARNING)
    assert second.getvalue().endswith("WARNING baton.test now\n"), second.getvalue()
