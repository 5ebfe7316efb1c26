"""Decide, append, act: the one path by which anything changes a run.

A batch of commands is decided into one working copy of the run (a `Folding`), its
events appended with the expected stream version, and only once they are durable are the
effects performed: no effect for an event that is not durable. Deciding is synchronous
and starts from the newest decided state, so the next batch can be decided while this
one is appended (pipelining; the store commits them in order). A failed append reloads
the run from the store, and no decision is made on it meanwhile.

A run that has ended, with nothing of it left to commit, is handed to `FinishedRuns`,
which keeps the newest few; the others are forgotten here with everything kept for them
(they are in the log), so memory does not grow with the runs served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from msgspec.structs import replace

from bus.protocol import ReportVerdict
from eventstore import ConcurrencyError, EventStore, EventStoreError, StorageError, StoredEvent
from eventstore.anchor import Checkpointer
from orchestrator.core import report_check
from orchestrator.core.commands import (
    Command,
    Context,
    DeliveryFailed,
    ReportFailure,
    ReportResult,
)
from orchestrator.core.decide import decide_into, load_delta
from orchestrator.core.effects import Effect, effects
from orchestrator.core.errors import UnknownRun
from orchestrator.core.events import RunEvent
from orchestrator.core.state import Folding, RunState
from orchestrator.service import journal
from orchestrator.service.background import Spawn
from orchestrator.service.finished import KEEP_FINISHED, FinishedRuns
from orchestrator.service.health import Health
from orchestrator.service.journal import ORCHESTRATOR, Cause
from orchestrator.service.registry import Registry
from orchestrator.service.telemetry import OrchestratorTelemetry
from orchestrator.service.tokens import LeaseTokens

log = logging.getLogger("baton.orchestrator")

Act = Callable[[RunState, Sequence[Effect]], None]
"""Performs a run's effects (they are durable): sends, publishes, never awaits."""


def _first_cause(state: RunState, command: Command, cause: Cause) -> Cause:
    """What caused a decision's first event: what came in, or, for a report, the
    assignment of the attempt it answers (so `baton audit --why` can walk it back)."""
    task_id, attempt = "", 0
    match command:
        case ReportResult():
            task_id, attempt = command.result.task_id, command.result.attempt
        case ReportFailure():
            task_id, attempt = command.failure.task_id, command.failure.attempt
        case DeliveryFailed():
            task_id, attempt = command.task_id, command.attempt
    task = state.tasks.get(task_id)
    if task is not None and task.attempt == attempt and task.assigned_event:
        return Cause(journal.event_id(state.run_id, task.assigned_event), cause.actor)
    return cause


def _causes(first: Cause, run_id: str, version: int, count: int, trace: str) -> list[Cause]:
    """Causes for a decision's `count` events, the first at `version`: the first event's
    is `first`; the rest (assignments, endings) are caused by that first event."""
    then = Cause(journal.event_id(run_id, version), ORCHESTRATOR, trace)
    return [Cause(first.causation_id, first.actor, trace)] + [then] * (count - 1)


def _loaded(ctx: Context, delta: dict[str, int]) -> Context:
    """`ctx` with the load this batch's decisions so far gave each agent."""
    agents = [
        replace(a, load=a.load + delta[a.agent_id]) if delta.get(a.agent_id) else a
        for a in ctx.agents
    ]
    return Context(ctx.now, ctx.wall, agents, ctx.new_token, ctx.random, ctx.boot)


@dataclass(frozen=True)
class Decision:
    """A batch of commands decided: the events, the state after them, their append."""

    run_id: str
    before: RunState
    state: RunState
    events: list[RunEvent]
    append: asyncio.Future[list[StoredEvent]]
    span_ids: list[str]
    """The decision span of each event (telemetry)."""
    appending_since: float


