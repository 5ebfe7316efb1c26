"""The evolve rules of a run's lifecycle: it starts (its graph compiled from the workflow),
is moved onto another boot's clock, taken over by another orchestrator or forked, counts
the results it rejected, and ends.
"""

from __future__ import annotations

from orchestrator.core.draft import Draft, Rule, recorded_only, rule
from orchestrator.core.events import (
    CancelRequested,
    ClockRebased,
    LimitReached,
    ResultRejected,
    RunCompleted,
    RunFailed,
    RunForked,
    RunStarted,
    RunStopped,
    RunTakenOver,
)
from orchestrator.core.run_state import TaskState
from orchestrator.core.workflow import compile_graph


def started(d: Draft, e: RunStarted) -> None:
    d.graph = compile_graph(e.workflow)
    dependents: dict[str, list[str]] = {t: [] for t in d.graph}
    for spec in d.graph.values():
        for dep in spec.deps:
            dependents[dep].append(spec.task_id)
    d.dependents = {t: tuple(ts) for t, ts in dependents.items()}
    d.tasks = {t: TaskState(t) for t in d.graph}
    d.waiting = {t: s.threshold for t, s in d.graph.items() if s.threshold}
    d.ready, d.owned = {}, set()
    d.changes.update(
        status="running",
        workflow=e.workflow,
        input=e.input,
        trace_id=e.trace_id,
        started_at=e.at,
        started_mono=e.mono,
        boot=e.boot,
    )
    for spec in d.graph.values():
        if not spec.threshold:
            d.make_ready(spec.task_id)


def clock_rebased(d: Draft, e: ClockRebased) -> None:
    d.changes.update(boot=e.boot, clock_shift=e.clock_shift)


def taken_over(d: Draft, e: RunTakenOver) -> None:
    d.changes.update(owner=e.owner, owner_lease=e.lease)


def forked(d: Draft, e: RunForked) -> None:
    # A fork of a fork copies its origin's own link too: the first link is this run's.
    if not d.changes.get("forked_from", d.base.forked_from):
        d.changes["forked_from"] = f"{e.origin_run_id}@{e.origin_position}"


def result_rejected(d: Draft, e: ResultRejected) -> None:
    d.changes["rejected"] = d.changes.get("rejected", d.base.rejected) + 1


def completed(d: Draft, e: RunCompleted) -> None:
    d.changes.update(status="completed", result=e.result, finished_at=e.at)


def failed(d: Draft, e: RunFailed) -> None:
    d.changes.update(status="failed", reason=e.reason, finished_at=e.at)


def stopped(d: Draft, e: RunStopped) -> None:
    d.changes.update(
        status="stopped", reason=e.reason, result=e.result, finished_at=e.at, limit=e.limit
    )


RULES: dict[type, Rule] = dict(
    [
        rule(RunStarted, started),
        rule(ClockRebased, clock_rebased),
        rule(RunTakenOver, taken_over),
        rule(RunForked, forked),
        rule(ResultRejected, result_rejected),
        rule(LimitReached, recorded_only),  # what the limit ends follows
        rule(CancelRequested, recorded_only),  # the cancellations follow
        rule(RunCompleted, completed),
        rule(RunFailed, failed),
        rule(RunStopped, stopped),
    ]
)
