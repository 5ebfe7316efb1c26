"""The nesting check every decoded message passes (`bus.codec.too_deep`): it skips the
fields a message type declares scalar, so it must still find every container nested
in the others. Checked against a plain recursive count, on messages whose free-form
parts (outputs, usage, subtasks) hold any JSON-like value."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus.codec import MAX_DEPTH, Decoder, encode, too_deep
from bus.errors import MalformedMessage
from bus.protocol import InboxMessage, ReportBatch, TaskFailure, TaskResult


def _depth(value: Any) -> int:
    """How many containers nest in one another in `value`, counted the plain way."""
    if isinstance(value, dict):
        inner: list[Any] = list(value.values())
    elif isinstance(value, list | tuple):
        inner = list(value)
    elif isinstance(value, msgspec.Struct):
        inner = [getattr(value, name) for name in value.__struct_fields__]
    else:
        return 0
    return 1 + max(map(_depth, inner), default=0)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=3),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=2), inner, max_size=3)
    ),
    max_leaves=40,
)


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def _batch(results: list[TaskResult]) -> ReportBatch:
    return ReportBatch(list[TaskResult | TaskFailure](results))


def _result(output: dict[str, Any]) -> TaskResult:
    return TaskResult("run-1", "t", 1, "f" * 32, "worker-1", output, 0.1)


_outputs = st.lists(st.dictionaries(st.text(max_size=2), _json, max_size=3), min_size=1, max_size=4)


@given(outputs=_outputs, limit=st.integers(1, 12))
@settings(max_examples=300, deadline=None)
def test_too_deep_agrees_with_a_plain_count(outputs: list[dict[str, Any]], limit: int) -> None:
    batch = _batch([_result(output) for output in outputs])
    assert too_deep(batch, limit) == (_depth(batch) > limit)


def test_a_batch_nesting_too_deep_in_one_output_is_refused_and_one_just_within_is_not() -> None:
    decoder: Decoder[InboxMessage] = Decoder(InboxMessage)
    # the batch, its list of reports, a report, its output: 4 levels above the value
    within = _batch([_result({"ok": 1})] * 60 + [_result({"deep": _nested(MAX_DEPTH - 4)})])
    beyond = _batch([_result({"ok": 1})] * 60 + [_result({"deep": _nested(MAX_DEPTH - 3)})])
    assert _depth(within) == MAX_DEPTH
    assert isinstance(decoder.decode(encode(within)), ReportBatch)
    with pytest.raises(MalformedMessage, match=f"nested more than {MAX_DEPTH} deep"):
        decoder.decode(encode(beyond))
