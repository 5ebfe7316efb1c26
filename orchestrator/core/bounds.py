"""Upper bounds on a workflow's numbers, no NaN or infinity anywhere, and no nesting
deeper than the wire allows.

A workflow is input (a file, `--input`, the API), and a number in it can be an attack or
a typo with the same effect: `count = 100000` starts that many agent processes,
`timeout_s = nan` arms a timer that never fires (NaN compares false with everything, so
`<= 0` lets it through), a data value nested ten thousand deep ends a parser with a
`RecursionError`. So a workflow's numbers are checked by field name, wherever they are in
the spec, each with an error naming where it is and what the limit is.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import msgspec

from bus.codec import MAX_DEPTH, too_deep
from orchestrator.core.errors import WorkflowError

DAY_S = 24 * 3600.0
UPPER: dict[str, float] = {
    "count": 64,
    "capacity": 1024,
    "timeout_s": 7 * DAY_S,
    "deadline_s": 366 * DAY_S,
    "max_attempts": 100,
    "max_rounds": 1000,
    "max_turns": 1000,
    "max_subtasks": 10_000,
    "max_handoffs": 1000,
    "max_subtask_depth": 16,
    "max_replans": 100,
}
"""The most a field of this name may hold, in any part of a workflow."""
TOTALS: dict[str, tuple[int, str]] = {
    "count": (128, "agent processes"),
    "fan_out": (100_000, "tasks"),
}
"""The most the fields of this name may add up to over the whole workflow."""
LENGTHS: dict[str, int] = {"steps": 1000, "agents": 100}
"""The most entries a list of this name may hold."""


def nesting(where: str, data: Any) -> None:
    """`WorkflowError` if `data` nests maps and lists more than `MAX_DEPTH` deep."""
    if too_deep(data, MAX_DEPTH):
        raise WorkflowError(where, f"nested more than {MAX_DEPTH} deep")


def check(spec: msgspec.Struct) -> None:
    """`WorkflowError` naming the first number of `spec` (a workflow) out of bounds."""
    totals: Counter[str] = Counter()
    _walk((), spec, totals)
    for field, (limit, what) in TOTALS.items():
        if totals[field] > limit:
            raise WorkflowError(field, f"{totals[field]} {what} in all, over the limit of {limit}")


Path = tuple[str | int, ...]
"""Where a value is: field names, and list indexes."""


def _where(path: Path) -> str:
    """A path as the errors name it (`steps[3].timeout_s`); made only for an error."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _walk(where: Path, struct: msgspec.Struct, totals: Counter[str]) -> None:
    for name in struct.__struct_fields__:
        value = getattr(struct, name)
        if isinstance(value, msgspec.Struct):
            _walk((*where, name), value, totals)
        elif isinstance(value, list):
            if len(value) > LENGTHS.get(name, len(value)):
                raise WorkflowError(_where((*where, name)), f"at most {LENGTHS[name]} entries")
            for i, item in enumerate(value):
                if isinstance(item, msgspec.Struct):
                    _walk((*where, name, i), item, totals)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise WorkflowError(_where((*where, name)), "must be a finite number")
            if value > UPPER.get(name, math.inf):
                raise WorkflowError(_where((*where, name)), f"must be at most {UPPER[name]:g}")
            if name in TOTALS:
                totals[name] += int(value)
