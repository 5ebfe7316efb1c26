"""docs/protocol.md says everything the code does on the wire: every subject, message,
field, error code, report code and assignment input key found in the code appears in it,
and every timing it states is the code's. Each list is computed from the code (by
introspection or by reading its syntax tree), so adding one without documenting it fails
here."""

from __future__ import annotations

import ast
import importlib
import inspect
import pkgutil
import re
import textwrap
from collections.abc import Callable, Iterator
from typing import Any

import msgspec
import pytest

from agents import outbox, runtime
from bus import connection, inbox, protocol, subjects
from orchestrator.core import decide, effects, evolve_attempts, patterns, replan, report_check
from orchestrator.core.workflow import StepSpec
from orchestrator.service import api, bootstrap, registry, reports, service
from tests.cluster import REPO

DOC = (REPO / "docs" / "protocol.md").read_text()
PACKAGES = ("bus", "orchestrator", "agents", "eventstore")
EXTRAS_ONLY = {"a2a", "mcp"}
"""What only an optional extra brings (`interop`): the lowest-deps tier runs without it."""


def _modules() -> Iterator[Any]:
    for package in PACKAGES:
        root = importlib.import_module(package)
        yield root
        for info in pkgutil.walk_packages(root.__path__, f"{package}."):
            if info.name.endswith("__main__"):
                continue
            try:
                module = importlib.import_module(info.name)
            except ModuleNotFoundError as exc:  # read where the extra is (the main tier)
                if (exc.name or "").split(".")[0] not in EXTRAS_ONLY:
                    raise
                continue
            yield module


def _builders() -> list[Callable[..., str]]:
    """The functions of `bus.subjects` that build a subject from tokens (not `token`, not
    the parsers, which take a subject)."""
    found: list[Callable[..., str]] = []
    for name, fn in vars(subjects).items():
        if not inspect.isfunction(fn) or fn.__module__ != subjects.__name__ or name == "token":
            continue
        if list(inspect.signature(fn).parameters) != ["subject"]:
            found.append(fn)
    return found


def test_every_discovery_subject_is_documented() -> None:
    for verb in subjects.DISCOVERY_VERBS:
        assert f"`{verb}`" in DOC, f"the discovery verb {verb} is not documented"
    for name in (subjects.AGENT_SERVICE, subjects.ORCHESTRATOR_SERVICE):
        for built in subjects.discovery_all(name, "ID"):
            verb = built.split(".")[1]
            shown = built.replace(f".{verb}", ".<VERB>", 1).removesuffix(".ID")
            assert f"`{shown}`" in DOC, f"`{shown}` is not documented"
            assert f"`{shown}.<" in DOC or shown.count(".") < 2, f"`{shown}.<id>` is not documented"


def test_every_subject_is_documented() -> None:
    builders = _builders()
    assert len(builders) >= 15, "the subject builders were not found"
    for fn in builders:
        if fn in (subjects.discovery, subjects.discovery_all):
            continue  # a closed set of verbs and names: test_every_discovery_subject_is_documented
        names = list(inspect.signature(fn).parameters)
        built = fn(*[f"PARAM{n}" for n in range(len(names))])
        for n, name in enumerate(names):
            built = built.replace(f"PARAM{n}", f"<{name}>")
        assert f"`{built}`" in DOC, f"subjects.{fn.__name__}: `{built}` is not in the document"
    constants = {
        name: value
        for name, value in vars(subjects).items()
        if name.isupper() and isinstance(value, str) and not name.startswith("_")
    }
    assert len(constants) >= 14
    for name, value in constants.items():
        assert f"`{value}`" in DOC, f"subjects.{name}: `{value}` is not in the document"


def _structs(module: Any) -> list[type[msgspec.Struct]]:
    return [
        value
        for name, value in vars(module).items()
        if isinstance(value, type)
        and issubclass(value, msgspec.Struct)
        and value.__module__ == module.__name__
        and not name.startswith("_")
    ]


