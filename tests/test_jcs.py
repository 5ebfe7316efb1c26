"""RFC 8785 canonical JSON (`bus.jcs`): the RFC's own examples, ECMAScript's number
forms, and properties: the output is JSON that reads back to the same value, and the
key order and whitespace of the input change nothing."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bus import jcs

# RFC 8785 appendix B: IEEE-754 bit patterns and their ECMAScript form
RFC_NUMBERS = [
    ("0000000000000000", "0"),
    ("8000000000000000", "0"),
    ("0000000000000001", "5e-324"),
    ("8000000000000001", "-5e-324"),
    ("7fefffffffffffff", "1.7976931348623157e+308"),
    ("ffefffffffffffff", "-1.7976931348623157e+308"),
    ("4340000000000000", "9007199254740992"),
    ("c340000000000000", "-9007199254740992"),
    ("4430000000000000", "295147905179352830000"),
    ("44b52d02c7e14af5", "9.999999999999997e+22"),
    ("44b52d02c7e14af6", "1e+23"),
    ("44b52d02c7e14af7", "1.0000000000000001e+23"),
    ("444b1ae4d6e2ef4e", "999999999999999700000"),
    ("444b1ae4d6e2ef4f", "999999999999999900000"),
    ("444b1ae4d6e2ef50", "1e+21"),
    ("3eb0c6f7a0b5ed8c", "9.999999999999997e-7"),
    ("3eb0c6f7a0b5ed8d", "0.000001"),
    ("41b3de4355555553", "333333333.3333332"),
    ("41b3de4355555554", "333333333.33333325"),
    ("41b3de4355555555", "333333333.3333333"),
    ("41b3de4355555556", "333333333.3333334"),
    ("41b3de4355555557", "333333333.33333343"),
    ("becbf647612f3696", "-0.0000033333333333333333"),
    ("43143ff3c1cb0959", "1424953923781206.2"),
]


@pytest.mark.parametrize(("bits", "expected"), RFC_NUMBERS)
def test_numbers_are_written_as_ecmascript_writes_them(bits: str, expected: str) -> None:
    (value,) = struct.unpack(">d", bytes.fromhex(bits))
    assert jcs.number(value) == expected


def test_whole_floats_have_no_fraction_and_exponents_start_at_1e21() -> None:
    assert jcs.canonicalize([1.0, 2.5, 1e20, 1e21, 1e-6, 1e-7, -0.0, 30.0]) == (
        b"[1,2.5,100000000000000000000,1e+21,0.000001,1e-7,0,30]"
    )
    # an integer is a double too: past 2**53 it is written as that double is
    assert jcs.canonicalize([2**53, 2**54, 10**21, 7]) == (
        b"[9007199254740992,18014398509481984,1e+21,7]"
    )


def test_the_rfc_example_canonicalises_to_its_published_bytes() -> None:
    """RFC 8785 §3.2.2: the input (as JSON text, with its odd escapes) and the output."""
    given_text = (
        '{"numbers": [333333333.33333329, 1E30, 4.50, 2e-3, 0.000000000000000000000000001],'
        ' "string": "\\u20ac$\\u000F\\u000aA\'\\u0042\\u0022\\u005c\\\\\\"\\/",'
        ' "literals": [null, true, false]}'
    )
    expected = (
        '{"literals":[null,true,false],"numbers":[333333333.3333333,1e+30,4.5,0.002,1e-27],'
        '"string":"€$\\u000f\\nA\'B\\"\\\\\\\\\\"/"}'
    )
    assert jcs.canonicalize(json.loads(given_text)) == expected.encode()


def test_keys_are_sorted_by_utf16_code_units_not_code_points() -> None:
    """RFC 8785 §3.2.3: U+1F600 is a surrogate pair (D83D DE00) and sorts before U+FB33."""
    keys = ["\u20ac", "\r", "\ufb33", "1", "\U0001f600", "\u0080", "\u00f6"]
    text = jcs.canonicalize(dict.fromkeys(keys, 0)).decode()
    order = list(json.loads(text))
    assert order == ["\r", "1", "\u0080", "\u00f6", "\u20ac", "\U0001f600", "\ufb33"]
    assert sorted(keys) != order  # plain code point order would differ


def test_strings_escape_only_what_json_stringify_escapes() -> None:
    assert jcs.string('a"b\\c\b\f\n\r\t\x00\x1f\x7f é\u2028/') == (
        '"a\\"b\\\\c\\b\\f\\n\\r\\t\\u0000\\u001f\x7f é\u2028/"'
    )


@pytest.mark.parametrize(
    "bad",
    [float("nan"), float("inf"), 2**53 + 1, -(10**400), {1: "x"}, b"x", "\ud800", {"k": {1.5}}],
)
def test_what_jcs_has_no_form_for_is_refused(bad: Any) -> None:
    with pytest.raises(jcs.NotCanonicalizable):
        jcs.canonicalize(bad)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"])),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.text(st.characters(exclude_categories=["Cs"]), max_size=5), children, max_size=4
        )
    ),
    max_leaves=20,
)


def _same(a: Any, b: Any) -> bool:
    """JSON equality: numbers by value (1 == 1.0, -0.0 == 0), containers element-wise."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    return bool(a == b)


@given(json_values)
def test_the_canonical_form_is_json_that_reads_back_to_the_same_value(value: Any) -> None:
    canonical = jcs.canonicalize(value)
    parsed = json.loads(canonical, parse_int=float)  # JSON numbers are doubles, as in JCS
    assert _same(parsed, value)
    assert jcs.canonicalize(parsed) == canonical  # a fixed point


@given(json_values, st.randoms(use_true_random=False), st.integers(0, 4))
def test_key_order_and_whitespace_change_nothing(value: Any, rng: Any, indent: int) -> None:
    def shuffled(node: Any) -> Any:
        if isinstance(node, dict):
            items = list(node.items())
            rng.shuffle(items)
            return {k: shuffled(v) for k, v in items}
        if isinstance(node, list):
            return [shuffled(v) for v in node]
        return node

    rewritten = json.dumps(shuffled(value), indent=indent or None, ensure_ascii=rng.random() < 0.5)
    assert jcs.canonicalize(json.loads(rewritten)) == jcs.canonicalize(value)
