"""The wire layer without a server: subjects, strict codecs, trace context."""

from __future__ import annotations

import msgspec
import pytest

from bus import subjects, tracecontext
from bus.codec import Decoder, encode
from bus.errors import InvalidSubjectToken, MalformedMessage, OversizedMessage
from bus.protocol import (
    AgentInbound,
    AssignAck,
    AssignAcks,
    AssignBatch,
    Assignment,
    AssignReply,
    Control,
    InboxMessage,
    ReportBatch,
    TaskFailure,
    TaskResult,
)


@pytest.mark.parametrize("bad", ["", "a.b", "a*", ">", "a b", "a\tb", "ä"])
def test_subject_tokens_that_would_change_routing_are_refused(bad: str) -> None:
    with pytest.raises(InvalidSubjectToken):
        subjects.assign(bad)


def test_inbox_subject_names_the_sender_and_round_trips() -> None:
    subject = subjects.inbox("run-1", "agent_7")
    assert subject == "baton.inbox.run-1.agent_7"
    assert subjects.inbox_sender(subject) == ("run-1", "agent_7")
    with pytest.raises(InvalidSubjectToken):
        subjects.inbox_sender("baton.inbox.run-1")


def test_decoder_accepts_exactly_the_subjects_messages() -> None:
    result = TaskResult("r", "t", 1, "lease", "a", {"x": [1, 2]}, 0.5)
    failure = TaskFailure("r", "t", 1, "lease", "a", "boom", retryable=False)
    inbox: Decoder[InboxMessage] = Decoder(InboxMessage)
    assert inbox.decode(encode(result)) == result
    assert inbox.decode(encode(failure)) == failure
    with pytest.raises(MalformedMessage, match=r"Invalid value 'agent\.control'"):
        inbox.decode(encode(Control("drain")))


def test_batches_carry_their_members_and_refuse_a_stranger_among_them() -> None:
    a = Assignment("r", "t[0]", 1, "l", "s", "role", {"i": 0}, 1.0)
    b = Assignment("r", "t[1]", 2, "m", "s", "role", {"i": 1}, 1.0)
    inbound: Decoder[AgentInbound] = Decoder(AgentInbound)
    assert inbound.decode(encode(AssignBatch([a, b]))) == AssignBatch([a, b])
    replies: Decoder[AssignReply] = Decoder(AssignReply)
    acks = AssignAcks([AssignAck(True), AssignAck(False, "draining")])
    assert replies.decode(encode(acks)) == acks
    result = TaskResult("r", "t", 1, "lease", "a", {}, 0.5)
    failure = TaskFailure("r", "u", 1, "lease", "a", "boom")
    inbox: Decoder[InboxMessage] = Decoder(InboxMessage)
    assert inbox.decode(encode(ReportBatch([result, failure]))) == ReportBatch([result, failure])
    stranger = msgspec.msgpack.encode(
        {"kind": "task.reports", "reports": [{"kind": "agent.control", "action": "drain"}]}
    )
    with pytest.raises(MalformedMessage, match=r"reports\[0\]"):
        inbox.decode(stranger)
    subject = subjects.report("run-1", "agent_7")
    assert subjects.report_sender(subject) == ("run-1", "agent_7")
    with pytest.raises(InvalidSubjectToken):
        subjects.report_sender(subjects.inbox("run-1", "agent_7"))


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"\xc1", "malformed"),
        (b"", "truncated"),
        (msgspec.msgpack.encode({"kind": "task.assign"}), "missing required field"),
        (msgspec.msgpack.encode({"kind": "nope"}), "Invalid value 'nope'"),
        (msgspec.msgpack.encode({"kind": "agent.control", "action": "explode"}), "Invalid enum"),
        (
            msgspec.msgpack.encode({"kind": "agent.control", "action": "drain", "extra": 1}),
            "unknown field `extra`",
        ),
    ],
)
def test_malformed_payloads_are_typed_errors(payload: bytes, reason: str) -> None:
    decoder: Decoder[AgentInbound] = Decoder(AgentInbound)
    with pytest.raises(MalformedMessage, match=reason):
        decoder.decode(payload)


def test_oversized_payloads_are_refused_before_decoding() -> None:
    decoder: Decoder[AgentInbound] = Decoder(AgentInbound, max_bytes=100)
    big = Assignment("r", "t", 1, "l", "s", "role", {"blob": "x" * 200}, 1.0)
    with pytest.raises(OversizedMessage) as caught:
        decoder.decode(encode(big))
    assert caught.value.limit == 100
    assert caught.value.size > 100


def test_traceparent_round_trips_and_rejects_garbage() -> None:
    ctx = tracecontext.new_trace()
    assert tracecontext.parse(ctx.header()) == ctx
    child = ctx.child()
    assert child.trace_id == ctx.trace_id
    assert child.span_id != ctx.span_id
    for bad in [None, "", "01-" + ctx.header()[3:], "00-" + "0" * 32 + "-" + "1" * 16 + "-01", "x"]:
        assert tracecontext.parse(bad) is None