def test_every_message_and_field_of_the_wire_is_documented() -> None:
    structs = _structs(protocol)
    assert len(structs) >= 25
    for struct in structs:
        assert f'"title": "{struct.__name__}"' in DOC or f'"{struct.__name__}": {{' in DOC, (
            f"{struct.__name__} has no schema in the document"
        )
        for field in msgspec.structs.fields(struct):
            assert f'"{field.encode_name}": {{' in DOC, f"{struct.__name__}.{field.name}"


def test_every_api_request_and_reply_is_documented() -> None:
    tagged = [s for s in _structs(api) if isinstance(s.__struct_config__.tag, str)]
    assert len(tagged) >= 10
    section = DOC.split("## The `baton.api.*` subjects", 1)[1].split("\n## ", 1)[0]
    for struct in tagged:
        assert f"`{struct.__struct_config__.tag}`" in section, struct.__name__
        for field in msgspec.structs.fields(struct):
            assert f"`{field.name}`" in section, f"{struct.__name__}.{field.name}"
    for field in msgspec.structs.fields(api.AgentStatus):
        assert f"`{field.name}`" in section, f"AgentStatus.{field.name}"


def _subclasses(cls: type) -> set[type]:
    found = {cls}
    sub: type
    for sub in cls.__subclasses__():
        found |= _subclasses(sub)
    return found


def _error_codes() -> set[str]:
    """Every `ErrorReply.error` the code can send: literal codes, and for each
    `ErrorReply(type(exc).__name__, ...)` every class the caught (or declared) exception
    may be, except the catch-all `Exception` (a bug) and classes of the CLI, which answers
    no request."""
    codes: set[str] = set()
    bases: set[type] = set()
    for module in _modules():
        source = inspect.getsource(module)
        if "ErrorReply(" not in source:
            continue
        tree = ast.parse(source)
        parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
        for call in ast.walk(tree):
            if not (isinstance(call, ast.Call) and getattr(call.func, "id", "") == "ErrorReply"):
                continue
            first = call.args[0]
            if isinstance(first, ast.Constant):
                codes.add(str(first.value))
                continue
            assert ast.unparse(first).startswith("type("), ast.unparse(call)
            node: ast.AST = call
            while not isinstance(node, ast.ExceptHandler | ast.FunctionDef | ast.AsyncFunctionDef):
                node = parents[node]
            if isinstance(node, ast.ExceptHandler):
                assert node.type is not None
                kinds = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
                names = [ast.unparse(k) for k in kinds]
            else:  # an exception handed in: its annotation
                names = [
                    ast.unparse(a.annotation)
                    for a in node.args.args
                    if a.arg == "exc" and a.annotation is not None
                ]
            for name in names:
                if name != "Exception":
                    bases.add(getattr(module, name))
    assert bases, "no ErrorReply(type(exc).__name__) found"
    for base in bases:
        codes |= {
            c.__name__ for c in _subclasses(base) if not c.__module__.startswith("orchestrator.cli")
        }
    return codes


def test_every_error_code_is_documented() -> None:
    codes = _error_codes()
    assert {"NotRecorded", "HandlingFailed", "MalformedMessage", "WorkflowError"} <= codes
    section = DOC.split("## Error codes", 1)[1].split("\n## ", 1)[0]
    missing = sorted(code for code in codes if f"`{code}`" not in section)
    assert not missing, f"error codes the document does not list: {missing}"


def test_every_report_code_the_core_gives_is_known_and_documented() -> None:
    tree = ast.parse(textwrap.dedent(inspect.getsource(report_check.refusal)))
    given = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Return) and isinstance(node.value, ast.Tuple):
            first = node.value.elts[0]
            if isinstance(first, ast.Constant):
                given.add(first.value)
            else:
                given.add(getattr(report_check, ast.unparse(first)))
    assert len(given) >= 9
    assert given <= set(protocol.REPORT_CODES), given - set(protocol.REPORT_CODES)
    section = DOC.split("## Reports and their answers", 1)[1].split("\n## ", 1)[0]
    for code in protocol.REPORT_CODES:
        assert f"| `{code or '(empty)'}` |" in section, code


