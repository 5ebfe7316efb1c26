"""RFC 8785, the JSON Canonicalization Scheme (JCS): one byte string for one JSON value,
whatever the key order or whitespace it was written with, reproducible in any language
that has `JSON.stringify` (ECMAScript's number and string serialisation) and can sort
keys by UTF-16 code units.

Baton hashes role contracts in this form (`bus.contracts.digest`; docs/protocol.md,
"Contract digest"). What it covers is what JSON holds: objects with string keys,
arrays, strings, booleans, null, and numbers, which JCS treats as IEEE-754 doubles:
an integer with no exact double (most past 2**53) is refused rather than rounded, as
are NaN and the infinities (JSON has none), and strings that are not Unicode text (a
lone surrogate).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

MAX_SAFE_INTEGER = 2**53
"""Every integer up to this magnitude is an exact double; past it, only some are."""

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r",
            "\t": "\\t"}  # fmt: skip


class NotCanonicalizable(ValueError):
    """A value JCS has no form for (NaN, an infinity, an integer past 2**53, a key that
    is not a string, a lone surrogate, a type JSON does not have)."""


def canonicalize(value: Any) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of `value` (dicts, lists/tuples, str, int,
    float, bool, None)."""
    parts: list[str] = []
    _write(value, parts, "$")
    text = "".join(parts)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise NotCanonicalizable(f"not Unicode text (a lone surrogate): {exc}") from None


def _write(value: Any, out: list[str], at: str) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(string(value))
    elif isinstance(value, int):
        if abs(value) <= MAX_SAFE_INTEGER:
            out.append(str(value))
        else:  # past 2**53 only some integers are doubles: those are written as such
            as_double = float(value) if abs(value) < 2**1024 else math.inf
            if as_double != value:
                raise NotCanonicalizable(f"{at}: {value} has no exact IEEE-754 double")
            out.append(number(as_double, at))
    elif isinstance(value, float):
        out.append(number(value, at))
    elif isinstance(value, Mapping):
        for key in value:
            if not isinstance(key, str):
                raise NotCanonicalizable(f"{at}: key {key!r} is not a string")
        out.append("{")
        for i, key in enumerate(sorted(value, key=utf16_order)):
            if i:
                out.append(",")
            out.append(string(key))
            out.append(":")
            _write(value[key], out, f"{at}.{key}")
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out, f"{at}[{i}]")
        out.append("]")
    else:
        raise NotCanonicalizable(f"{at}: JSON has no {type(value).__name__}")


def utf16_order(key: str) -> bytes:
    """The sort key JCS orders object members by: the key's UTF-16 code units (big-endian
    bytes compare as the units do; a character past U+FFFF sorts by its high surrogate,
    so before U+E000..U+FFFF, unlike code point order)."""
    return key.encode("utf-16-be", "surrogatepass")


def string(text: str) -> str:
    """A JSON string as ECMAScript's `JSON.stringify` writes it: `"` and `\\` escaped,
    the short escapes for backspace, form feed, newline, carriage return and tab, other
    characters below U+0020 as `\\u00xx` (lowercase hex), everything else as itself."""
    out = ['"']
    for char in text:
        escaped = _ESCAPES.get(char)
        if escaped is not None:
            out.append(escaped)
        elif char < " ":
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    out.append('"')
    return "".join(out)


def number(value: float, at: str = "$") -> str:
    """A double as ECMAScript's Number::toString writes it (RFC 8785 §3.2.2.3): the
    shortest digits that read back to the same double, positional from 1e-6 up to below
    1e21 (no `.0`: 1.0 is `1`), else `d.ddde±x`; -0 is `0`."""
    if not math.isfinite(value):
        raise NotCanonicalizable(f"{at}: {value} is not a JSON number")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    # repr is the shortest round-tripping decimal, the digits ECMAScript picks too
    _, digit_tuple, exponent = Decimal(repr(abs(value))).as_tuple()
    assert isinstance(exponent, int)
    digits = "".join(map(str, digit_tuple)).rstrip("0")
    exponent += len(digit_tuple) - len(digits)
    k = len(digits)
    n = k + exponent  # value = 0.digits * 10**n
    if k <= n <= 21:
        return sign + digits + "0" * (n - k)
    if 0 < n <= 21:
        return sign + digits[:n] + "." + digits[n:]
    if -6 < n <= 0:
        return sign + "0." + "0" * -n + digits
    e = n - 1
    mantissa = digits if k == 1 else digits[0] + "." + digits[1:]
    return f"{sign}{mantissa}e{'+' if e >= 0 else '-'}{abs(e)}"
