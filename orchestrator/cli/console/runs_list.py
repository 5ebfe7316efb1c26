"""The console's runs list (`baton status --all`, paged and filtered), from the run
summaries (`orchestrator.service.run_summaries`), a projection of the log kept beside it:
its rows are kept decoded between pages, and a row the projection has not caught up with
yet is folded from the log, so a page is always what the log says now."""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import msgspec

from eventstore import EventQuery, EventStore, EventStoreError, ProjectionStore, StoredEvent
from orchestrator.cli.console.errors import BadInput
from orchestrator.cli.console.reads import PAGE_MAX
from orchestrator.core.state import RunState
from orchestrator.service import journal, run_summaries
from orchestrator.service.run_summaries import RunSummary

RUN_STATUSES = ("new", "running", "completed", "failed", "stopped")
StatusFilter = Literal["", "new", "running", "completed", "failed", "stopped"]
LAG_MAX = 5000
"""Past this many events behind the log (the projection is being rebuilt), the runs list
folds its rows from the log rather than look for the runs those events moved."""
HELD = 64


@dataclass
class Projected:
    """The run summaries projection's rows, decoded, as of its checkpoint `at`, with their
    run ids sorted; and `moved`, the runs events after `at` moved (their rows are folded
    from the log instead)."""

    at: int = 0
    rows: dict[str, RunSummary] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    moved: frozenset[str] = frozenset()

    def current(self, run_id: str) -> RunSummary | None:
        return None if run_id in self.moved else self.rows.get(run_id)

    def newest_first(self, before: str) -> tuple[Iterable[str], int]:
        """The run ids older than `before` ('' none), newest first, and how many."""
        upto = bisect.bisect_left(self.ids, before) if before else len(self.ids)
        new = (i for i in self.moved if i not in self.rows and (not before or i < before))
        unseen = sorted(new, reverse=True)
        older = (self.ids[n] for n in range(upto - 1, -1, -1))
        return heapq.merge(older, unseen, reverse=True), upto + len(unseen)