class Pipeline:
    """The runs this orchestrator serves, and the only code that changes them."""

    def __init__(
        self,
        store: EventStore,
        registry: Registry,
        obs: OrchestratorTelemetry,
        runs: dict[str, RunState],
        *,
        spawn: Spawn,
        act: Act,
        clock: Callable[[], float],
        wall: Callable[[], float],
        boot: str,
        health: Health,
        keep_finished: int = KEEP_FINISHED,
        checkpoints: Checkpointer | None = None,
    ) -> None:
        self.runs = runs
        """Each run's durable state: every unfinished run, and the newest finished ones."""
        self.finished = FinishedRuns(keep_finished)
        self._health = health
        self._store = store
        self._registry = registry
        self._obs = obs
        self._spawn = spawn
        self._act = act
        self._clock = clock
        self._wall = wall
        self._boot = boot
        self._checkpoints = checkpoints
        """Asked for a checkpoint of the log when a run ends (see `eventstore.anchor`)."""
        self._rng = random.Random()
        self._tokens = LeaseTokens()
        self._locks: dict[str, asyncio.Lock] = {}
        """Held while a run is reloaded after a failed append; no decision meanwhile."""
        self._ahead: dict[str, RunState] = {}
        """Per run, the state once the appends in flight are durable (newest decided)."""
        self._appending: defaultdict[str, set[asyncio.Future[list[StoredEvent]]]] = defaultdict(set)
        self._uncommitted: Counter[str] = Counter()
        """Per run, decisions made and not yet committed: a run is forgotten only at 0."""
        self.on_forget: list[Callable[[str], None]] = []
        """Called with the id of each finished run forgotten, to drop what others keep."""
        self.on_decided: Callable[[str, RunState, Counter[str]], None] | None = None
        """Told of each decision that changed a run: its id, its state after, and how it
        changed agents' load (see `Offers`)."""
        self.after_reload: Callable[[RunState], Awaitable[None]] | None = None
        """Orchestrators sharing the runs: told of a run reloaded after a failed append,
        to serve it on, take it over again, or step down from it (see `Sharing`)."""

    def run(self, run_id: str) -> RunState:
        """A run this orchestrator is serving, or one of the newest it finished."""
        try:
            return self.runs[run_id]
        except KeyError:
            raise UnknownRun(run_id) from None

    def newest(self, run_id: str) -> RunState:
        """The run's state once the appends still in flight are durable."""
        return self._ahead.get(run_id) or self.run(run_id)

    def context(self) -> Context:
        """What the core is told of the outside world for one decision."""
        now = self._clock()
        return Context(
            now=now,
            wall=self._wall(),
            agents=self._registry.live(now),
            new_token=self._tokens,
            random=self._rng.random,
            boot=self._boot,
        )

    async def execute(self, run_id: str, items: Sequence[tuple[Command, Cause]]) -> bool:
        """Decide each command in turn, append all resulting events at once, then act.

        False when the append failed: the in-memory state is reloaded from the store and
        the caller must not acknowledge what caused the commands.
        """
        await self.unblocked(run_id)
        decision = self.decide(run_id, items)
        return await self.commit(decision) if decision is not None else True

    def reloading(self, run_id: str) -> bool:
        """Whether the run is being reloaded after a failed append (no decision now)."""
        lock = self._locks.get(run_id)
        return lock is not None and lock.locked()

    async def unblocked(self, run_id: str) -> None:
        """Wait while the run is being reloaded after a failed append."""
        if self.reloading(run_id):
            async with self._locks[run_id]:
                pass

    def settled(self, run_id: str) -> Awaitable[list[Any]]:
        """The outcomes of the run's appends in flight (an exception for a failed one)."""
        return asyncio.gather(*self._appending.get(run_id, ()), return_exceptions=True)

    def decide(
        self,
        run_id: str,
        items: Sequence[tuple[Command, Cause]],
        verdicts: list[ReportVerdict] | None = None,
    ) -> Decision | None:
        """Decide `items` against the run's newest state: the durable one, or the one that
        appends still in flight will make durable. Synchronous, so decisions on one run
        never interleave, and the next batch can be decided while this one is appended
        (pipelining: the store commits them in order, often in one fsync). Nothing is
        decided for a run no longer in memory (one that ended and was forgotten since).
        `verdicts`, if given, gets what the core made of each item's report, in order."""
        before = self._ahead.get(run_id) or self.runs.get(run_id)
        if before is None:
            return None
        folding = Folding(before)  # one copy of the run for the whole batch
        events: list[RunEvent] = []
        causes: list[Cause] = []
        span_ids: list[str] = []
        delta: dict[str, int] = {}
        base = self.context()
        for command, cause in items:
            began = time.time_ns()
            state = folding.state  # changed in place by the decision: read it before
            first, version = _first_cause(state, command, cause), state.version + 1
            ctx = _loaded(base, delta) if delta else base
            if verdicts is not None:
                verdicts.append(report_check.verdict(state, command))
            decided = decide_into(folding, command, ctx)
            if decided:
                trace = cause.trace_id or folding.state.trace_id
                causes += _causes(first, run_id, version, len(decided), trace)
                span_id = self._obs.decided(state, command, cause, decided, began)
                span_ids += [span_id] * len(decided)
                events += decided
                load_delta(decided, delta)
        state = folding.state
        if not events:
            return None
        self._ahead[run_id] = state
        load = journal.load_change(before, state, events)
        self._registry.add_inflight(run_id, load)
        if self.on_decided is not None:
            self.on_decided(run_id, state, load)
        envelopes = journal.run_envelopes(run_id, before.version + 1, events, causes, span_ids)
        append = asyncio.ensure_future(
            self._store.append(journal.run_stream(run_id), envelopes, before.version)
        )
        self._appending[run_id].add(append)
        append.add_done_callback(self._appending[run_id].discard)
        self._uncommitted[run_id] += 1
        return Decision(run_id, before, state, events, append, span_ids, time.perf_counter())

    async def commit(self, d: Decision) -> bool:
        """Once the decision's append is durable, act on it; on failure, reload the run.
        A run that has ended and has nothing left to commit is handed to `finished`."""
        try:
            return await self._commit(d)
        finally:
            self._uncommitted[d.run_id] -= 1
            if not self._uncommitted[d.run_id]:
                del self._uncommitted[d.run_id]
                state = self.runs.get(d.run_id)
                if state is not None and state.terminal:
                    for old in self.finished.keep(d.run_id):
                        self._forget(old)

    def _forget(self, run_id: str) -> None:
        """Drop a finished run and all kept for it; a decision in flight keeps it (it comes
        back to `finished.keep` once committed)."""
        if self._uncommitted[run_id]:
            return
        self.runs.pop(run_id, None)
        self._ahead.pop(run_id, None)
        self._locks.pop(run_id, None)
        self._appending.pop(run_id, None)
        self._registry.set_inflight(run_id, {})
        for forget in self.on_forget:
            forget(run_id)

    async def _commit(self, d: Decision) -> bool:
        try:
            stored = await d.append
        except StorageError as exc:  # a full disk refuses every append: one line, counted
            self._health.storage_failed(f"append to run {d.run_id}", exc)
            await self._reload(d.run_id)
            return False
        except ConcurrencyError as exc:  # another writer moved the run on: no traceback
            log.warning("append to run %s refused (%s); reloading it from the store", d.run_id, exc)
            await self._reload(d.run_id)
            return False
        except EventStoreError:
            log.exception("append to run %s failed; reloading it from the store", d.run_id)
            await self._reload(d.run_id)
            return False
        self._health.storage.ok()
        self._health.progressed(d.run_id)
        self._obs.appended("run", time.perf_counter() - d.appending_since)
        served = self.runs.get(d.run_id)
        if served is None:
            return True  # stepped down meanwhile: its new owner acts on what is durable
        if d.state.version > served.version:
            self.runs[d.run_id] = d.state
        self._obs.recorded(d.before, d.state, d.events, d.span_ids)
        self._act(d.state, effects(d.state, d.events))
        if journal.snapshot_due(d.before, d.state):
            self._spawn(self._snapshot(d.state, stored[-1].position))
        if d.state.terminal:
            self.finished.ended(d.run_id, self.runs[d.run_id])
            if self._checkpoints is not None:
                self._checkpoints.request()
        return True

    async def _reload(self, run_id: str) -> None:
        """After a failed append: let the appends decided after it settle (they fail too,
        their expected version being gone), then start again from what the store holds."""
        async with self._locks.setdefault(run_id, asyncio.Lock()):
            await self.settled(run_id)
            self._ahead.pop(run_id, None)
            if run_id not in self.runs:
                return  # stepped down from it meanwhile
            with contextlib.suppress(EventStoreError):
                if await self._store.stream_version(journal.run_stream(run_id)):
                    self.runs[run_id] = await journal.load_run(self._store, run_id)
                else:
                    self.runs[run_id] = RunState(run_id)
            self._registry.set_inflight(run_id, journal.running_agents(self.runs[run_id]))
        if self.after_reload is not None and run_id in self.runs:
            await self.after_reload(self.runs[run_id])

    def drop(self, run_id: str) -> None:
        """Stop serving a run another orchestrator decides for now: it leaves memory with
        all kept for it (appends in flight still land, or fail and are not retried)."""
        if self.runs.pop(run_id, None) is None:
            return
        self._ahead.pop(run_id, None)
        self._registry.set_inflight(run_id, {})
        for forget in self.on_forget:
            forget(run_id)

    async def _snapshot(self, state: RunState, position: int) -> None:
        try:
            await self._store.save_snapshot(journal.snapshot_of(state, position))
        except StorageError as exc:
            self._health.storage_failed(f"snapshot of run {state.run_id}", exc)
        except EventStoreError as exc:
            log.warning("snapshot of run %s failed (replay still works): %s", state.run_id, exc)
