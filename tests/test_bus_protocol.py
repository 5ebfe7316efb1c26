"""The wire layer without a server: subjects, strict codecs, trace context."""

from __future__ import annotations

import msgspec
import pytest

from bus import subjects, tracecontext
from bus.codec import Decoder, encode
from bus.errors import InvalidSubjectToken, MalformedMessage, OversizedMessage
from bus.protocol import AgentInbound, Assignment, Control, InboxMessage, TaskFailure, TaskResult


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
