"""The run summaries: one row per run (status, workflow, started, finished, tasks done of
total, tokens), a projection of the run streams kept by the store's `Projector` beside the
log, so the runs list reads rows instead of folding runs. The log stays the one source of
truth: the rows are a cache that a replay rebuilds (drop them, or start on a store that has
none, and the projector folds them again from position 1), and a row is exactly what
`summary_of` makes of the run's folded state at the row's version (the tests compare).

The rows live in the store's projection port (`EventStore.projections`; SQLite: in the
log's file, committed with the checkpoint in one transaction; JetStream: in memory,
saved with the checkpoint beside the log every few seconds and at close, bound to the
hash chain, so a restart folds only what came after the last save)."""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable

import msgspec

from eventstore import (
    CheckpointConflictError,
    EventStore,
    EventStoreError,
    ProjectionStore,
    ProjectionView,
    Projector,
    StoredEvent,
)
from eventstore.projection import check_projection_name
from orchestrator.core.errors import OrchestratorError, UnknownRun
from orchestrator.core.run_state import TERMINAL_RUN
from orchestrator.core.state import Folding, RunState
from orchestrator.service import journal

log = logging.getLogger("baton.summaries")

NAME = "run-summaries.v1"
"""The projection's name (its rows and checkpoint in the port). Another shape of
`RunSummary` takes another name: its rows are then folded again from the log."""
HELD = 64
"""Runs whose folded state the projection keeps between events (the least recently
touched are dropped, and folded again from the log if they move on)."""
BATCH = 1000
PACE_S = 0.5
"""Once caught up, the projector commits at most about this often (what was appended
meanwhile, together): a commit per append would double the log's fsyncs beside a busy
orchestrator. The runs list folds the few runs moved since (see `runs_list.Summaries`)."""
RESTART_S = 1.0
"""How long the projector waits before it starts again after a failure (doubled after
each, up to `RESTART_MAX_S`): the runs list folds meanwhile."""
RESTART_MAX_S = 60.0


class RunSummary(msgspec.Struct, frozen=True):
    """One run's row: what the runs list shows, as of the run's `version`."""

    run_id: str
    version: int
    workflow: str
    status: str
    started_at: float
    finished_at: float
    done: int
    total: int
    tokens: int
    forked_from: str = ""

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_RUN

    def duration_s(self, now: float) -> float:
        """How long the run took, or has taken until `now` if it has not ended."""
        if not self.started_at:
            return 0.0
        return max(0.0, (self.finished_at or now) - self.started_at)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(RunSummary)


def summary_of(state: RunState) -> RunSummary:
    """A run's row, from its folded state."""
    return RunSummary(
        run_id=state.run_id,
        version=state.version,
        workflow=state.workflow.name if state.workflow else "?",
        status=state.status,
        started_at=state.started_at,
        finished_at=state.finished_at,
        done=sum(t.status == "succeeded" for t in state.tasks.values()),
        total=len(state.tasks),
        tokens=state.tokens_spent,
        forked_from=state.forked_from,
    )


def decode(row: bytes) -> RunSummary:
    return _decoder.decode(row)


class RunSummaries:
    """The projection: folds each run event into its run's state (kept for the runs it
    touched last, `HELD`) and stages the row of every run a batch moved, once per batch.
    A run whose state it does not hold at the version before the event (dropped, or the
    projector started again from its checkpoint) is loaded from the log as of the event
    before, so a row never depends on what this process happened to keep."""

    def __init__(self, store: EventStore, name: str = NAME, held: int = HELD) -> None:
        self.name = check_projection_name(name)
        self._store = store
        self._held = held
        self._folding: OrderedDict[str, Folding] = OrderedDict()
        self._moved: dict[str, None] = {}

    async def apply(self, event: StoredEvent, view: ProjectionView) -> None:
        if not event.stream.startswith(journal.RUN_PREFIX):
            return
        run_id = journal.run_id_of(event.stream)
        folding = self._folding.get(run_id)
        if folding is None or folding.state.version != event.version - 1:
            if event.version == 1:
                state = RunState(run_id)
            else:
                state = await journal.load_run(self._store, run_id, event.position - 1)
            folding = Folding(state)
            self._folding[run_id] = folding
        self._folding.move_to_end(run_id)
        folding.fold([journal.decode_run_event(event)])
        self._moved[run_id] = None

    async def flush(self, view: ProjectionView) -> None:
        for run_id in self._moved:
            state = self._folding[run_id].state
            view.put(run_id, _encoder.encode(summary_of(state)))
            if state.terminal:  # a run that ended moves no more: free its state now
                del self._folding[run_id]
        self._moved = {}
        while len(self._folding) > self._held:
            self._folding.popitem(last=False)


async def _always() -> None:
    return None


async def seed(
    store: EventStore,
    port: ProjectionStore,
    name: str = NAME,
    quiet: Callable[[], Awaitable[None]] = _always,
) -> int:
    """Fill an empty projection at once, as of the log's last position P: each run's row
    from its state at P (`load_run`, from its newest snapshot bound to the log, then its
    events), committed with the checkpoint P; the projector folds on from P + 1. A
    rebuild that replays snapshots, not every event of every run. Returns the checkpoint
    (the one already there if the projection was not empty). Before each run it awaits
    `quiet` (a console lets the rows a person waits for be folded first)."""
    found = await port.checkpoint(name)
    if found:
        return found
    last = await store.last_position()
    if not last:
        return 0
    rows: dict[str, bytes] = {}
    for stream in await store.streams(journal.RUN_PREFIX):
        await quiet()
        run_id = journal.run_id_of(stream)
        try:
            state = await journal.load_run(store, run_id, last)
        except UnknownRun:  # its first event came after `last`: the projector folds it
            continue
        rows[run_id] = _encoder.encode(summary_of(state))
    await port.commit(name, 0, last, rows)
    return last


async def follow(
    store: EventStore,
    port: ProjectionStore,
    name: str = NAME,
    quiet: Callable[[], Awaitable[None]] = _always,
) -> None:
    """Keep the rows up to date with the log until cancelled or the store closes: an
    empty projection is seeded (`seed`, yielding to `quiet`), then the projector goes on
    from the checkpoint;
    the same again after a failure (another process moved the checkpoint first, the log
    could not be read), with a new projection (it holds no state from before)."""
    wait_s = RESTART_S
    while True:
        try:
            await seed(store, port, name, quiet)
            projection = RunSummaries(store, name)
            await Projector(store, port, projection, batch_size=BATCH, pace_s=PACE_S).run()
            return  # the store closed
        except CheckpointConflictError:
            continue  # another console on this log committed first: carry on from there
        except (EventStoreError, OrchestratorError) as exc:
            log.warning("the run summaries stopped (%s); starting again in %gs", exc, wait_s)
            await asyncio.sleep(wait_s)
            wait_s = min(RESTART_MAX_S, 2 * wait_s)
