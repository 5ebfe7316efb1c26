"""The run page's task graph: an SVG of the run's tasks (or, for a large run, of its
steps) laid out in columns by dependency depth, with an edge from each dependency, each
node coloured by its state. The page's script recolours the nodes (and recounts a step's
tasks) from each pushed state, so the graph moves with the run without a reload.

Pure: drawn from a `RunState` alone, the same at the head of the log and at any position
of time travel."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable
from html import escape
from typing import Final

from orchestrator.core.state import RunState

TASKS_MAX: Final = 80
"""Above this many tasks, one node per step (with its tasks counted by state)."""
_W: Final = 150
_H: Final = 26
_GAP_X: Final = 40
_GAP_Y: Final = 8
_PAD: Final = 6
_LABEL: Final = 20
"""Characters of a name drawn in a node (all of it in the node's title)."""
ORDER: Final = (
    "succeeded", "running", "active", "pending", "escalated", "failed", "skipped", "cancelled"
)  # fmt: skip
"""The states a step node counts, in the order it names them."""
SHOWN: Final = ("failed", "escalated", "running", "active", "pending", "succeeded", "skipped")
"""A step node's colour: the first of these states one of its tasks is in (else cancelled)."""

NodeDraw = Callable[[str], tuple[str, str]]
"""A node's attributes and what its group holds, by its name."""


def _e(text: object) -> str:
    return escape(str(text), quote=True)


def _short(name: str) -> str:
    return name if len(name) <= _LABEL else name[: _LABEL - 1] + "…"


def _depths(deps: dict[str, tuple[str, ...]]) -> dict[str, int]:
    """Each node's column: 0 for a node with no dependency, else one more than its
    deepest dependency (dependencies outside `deps` ignored)."""
    depth: dict[str, int] = {}
    for start in deps:
        stack = [start]
        while stack:
            node = stack[-1]
            if node in depth:
                stack.pop()
                continue
            waiting = [d for d in deps[node] if d in deps and d not in depth and d not in stack]
            if waiting:
                stack.extend(waiting)
                continue
            known = [depth[d] for d in deps[node] if d in depth]
            depth[node] = 1 + max(known) if known else 0
            stack.pop()
    return depth


def _counts(counted: Counter[str]) -> str:
    return ", ".join(f"{counted[s]} {s}" for s in ORDER if counted[s])


def draw(state: RunState) -> str:
    """The graph of `state`'s tasks (one node each), or of its steps when it has more
    than `TASKS_MAX` tasks; '' for a run without tasks."""
    if not state.graph:
        return ""
    if len(state.graph) <= TASKS_MAX:
        deps = {t: tuple(spec.deps) for t, spec in state.graph.items()}
        status = {t: state.tasks[t].status if t in state.tasks else "pending" for t in deps}
        return _svg(deps, lambda node: _task_node(node, status[node]), "tasks")
    steps: dict[str, set[str]] = defaultdict(set)
    counted: dict[str, Counter[str]] = defaultdict(Counter)
    for task_id, spec in state.graph.items():
        task = state.tasks.get(task_id)
        counted[spec.step][task.status if task else "pending"] += 1
        steps[spec.step].update(state.graph[d].step for d in spec.deps if d in state.graph)
    step_deps = {s: tuple(sorted(d for d in found if d != s)) for s, found in steps.items()}
    return _svg(step_deps, lambda node: _step_node(node, counted[node]), "steps")


def _task_node(task_id: str, status: str) -> tuple[str, str]:
    attrs = f'class="node st {_e(status)}" data-node="{_e(task_id)}"'
    return attrs, f"<title>{_e(task_id)}: {_e(status)}</title>" + _label(task_id)


def _step_node(step: str, counted: Counter[str]) -> tuple[str, str]:
    total = sum(counted.values())
    status = next((s for s in SHOWN if counted[s]), "cancelled")
    attrs = f'class="node st {status}" data-step="{_e(step)}"'
    title = f'<title class="counts">{_e(step)} ({total}): {_e(_counts(counted))}</title>'
    return attrs, title + _label(f"{step} ({total})")


def _label(text: str) -> str:
    return f'<text x="{_PAD}" y="{_H - 9}">{_e(_short(text))}</text>'


def _svg(deps: dict[str, tuple[str, ...]], node: NodeDraw, kind: str) -> str:
    depth = _depths(deps)
    columns: dict[int, list[str]] = defaultdict(list)
    for name in deps:  # in the graph's order: a step's tasks stay together
        columns[depth[name]].append(name)
    at: dict[str, tuple[int, int]] = {}
    for column, names in columns.items():
        for row, name in enumerate(names):
            at[name] = (column * (_W + _GAP_X), row * (_H + _GAP_Y))
    width = (max(columns) + 1) * (_W + _GAP_X) - _GAP_X
    height = max(len(names) for names in columns.values()) * (_H + _GAP_Y) - _GAP_Y
    edges = []
    for name, needs in deps.items():
        x2, y2 = at[name]
        for dep in needs:
            if dep in at:
                x1, y1 = at[dep]
                edges.append(
                    f'<line x1="{x1 + _W}" y1="{y1 + _H // 2}" x2="{x2}" y2="{y2 + _H // 2}"/>'
                )
    nodes = []
    for name in deps:
        attrs, inside = node(name)
        x, y = at[name]
        nodes.append(
            f'<g {attrs} transform="translate({x},{y})">'
            f'<rect width="{_W}" height="{_H}" rx="4"/>{inside}</g>'
        )
    return (
        f'<svg class="graph {kind}" role="img" aria-label="the run\'s {kind} and their '
        f'dependencies" width="{width}" height="{height}" viewBox="0 0 {width} {height}">'
        f'<g class="edges">{"".join(edges)}</g>{"".join(nodes)}</svg>'
    )
