"""The core's state API: a run's state and `evolve`, the one function that folds an
event into it, with the ways the shell and the tools fold many (`fold`, `Folding`,
`resume`, `replay`).

State is a frozen value (`orchestrator.core.run_state`); `evolve` never mutates the state
it is given. A fold works on one `Draft` (`orchestrator.core.draft`) and applies to it
the rule registered for each event's type: the rules are grouped by concern in
`evolve_run` (the run's lifecycle), `evolve_attempts` (a task's attempts) and
`evolve_graph` (the task graph). The one exception to "never mutates" is `Folding`, which
the shell uses to decide a batch: the states it hands out along the way share its draft
and are only valid until its next fold.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

from orchestrator.core import evolve_attempts, evolve_graph, evolve_run
from orchestrator.core.draft import Draft, Rule
from orchestrator.core.errors import UnknownEvent, VersionGap
from orchestrator.core.events import RunEvent
from orchestrator.core.run_state import TERMINAL_TASK, RunState, TaskState

# the state types the rest of the orchestrator reads come with the functions that make them
__all__ = [
    "TERMINAL_TASK",
    "Folding",
    "RunState",
    "TaskState",
    "evolve",
    "fold",
    "replay",
    "resume",
]

RULES: dict[type, Rule] = {**evolve_run.RULES, **evolve_attempts.RULES, **evolve_graph.RULES}
"""The rule for each `RunEvent` type, looked up by the event's exact type (event classes
are never subclassed): one dict lookup per event, where a `match` tried the cases in turn.
Every type of the union has one (tests/test_decide.py), so `evolve` is total over it."""


def _apply(draft: Draft, event: RunEvent) -> None:
    draft.version += 1
    apply = RULES.get(type(event))
    if apply is None:
        raise UnknownEvent(f"evolve has no rule for {type(event).__name__}")
    apply(draft, event)


def evolve(state: RunState, event: RunEvent) -> RunState:
    """The state after `event`; total over `RunEvent`, raising `UnknownEvent` otherwise."""
    return fold(state, (event,))


def fold(state: RunState, events: Iterable[RunEvent]) -> RunState:
    """The state after each of `events` in turn; `state` itself is left as it was."""
    draft: Draft | None = None
    for event in events:
        draft = draft or Draft(state)
        _apply(draft, event)
    return state if draft is None else draft.freeze()


class Folding:
    """Decisions folded one after another into one draft, so k decisions on a run of n
    tasks copy its containers once, O(n + k), not k times (on a big run, most of what a
    decision costs). `state` is the state after everything folded so far; it shares the
    draft's containers, so the next fold changes it in place: keep only the last one."""

    def __init__(self, state: RunState) -> None:
        self.state = state
        self._draft: Draft | None = None

    def fold(self, events: Sequence[RunEvent]) -> RunState:
        if events:
            draft = self._draft = self._draft or Draft(self.state)
            for event in events:
                _apply(draft, event)
            self.state = draft.freeze()
        return self.state

    def fold_then(
        self, events: Sequence[RunEvent], then: Callable[[RunState], list[RunEvent]]
    ) -> list[RunEvent]:
        """Fold `events`, then what `then` decides from the state they make; returns that."""
        more = then(self.fold(events))
        self.fold(more)
        return more


def resume(state: RunState, versioned: Iterable[tuple[int, RunEvent]]) -> RunState:
    """`state` carried forward by stored events, checking their versions have no gap."""
    draft: Draft | None = None
    for version, event in versioned:
        draft = draft or Draft(state)
        if version != draft.version + 1:
            raise VersionGap(state.run_id, draft.version + 1, version)
        _apply(draft, event)
    return state if draft is None else draft.freeze()


def replay(run_id: str, versioned: Iterable[tuple[int, RunEvent]]) -> RunState:
    """A run's state from its stored events alone."""
    return resume(RunState(run_id), versioned)