def _input_keys(fn: Callable[..., Any]) -> set[str]:
    """The string keys `fn` puts in a dict it builds: `{"key": ...}`, `x["key"] = ...`."""
    keys: set[str] = set()
    for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(fn)))):
        if isinstance(node, ast.Dict):
            constants = [k for k in node.keys if isinstance(k, ast.Constant)]
            keys |= {k.value for k in constants if isinstance(k.value, str)}
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.ctx, ast.Store)
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, str)
        ):
            keys.add(node.slice.value)
    return keys


def test_every_key_of_an_assignment_s_input_is_documented() -> None:
    builders: list[Callable[..., Any]] = [
        effects.task_input, effects.extra_input, replan.planner_input, patterns.transcript,
        evolve_attempts.handed_off,
    ]  # fmt: skip
    keys = set().union(*(_input_keys(fn) for fn in builders))
    assert {"input", "params", "index", "deps", "context", "transcript", "memory_refs"} <= keys
    section = DOC.split("### The `input` of an assignment", 1)[1].split("\n## ", 1)[0]
    missing = sorted(key for key in keys if f'"{key}"' not in section and f"`{key}`" not in section)
    assert not missing, f"input keys the document does not describe: {missing}"


def _row(name: str) -> str:
    [row] = [line for line in DOC.splitlines() if line.startswith(f"| {name} |")]
    return row


def _default(fn: Callable[..., Any], parameter: str) -> Any:
    return inspect.signature(fn).parameters[parameter].default


def _step_default(name: str) -> Any:
    [field] = [f for f in msgspec.structs.fields(StepSpec) if f.name == name]
    return field.default


_REDELIVERY = [
    reports._RETRY_S,
    reports.MAX_DELIVERIES,
    reports.failed_backoff_s(1),
    reports.failed_backoff_s(99),
]


@pytest.mark.parametrize(
    ("row", "values"),
    [
        ("heartbeat interval", [registry.HEARTBEAT_S, runtime.HEARTBEAT_S]),
        ("agent TTL (drop-out)", [registry.AGENT_TTL]),
        ("tick", [_default(bootstrap.bootstrap, "tick_s"), _default(service.Orchestrator, "tick_s")]),  # noqa: E501
        ("attempt timeout", [_step_default("timeout_s")]),
        ("retry backoff", [decide.BACKOFF_BASE_S, decide.BACKOFF_CAP_S]),
        ("assignment reply", [_default(service.Orchestrator, "assign_timeout")]),
        ("assignment ack wait", [outbox.ACK_WAIT_S]),
        ("report reply", [outbox.REPORT_TIMEOUT_S]),
        ("inbox redelivery", _REDELIVERY),
        ("contract-net bid window", [_step_default("bid_window_s")]),
        ("drain, bus down", [runtime.OFFLINE_DRAIN_S]),
    ],
)  # fmt: skip
def test_each_timing_in_the_document_is_the_code_s(row: str, values: list[object]) -> None:
    text = _row(row)
    for value in values:
        assert re.search(rf"(?<![\d.]){re.escape(str(value))}(?![\d.])", text), (
            f"{row}: {value} is not what the document says: {text}"
        )


def test_the_batching_and_redelivery_figures_are_the_code_s() -> None:
    assert "ack_wait=ACK_WAIT_S," in inspect.getsource(connection)
    redelivery = _row("inbox redelivery")
    assert f"ack wait {inbox.ACK_WAIT_S:g}, kept alive after {inbox.KEEP_AFTER_S:g}" in redelivery
    assert f"for at most {inbox.KEEP_AT_MOST_S:g};" in redelivery
    batching = DOC.split("**Batching windows.**", 1)[1].split("\n\n", 1)[0]
    assert f"at most {outbox.MAX_BATCH} per message" in batching
    direct, durable = outbox.IN_FLIGHT["direct"], outbox.IN_FLIGHT["durable"]
    assert f"up to {direct} direct reports ({durable} durable message)" in batching
    assert f"up to {_default(service.Orchestrator, 'fetch_batch')} inbox messages" in batching
