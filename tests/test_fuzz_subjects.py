"""Fuzzing every subject a governed agent or anyone else on the bus can publish to, during
a real run (issue 12): generated malformed, deeply nested, huge, wrong-typed and
unicode-odd messages, in msgpack or JSON, with odd headers, from a governed agent's own
credentials (what a rogue agent can reach) and from the orchestrator's (every subject:
what anyone reaches on an open bus). Afterwards the run completes, a new run completes,
every loop is alive and never crashed, nothing is left in the inbox, and what the
orchestrator keeps per sender and the audit it writes stay within their bounds.

One shared stack and a few hundred examples keep it near half a minute.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

import msgspec
import msgspec.inspect as mi
import nats
import nats.errors
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from bus import protocol, subjects
from bus.codec import ENCODING_HEADER, MAX_DEPTH, Decoder, encode, to_msgpack
from bus.permissions import inbox_prefix
from orchestrator.core.errors import WorkflowError
from orchestrator.core.events import (
    AgentRefused,
    MessageDeadLettered,
    MessageRejected,
    SystemEvent,
)
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec, validate
from orchestrator.service import api, system_journal
from orchestrator.service.reports import RECORDED_LIMIT
from tests.cluster import Cluster, cluster
from tests.test_poison import inbox_drained, system_events

EXAMPLES = 300
ROLE = "worker"
CONTRACTS = f"""
[[roles]]
name = "{ROLE}"
tools = ["echo"]
memory = {{ read = ["run"], write = ["run"] }}
concurrency = 4
"""
ROGUE = "worker-rogue"
STEPS = 8
RUN = WorkflowSpec(
    name="fuzzed",
    steps=[
        StepSpec(f"s{i}", ROLE, needs=[f"s{i - 1}"] if i else [], params={"seconds": 1.0})
        for i in range(STEPS)
    ],
)
ODD = ["", " ", ".", "*", ">", "a.b", "\x00", "\u202e", "\ufeff", "é", "😀", "\U0001d518",
       "e\u0301", "x" * 300, "baton.inbox.>", "..", "\t\n"]  # fmt: skip
DEPTHS = [MAX_DEPTH - 2, MAX_DEPTH + 1, 1000, 50_000]
ANY_FIELDS = ["output", "input", "params", "result"]
"""Fields that take any value (user data): a deep value there is decoded all the way."""
HUGE = [900_000, 1024 * 1024 + 1]

TYPES: dict[str, list[type[msgspec.Struct]]] = {
    "heartbeat": [protocol.Heartbeat],
    "inbox": [protocol.TaskResult, protocol.TaskFailure, protocol.ReportBatch,
              protocol.ToolCallRecord, protocol.MemoryWrite],
    "report": [protocol.TaskResult, protocol.TaskFailure, protocol.ReportBatch],
    "bids": [protocol.Bid],
    "memory": [protocol.MemorySearch],
    "tool": [protocol.ToolInvocation],
    "approval": [protocol.ToolCallRecord],
    "decision": [protocol.ToolDecision],
    "assign": [protocol.Assignment, protocol.AssignBatch, protocol.Control],
    "cfp": [protocol.CallForProposals],
    "start": [api.StartRunRequest],
    "control": [api.RunControlRequest],
    "status": [api.StatusRequest],
    "agents": [api.AgentsRequest],
    "events": [protocol.ProgressBatch],
}  # fmt: skip
"""What each kind of subject accepts: the templates the fuzzer starts from."""


@dataclass(frozen=True)
class Target:
    """A subject, the kind of messages it takes, and who publishes there."""

    subject: str
    kind: str
    identity: str  # "rogue" (a governed agent's credentials) or "root" (everything)


@dataclass
class Fuzzed:
    """The shared stack, the run going on in it, and a connection per identity."""

    loop: asyncio.AbstractEventLoop
    c: Cluster
    run_id: str
    agents: list[str]
    clients: dict[str, Client]
    targets: list[Target] = field(default_factory=list)
    started: float = 0.0
    audits_before: int = 0

    def ids(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "agent_id": ROGUE, "task_id": "s0", "role": ROLE}


def targets_of(run_id: str, agents: list[str]) -> list[Target]:
    """Every subject the rogue agent may publish to, and every subject Baton listens on."""
    rogue = [
        (subjects.heartbeat(ROGUE), "heartbeat"),
        (subjects.inbox(run_id, ROGUE), "inbox"),
        (subjects.report(run_id, ROGUE), "report"),
        (subjects.bids(run_id, ROGUE), "bids"),
        (subjects.memory_search(ROGUE), "memory"),
        (subjects.tool_call("echo"), "tool"),
        (subjects.tool_approval(run_id, ROGUE), "approval"),
        (subjects.inbox(run_id, agents[0]), "inbox"),  # refused by the server
    ]
    root = [
        *rogue,
        *[(subjects.assign(a), "assign") for a in agents],
        *[(subjects.control(a), "assign") for a in agents],
        *[(subjects.heartbeat(a), "heartbeat") for a in agents],
        *[(subjects.inbox(run_id, a), "inbox") for a in agents],
        *[(subjects.report(run_id, a), "report") for a in agents],
        *[(subjects.memory_search(a), "memory") for a in agents],
        (subjects.inbox("other-run", ROGUE), "inbox"),
        (subjects.report("other-run", "nobody"), "report"),
        (subjects.cfp(ROLE), "cfp"),
        (subjects.tool_decision(agents[0], "call-1"), "decision"),
        (subjects.tool_approval(run_id, agents[0]), "approval"),
        (subjects.progress(run_id), "events"),
        (subjects.run_start("human:rogue"), "start"),
        (subjects.run_control("human:rogue"), "control"),
        (subjects.API_STATUS, "status"),
        (subjects.API_AGENTS, "agents"),
    ]
    return [Target(s, k, "rogue") for s, k in rogue] + [Target(s, k, "root") for s, k in root]


def template(struct: type[msgspec.Struct], ids: dict[str, Any]) -> dict[str, Any]:
    """A plausible message of `struct`: its required fields with simple values, the ids
    of the live run where a field is named so (so it gets past the first checks)."""
    info = mi.type_info(struct)
    assert isinstance(info, mi.StructType)
    out: dict[str, Any] = {info.tag_field: info.tag} if info.tag_field else {}
    for f in info.fields:
        if f.required:
            out[f.encode_name] = ids.get(f.name, _value(f.type, ids))
    return out


def _value(t: mi.Type, ids: dict[str, Any]) -> Any:
    match t:
        case mi.StrType():
            return "x"
        case mi.IntType():
            return 1
        case mi.FloatType():
            return 0.5
        case mi.BoolType():
            return True
        case mi.LiteralType():
            return t.values[0]
        case mi.StructType():
            return template(t.cls, ids)
        case mi.UnionType():
            return _value(t.types[0], ids)
        case mi.ListType():
            return []
        case mi.DictType():
            return {}
    return None


scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=20)
    | st.sampled_from(ODD)
    | st.binary(max_size=20)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def map_header(n: int) -> bytes:
    return bytes([0x80 + n]) if n < 16 else b"\xde" + n.to_bytes(2, "big")


def with_raw_field(fields: dict[str, Any], name: str, raw: bytes, encoding: str) -> bytes:
    """`fields` encoded, plus field `name` holding `raw` (already encoded) bytes."""
    if encoding == "json":
        head = msgspec.json.encode(fields)[:-1]
        return head + (b"," if fields else b"") + msgspec.json.encode(name) + b":" + raw + b"}"
    body = b"".join(encode(k) + encode(v) for k, v in fields.items())
    return map_header(len(fields) + 1) + body + encode(name) + raw


def deep(depth: int, encoding: str) -> bytes:
    if encoding == "json":
        return b"[" * depth + b"1" + b"]" * depth
    return b"\x91" * depth + b"\x01"


@st.composite
def payloads(draw: st.DrawFn, kind: str, ids: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """(bytes, headers) of one generated message for a subject of `kind`."""
    encoding = draw(st.sampled_from(["msgpack", "json"]))
    fields = template(draw(st.sampled_from(TYPES[kind])), ids)
    shapes = ["bytes", "template", "mutant", "mutant", "deep", "deep", "huge", "odd-ids"]
    shape = draw(st.sampled_from(shapes))
    if shape == "bytes":
        data = draw(st.binary(max_size=300))
    elif shape == "deep":
        # mostly where any value is welcome (so the decoder must descend), else anywhere
        name = draw(st.sampled_from(ANY_FIELDS) | st.sampled_from([*fields, "kind"]))
        fields.pop(name, None)
        data = with_raw_field(fields, name, deep(draw(st.sampled_from(DEPTHS)), encoding), encoding)
    elif shape == "huge":
        size = draw(st.sampled_from(HUGE))
        data = with_raw_field(
            fields, draw(st.sampled_from(["output", "x"])), encode("h" * size), ""
        )
        encoding = "msgpack"
    else:
        if shape == "mutant":
            for name in draw(st.lists(st.sampled_from([*fields, "kind", "extra"]), max_size=3)):
                fields[name] = draw(values)
            for name in draw(st.lists(st.sampled_from(list(fields) or ["kind"]), max_size=1)):
                fields.pop(name, None)
        elif shape == "odd-ids":
            for name in ("run_id", "agent_id", "task_id", "role", "kind"):
                if name in fields:
                    fields[name] = draw(st.sampled_from(ODD))
        codec = msgspec.json if encoding == "json" else msgspec.msgpack
        try:
            data = codec.encode(fields)
        except (TypeError, ValueError, OverflowError):  # JSON cannot say NaN or bytes keys
            data, encoding = encode(fields), "msgpack"
    headers: dict[str, str] = {}
    header = draw(st.sampled_from(["none", "encoding", "odd-encoding", "trace", "msg-id"]))
    if header == "encoding" or encoding == "json":
        headers[ENCODING_HEADER] = encoding
    if header == "odd-encoding":
        headers[ENCODING_HEADER] = draw(st.sampled_from(["xml", "JSON", "", "msgpack;q=1", "é"]))
    if header == "trace":
        headers["traceparent"] = draw(st.sampled_from(["00-" + "0" * 32, "junk", "00-" * 40]))
    if header == "msg-id":
        headers["Nats-Msg-Id"] = draw(st.text(alphabet="abcdefgh:-_0123456789", max_size=40))
    return data, headers


def harmless(target: Target, data: bytes, headers: dict[str, str], run_id: str) -> bool:
    """False for what only a legitimate orchestrator or person would send: valid
    assignments or controls to the real agents, a valid workflow to start, a valid
    decision on the live run (the orchestrator's credentials may send them, by design)."""
    if target.identity != "root":
        return True
    try:
        msgpack = to_msgpack(data, headers.get(ENCODING_HEADER, ""))
    except Exception:  # Baton refuses it too
        return True
    if target.kind == "assign":
        return _refused(Decoder(protocol.AgentInbound), msgpack)
    if target.kind == "control":
        decoded = _decoded(Decoder(api.RunControlRequest), msgpack)
        return decoded is None or decoded.run_id != run_id
    if target.kind == "start":
        request = _decoded(Decoder(api.StartRunRequest), msgpack)
        if request is None:
            return True
        try:
            validate(request.workflow)
        except (WorkflowError, Exception):
            return True
        return False
    return True


def _decoded(decoder: Decoder[Any], data: bytes) -> Any:
    try:
        return decoder.decode(data)
    except Exception:  # not decodable: Baton refuses it too
        return None


def _refused(decoder: Decoder[Any], data: bytes) -> bool:
    return _decoded(decoder, data) is None


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def audits(events: list[SystemEvent]) -> int:
    return len([e for e in events if isinstance(e, MessageRejected | AgentRefused)])


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    directory = tmp_path_factory.mktemp("fuzz")
    contracts = directory / "roles.toml"
    contracts.write_text(CONTRACTS)
    loop = asyncio.new_event_loop()
    managed: AbstractAsyncContextManager[Cluster] = cluster(
        directory / "state", contracts=str(contracts)
    )

    async def start() -> Fuzzed:
        c = await managed.__aenter__()
        agents = await c.add_agents([AgentSpec(ROLE, "agents.builtin:sleep", count=2)])
        run_id = await c.orchestrator.start_run(RUN)
        await c.until(run_id, lambda s: s.tasks["s0"].status == "running")
        clients = {
            "root": await nats.connect(c.stack.nats_url, max_reconnect_attempts=-1),
            "rogue": await nats.connect(
                c.stack.agent_url(ROGUE, ROLE),
                inbox_prefix=inbox_prefix(ROGUE),
                max_reconnect_attempts=-1,
            ),
        }
        found = Fuzzed(loop, c, run_id, agents, clients, targets_of(run_id, agents))
        found.audits_before = audits(await system_events(c))
        found.started = time.monotonic()
        return found

    found = loop.run_until_complete(start())
    try:
        yield found
    finally:

        async def stop() -> None:
            for client in found.clients.values():
                await client.close()
            await managed.__aexit__(None, None, None)

        loop.run_until_complete(stop())
        loop.close()


async def send(f: Fuzzed, target: Target, data: bytes, headers: dict[str, str]) -> None:
    client = f.clients[target.identity]
    reply = client.new_inbox() if target.kind in {"start", "control", "status", "memory"} else ""
    # what the client refuses (over the payload limit, say) reaches nothing of Baton
    with contextlib.suppress(nats.errors.Error, ValueError):
        await client.publish(target.subject, data, reply=reply, headers=headers or None)


def test_fuzzing_every_reachable_subject_during_a_run(fuzzed: Fuzzed) -> None:
    f = fuzzed
    rss_before = rss_bytes()

    cases = st.sampled_from(f.targets).flatmap(
        lambda target: st.tuples(st.just(target), payloads(target.kind, f.ids()))
    )
    own_inbox = Target(subjects.inbox(f.run_id, ROGUE), "inbox", "rogue")
    result = template(protocol.TaskResult, f.ids())
    result.pop("output")
    poison = [  # the finding: a result nested deep in its output, on the agent's own inbox
        (own_inbox, (with_raw_field(result, "output", deep(50_000, e), e), {ENCODING_HEADER: e}))
        for e in ("json", "msgpack")
    ]

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @example(case=poison[0])
    @example(case=poison[1])
    @given(case=cases)
    def fire(case: tuple[Target, tuple[bytes, dict[str, str]]]) -> None:
        target, (payload, headers) = case
        assume(harmless(target, payload, headers, f.run_id))
        f.loop.run_until_complete(send(f, target, payload, headers))
        health = f.c.orchestrator.loops.health()
        assert all(h.running and h.crashes == 0 for h in health.values()), health

    fire()

    async def afterwards() -> None:
        for client in f.clients.values():
            await client.flush()
        await inbox_drained(f.c.stack.nats_url)
        final = await f.c.orchestrator.wait(f.run_id, timeout=90)
        assert final.status == "completed", final.reason
        again = await f.c.orchestrator.start_run(RUN.__class__("after", RUN.steps[:1]))
        assert (await f.c.orchestrator.wait(again, timeout=30)).status == "completed"

        health = f.c.orchestrator.loops.health()
        assert set(health) == {"inbox", "reports", "tick", "link", "look-again"}
        assert all(h.running and h.crashes == 0 for h in health.values()), health
        assert all(p.poll() is None for p in f.c.agents.processes.values()), "agents alive"
        assert set(f.agents) <= {a.agent_id for a in f.c.orchestrator.agents()}

        elapsed = time.monotonic() - f.started
        events = await system_events(f.c)
        assert not [e for e in events if isinstance(e, MessageDeadLettered)], "no handler bug"
        limits = system_journal.AUDIT_LIMITS
        audited = audits(events) - f.audits_before
        assert audited <= limits.all_burst + limits.all_per_s * elapsed + 5, audited
        o = f.c.orchestrator
        assert len(o._reports.recorded) <= RECORDED_LIMIT
        assert o._system.senders_tracked() <= limits.senders
        assert o._liveness.refused_tracked() <= 10_000

    f.loop.run_until_complete(afterwards())
    assert rss_bytes() - rss_before < 256 * 1024 * 1024, "memory stays bounded"