@dataclass
class Summaries:
    """The runs' rows: from the run summaries projection in `port` where it is current,
    else folded from the log (the states of runs still going are kept, `HELD` of them,
    and folded on from where they were; the rows of ended runs are kept, `limit`).

    The projection's rows are decoded once and kept (`kept`); as its checkpoint moves on,
    only the rows of the runs the events in between moved are read again, so a page of a
    log with a hundred thousand runs does not decode a hundred thousand rows."""

    port: ProjectionStore | None = None
    name: str = run_summaries.NAME
    limit: int = 20000
    ended: OrderedDict[str, RunSummary] = field(default_factory=OrderedDict)
    states: OrderedDict[str, RunState] = field(default_factory=OrderedDict)
    folding: dict[str, asyncio.Future[RunSummary]] = field(default_factory=dict)
    folded: int = 0
    """Rows folded from the log so far (not read from the projection)."""
    lag_max: int = LAG_MAX
    kept: Projected = field(default_factory=Projected)
    reading: asyncio.Lock = field(default_factory=asyncio.Lock)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while no page is being put together and no row folded (`quiet` waits for it)."""
    pages: int = 0

    def __post_init__(self) -> None:
        self.idle.set()

    async def quiet(self) -> None:
        """Return once no page is being put together: the projection's seeding yields to
        pages (on a log it has not projected yet, the first page's rows are folded)."""
        await self.idle.wait()

    @contextlib.contextmanager
    def paging(self) -> Iterator[None]:
        """While a page is put together (`quiet` waits)."""
        self.pages += 1
        self.idle.clear()
        try:
            yield
        finally:
            self.pages -= 1
            self._settle()

    def _settle(self) -> None:
        if not self.pages and not self.folding:
            self.idle.set()

    async def projected(self, store: EventStore) -> Projected | None:
        """The projection's rows and the runs moved since its checkpoint; `None` while
        it has none or is far behind (being rebuilt), or its rows cannot be read."""
        if self.port is None:
            return None
        try:
            async with self.reading:
                checkpoint = await self.port.checkpoint(self.name)
                if not checkpoint:
                    return None
                kept = await self._catch_up(store, self.port, checkpoint)
            last = await store.last_position()
            moved: frozenset[str] = frozenset()
            if last > checkpoint:
                newer = await store.query(
                    EventQuery(from_position=checkpoint + 1, limit=self.lag_max + 1)
                )
                if len(newer) > self.lag_max:
                    return None
                moved = frozenset(_runs_of(newer))
        except (EventStoreError, msgspec.DecodeError):  # the log can still be folded
            self.kept = Projected()
            return None
        return Projected(kept.at, kept.rows, kept.ids, moved)

    async def _catch_up(
        self, store: EventStore, port: ProjectionStore, checkpoint: int
    ) -> Projected:
        """`kept` brought to `checkpoint`: the rows of the runs moved in between read
        again, or every row when that is more than `lag_max` events (or the first time)."""
        kept = self.kept
        if kept.at == checkpoint:
            return kept
        if kept.at and kept.at < checkpoint <= kept.at + self.lag_max:
            between = await store.query(
                EventQuery(from_position=kept.at + 1, to_position=checkpoint)
            )
            rows, ids = dict(kept.rows), kept.ids
            for run_id in _runs_of(between):
                raw = await port.get(self.name, run_id)
                if raw is None:
                    continue
                if run_id not in rows:
                    ids = [*ids[: (at := bisect.bisect_left(ids, run_id))], run_id, *ids[at:]]
                rows[run_id] = run_summaries.decode(raw)
            self.kept = Projected(checkpoint, rows, ids)
        else:
            decoded = {k: run_summaries.decode(v) for k, v in await port.items(self.name)}
            self.kept = Projected(checkpoint, decoded, sorted(decoded))
        return self.kept

    async def row(self, store: EventStore, run_id: str) -> RunSummary:
        """A run's row as the log has it now, folded (see `projected` for the fast way)."""
        kept = self.ended.get(run_id)
        if kept is not None:
            self.ended.move_to_end(run_id)
            return kept
        folding = self.folding.get(run_id)
        if folding is None:  # one fold per run at a time, however many pages ask
            folding = asyncio.ensure_future(self._fold(store, run_id))
            self.folding[run_id] = folding
            self.idle.clear()
            folding.add_done_callback(lambda _: self._folded(run_id))
        return await asyncio.shield(folding)

    def _folded(self, run_id: str) -> None:
        self.folding.pop(run_id, None)
        self._settle()

    async def _fold(self, store: EventStore, run_id: str) -> RunSummary:
        before = self.states.pop(run_id, None)
        if before is None:
            state = await journal.load_run(store, run_id)
        else:
            state = await journal.fold_run(store, before, None)
        made = run_summaries.summary_of(state)
        self.folded += 1
        if made.ended:
            self.ended[run_id] = made
            while len(self.ended) > self.limit:
                self.ended.popitem(last=False)
        else:
            self.states[run_id] = state
            while len(self.states) > HELD:
                self.states.popitem(last=False)
        return made


def _runs_of(events: Iterable[StoredEvent]) -> set[str]:
    return {journal.run_id_of(e.stream) for e in events if e.stream.startswith(journal.RUN_PREFIX)}


class RunFilter(msgspec.Struct, frozen=True):
    """The runs list's filters; every field at its default matches every run."""

    status: StatusFilter = ""
    workflow: str = ""
    text: str = ""
    """A substring of the run id or of the workflow's name."""
    since: float = 0.0
    """Only runs started at or after this Unix time."""
    until: float = 0.0
    """Only runs started before this Unix time (0: no bound)."""

    def matches(self, row: RunSummary) -> bool:
        return (
            (not self.status or row.status == self.status)
            and (not self.workflow or row.workflow == self.workflow)
            and (not self.text or self.text in row.run_id or self.text in row.workflow)
            and row.started_at >= self.since
            and (not self.until or row.started_at < self.until)
        )


class RunsPage(msgspec.Struct, frozen=True):
    rows: list[RunSummary]
    next_before: str
    """The cursor of the next (older) page: pass it as `before`; '' on the last page."""
    scanned: int


async def runs_page(
    store: EventStore,
    summaries: Summaries,
    wanted: RunFilter,
    before: str = "",
    size: int = 50,
) -> RunsPage:
    """Newest runs first (run ids begin with their start time), `size` of those that
    match, older than the run `before`: the projection's rows, kept in memory, and the
    rows of the runs it has not reached, folded. Without a current projection, every run
    is folded (runs still open found with `open_streams` for a `running` or `new` filter,
    without reading the ended ones)."""
    if not 1 <= size <= PAGE_MAX:
        raise BadInput("size", f"must be 1 to {PAGE_MAX}")
    with summaries.paging():
        return await _runs_page(store, summaries, wanted, before, size)


async def _runs_page(
    store: EventStore, summaries: Summaries, wanted: RunFilter, before: str, size: int
) -> RunsPage:
    projected = await summaries.projected(store)
    ids: Iterable[str]
    if projected is None:
        if wanted.status in ("running", "new"):
            names = await store.open_streams(journal.RUN_PREFIX, journal.ENDINGS)
        else:
            names = await store.streams(journal.RUN_PREFIX)
        listed = sorted((journal.run_id_of(n) for n in names), reverse=True)
        if before:
            listed = [i for i in listed if i < before]
        ids, count = listed, len(listed)
    else:  # every run has a row, or has moved since the projection's checkpoint
        ids, count = projected.newest_first(before)
    rows: list[RunSummary] = []
    for scanned, run_id in enumerate(ids, start=1):
        row = (projected and projected.current(run_id)) or await summaries.row(store, run_id)
        if wanted.matches(row):
            rows.append(row)
            if len(rows) == size:
                return RunsPage(rows, run_id if scanned < count else "", scanned)
    return RunsPage(rows, "", count)
