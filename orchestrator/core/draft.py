"""The mutable working copy a fold changes in place, and the index moves every rule uses.

Folding k events into a run of n tasks would cost O(n * k) if each event copied the
run's containers; a `Draft` copies them once, lets the evolve rules change them in
place, and `freeze()`s the result into a `RunState`. What a rule may do to the indexes
(`ready`, `gated`, `waiting`, `blocked`) is here, so each rule says only what its event
means; the rules themselves, one per event type, are grouped by concern in
`evolve_run`, `evolve_attempts` and `evolve_graph`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from msgspec.structs import replace

from orchestrator.core.run_state import UNSUCCESSFUL, RunState, TaskStatus

E = TypeVar("E")
Rule = Callable[["Draft", Any], None]
"""Folds one event (of the type it is registered for) into a draft."""


def rule(kind: type[E], apply: Callable[[Draft, E], None]) -> tuple[type, Rule]:
    """An entry of a rule table, type-checked: `apply` takes the events of `kind`."""
    return kind, apply


def recorded_only(draft: Draft, event: object) -> None:
    """The rule of an event kept for the audit alone: what it leads to follows as events
    of its own in the same decision."""


class Draft:
    """A `RunState` being folded: its containers are copied once, then changed in place.
    Nothing outside the fold ever sees a draft; the state it started from is never
    touched (containers it shares with it, like a role's ready queue or the graph, are
    copied on their first change)."""

    def __init__(self, state: RunState) -> None:
        self.base = state
        self.version = state.version
        self.graph = state.graph
        self.dependents = state.dependents
        self.tasks = dict(state.tasks)
        self.waiting = dict(state.waiting)
        self.ready = dict(state.ready)  # a role's queue is copied only once it changes
        self.owned: set[str] = set()
        self.gated = dict(state.gated)
        self.blocked = dict(state.blocked)
        self.children = state.children
        self.grown = False
        self.changes: dict[str, Any] = {}

    def freeze(self) -> RunState:
        return replace(
            self.base,
            version=self.version,
            graph=self.graph,
            dependents=self.dependents,
            tasks=self.tasks,
            waiting=self.waiting,
            ready=self.ready,
            gated=self.gated,
            blocked=self.blocked,
            children=self.children,
            **self.changes,
        )

    def get(self, field: str) -> Any:
        return self.changes.get(field, getattr(self.base, field))

    def bump(self, field: str, by: int) -> None:
        self.changes[field] = self.get(field) + by

    def role(self, task_id: str) -> str:
        return self.tasks[task_id].role or self.graph[task_id].role

    def ready_of(self, role: str) -> dict[str, None]:
        """The role's ready queue, copied from the base state on first change."""
        if role not in self.owned:
            self.ready[role] = dict(self.ready.get(role, {}))
            self.owned.add(role)
        return self.ready[role]

    def unready(self, task_id: str) -> None:
        role = self.role(task_id)
        if task_id in self.ready.get(role, {}):
            del self.ready_of(role)[task_id]
        self.gated.pop(task_id, None)

    def make_ready(self, task_id: str) -> None:
        spec = self.graph[task_id]
        if spec.kind == "chat" or spec.conditional:
            self.gated[task_id] = None
        else:
            self.ready_of(self.role(task_id))[task_id] = None

    def grow(self) -> None:
        """Copy the graph indexes before changing them (they are shared with the base)."""
        if not self.grown:
            self.graph = dict(self.graph)
            self.dependents = dict(self.dependents)
            self.children = dict(self.children)
            self.grown = True

    def release(self, task_id: str, charge: int) -> None:
        """End the attempt's reservation, charging `charge` tokens."""
        task = self.tasks[task_id]
        if task.reserved or charge:
            self.bump("tokens_reserved", -task.reserved)
            self.bump("tokens_spent", charge)
            self.tasks[task_id] = replace(task, reserved=0, tokens=task.tokens + charge)

    def ended_unsuccessfully(self, task_id: str) -> None:
        """A dep that will never succeed: its waiting dependents may now be unreachable."""
        for dependent in self.dependents.get(task_id, ()):
            if dependent not in self.waiting or dependent in self.blocked:
                continue
            if self.tasks[dependent].status != "pending":
                continue  # it already ended (replaced by a replan, cancelled)
            spec = self.graph[dependent]
            hopeful = sum(self.tasks[d].status not in UNSUCCESSFUL for d in spec.deps)
            if hopeful < spec.threshold:  # it stays in `waiting`, as a run that failed left it
                self.blocked[dependent] = None

    def end(self, task_id: str, status: TaskStatus, error: str, at: float) -> None:
        task = self.tasks[task_id]
        self.tasks[task_id] = replace(task, status=status, error=error, finished_at=at)
        self.unready(task_id)
        self.blocked.pop(task_id, None)
        self.release(task_id, 0)
        self.ended_unsuccessfully(task_id)
