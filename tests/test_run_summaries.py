"""The run summaries projection (`orchestrator.service.run_summaries`) checked against the
fold: on the golden logs (every pattern and ending) and a fork, each row is exactly
`summary_of` the run's replayed state, whatever the batch size, however few run states
the projection keeps, and when the projector is stopped half-way and started again; a
rebuild into an empty port gives the same rows; and the runs list reads the rows that
are current and folds only the runs the projection has not reached yet."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import MemoryEventStore, ProjectionStore, Projector
from eventstore.memory import MemoryProjections
from orchestrator.cli import history
from orchestrator.cli.console import reads, runs_list
from orchestrator.service import journal, run_summaries
from orchestrator.service.run_summaries import RunSummaries, RunSummary
from tests.test_eventstore_contract import ev
from tests.test_golden import LOGS


def _store() -> tuple[MemoryEventStore, list[str]]:
    async def made() -> tuple[MemoryEventStore, list[str]]:
        store = MemoryEventStore()
        runs = [await history.import_lines(store, log.read_text().splitlines()) for log in LOGS]
        positions = await reads.run_positions(store, runs[0])
        middle = positions[len(positions) // 2]
        await history.fork(store, runs[0], middle, "fork-of-first", actor="human:tester")
        return store, [*runs, "fork-of-first"]

    return asyncio.run(made())


async def _folded(store: MemoryEventStore, runs: list[str]) -> dict[str, RunSummary]:
    return {r: run_summaries.summary_of(await journal.load_run(store, r)) for r in runs}


async def _rows(port: ProjectionStore, name: str) -> dict[str, RunSummary]:
    return {k: run_summaries.decode(v) for k, v in await port.items(name)}


@pytest.mark.parametrize(("batch", "held"), [(1, 1), (3, 2), (1000, 64)])
def test_every_row_is_the_fold_of_its_run(batch: int, held: int) -> None:
    store, runs = _store()

    async def scenario() -> None:
        last = await store.last_position()
        projection = RunSummaries(store, held=held)
        done = await Projector(store, store.projections, projection, batch_size=batch).run(
            until_position=last
        )
        assert done == last
        rows = await _rows(store.projections, run_summaries.NAME)
        assert rows == await _folded(store, runs), "one row per run, each the fold"
        statuses = {r.status for r in rows.values()}
        assert {"completed", "failed", "stopped"} <= statuses, "the logs end every way"
        assert any(r.done < r.total for r in rows.values())
        assert rows["fork-of-first"].forked_from.startswith(f"{runs[0]}@")

    asyncio.run(scenario())


def test_a_projector_stopped_half_way_carries_on_and_a_rebuild_gives_the_same_rows() -> None:
    store, runs = _store()

    async def scenario() -> None:
        last = await store.last_position()
        half = last // 2
        port = MemoryEventStore().projections
        first = Projector(store, port, RunSummaries(store, held=1), batch_size=7)
        assert await first.run(until_position=half) == half
        assert await port.checkpoint(run_summaries.NAME) == half
        # a new projection holds no run's state: it loads the runs it meets mid-way
        again = Projector(store, port, RunSummaries(store, held=1), batch_size=7)
        assert await again.run(until_position=last) == last
        folded = await _folded(store, runs)
        assert await _rows(port, run_summaries.NAME) == folded
        rebuilt = MemoryEventStore().projections
        await Projector(store, rebuilt, RunSummaries(store)).run(until_position=last)
        assert await _rows(rebuilt, run_summaries.NAME) == folded

    asyncio.run(scenario())


def test_the_runs_list_reads_current_rows_and_folds_only_the_runs_not_reached() -> None:
    store, runs = _store()

    async def scenario() -> None:
        projected_until = await store.last_position()
        await Projector(store, store.projections, RunSummaries(store)).run(
            until_position=projected_until
        )
        # the log moves on past the projection: a run it has not seen
        await history.fork(store, runs[1], projected_until, "late-fork", actor="human:tester")
        summaries = runs_list.Summaries(store.projections)
        page = await runs_list.runs_page(store, summaries, runs_list.RunFilter(), size=200)
        assert summaries.folded == 1, "only the run the projection has not reached is folded"
        by_fold = await runs_list.runs_page(
            store, runs_list.Summaries(), runs_list.RunFilter(), size=200
        )
        assert [(r.run_id, r.status, r.done, r.total, r.tokens) for r in page.rows] == [
            (r.run_id, r.status, r.done, r.total, r.tokens) for r in by_fold.rows
        ]
        assert len(page.rows) == len(runs) + 1

    asyncio.run(scenario())


def test_rows_that_do_not_decode_are_folded_from_the_log_instead() -> None:
    store, runs = _store()

    async def scenario() -> None:
        last = await store.last_position()
        await store.projections.commit(run_summaries.NAME, 0, last, {runs[0]: b"\xc1 not a row"})
        summaries = runs_list.Summaries(store.projections)
        page = await runs_list.runs_page(store, summaries, runs_list.RunFilter(), size=200)
        assert summaries.folded == len(runs), "every row folded from the log"
        folded = await _folded(store, runs)
        assert {r.run_id: (r.status, r.done, r.total) for r in page.rows} == {
            r: (s.status, s.done, s.total) for r, s in folded.items()
        }

    asyncio.run(scenario())


class CountingCommits(MemoryProjections):
    """The in-memory port, counting its commits."""

    commits = 0

    async def commit(self, *args: Any, **kwargs: Any) -> None:
        await super().commit(*args, **kwargs)
        self.commits += 1


def test_a_paced_projector_commits_what_came_during_its_pause_together() -> None:
    """Caught up, the projector pauses before its next batch: appends made meanwhile
    are committed in one commit, not one each (the log's fsyncs are not doubled)."""
    store, _ = _store()

    async def scenario() -> None:
        port = CountingCommits(MemoryEventStore())
        last = await store.last_position()
        projector = Projector(store, port, RunSummaries(store), batch_size=10_000, pace_s=1.0)
        task = asyncio.create_task(projector.run())
        async with asyncio.timeout(30):
            while await port.checkpoint(run_summaries.NAME) < last:
                await asyncio.sleep(0.01)
            before = port.commits
            for n in range(5):  # during the pause that follows the catching up
                await store.append(f"other-{n}", [ev(f"x{n}")], 0)
            while await port.checkpoint(run_summaries.NAME) < last + 5:
                await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert port.commits == before + 1

    asyncio.run(scenario())


def test_a_seeded_projection_is_the_fold_and_the_projector_goes_on_from_it() -> None:
    """An empty projection is filled at once from each run's state at the log's last
    position (snapshots, then events); the projector folds what comes after."""
    store, runs = _store()

    async def scenario() -> None:
        port = MemoryEventStore().projections
        seeded_at = await store.last_position()
        assert await run_summaries.seed(store, port) == seeded_at
        assert await _rows(port, run_summaries.NAME) == await _folded(store, runs)
        assert await run_summaries.seed(store, port) == seeded_at, "seeded once"
        await history.fork(store, runs[2], seeded_at, "after-seed", actor="human:tester")
        last = await store.last_position()
        await Projector(store, port, RunSummaries(store)).run(until_position=last)
        rows = await _rows(port, run_summaries.NAME)
        assert rows == await _folded(store, [*runs, "after-seed"])

    asyncio.run(scenario())


def _shown(page: runs_list.RunsPage) -> list[tuple[str, str, int, int, int]]:
    return [(r.run_id, r.status, r.done, r.total, r.tokens) for r in page.rows]


async def _every_page(
    store: MemoryEventStore, summaries: runs_list.Summaries, wanted: runs_list.RunFilter, size: int
) -> list[tuple[str, str, int, int, int]]:
    """Every page of the runs list, following each page's cursor to the end."""
    shown: list[tuple[str, str, int, int, int]] = []
    before = ""
    while True:
        page = await runs_list.runs_page(store, summaries, wanted, before, size)
        shown += _shown(page)
        if not page.next_before:
            return shown
        before = page.next_before


FORK_IDS = st.sampled_from(["0-first", "zz-last", "20261204-120000-aaaaaa", "m-middle", "fk1"])
STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("fork"), st.integers(0, 100), st.integers(1, 99), FORK_IDS),
        st.tuples(st.just("project"), st.integers(0, 100)),
        st.tuples(
            st.just("page"),
            st.integers(1, 7),
            st.sampled_from(["", "completed", "failed", "stopped"]),
        ),
    ),
    min_size=1,
    max_size=12,
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=STEPS, lag_max=st.sampled_from([2, 40, runs_list.LAG_MAX]))
def test_a_kept_runs_list_shows_what_a_fold_shows_as_the_log_and_projection_move(
    steps: list[tuple[Any, ...]], lag_max: int
) -> None:
    """One console's `Summaries`, kept across pages while runs are forked (ids before,
    among and after the others) and the projection is caught up in jumps (small ones read
    only the moved rows again, large ones every row): every page, followed to the end
    through its cursors, is what a runs list folded from the log alone shows."""
    store, runs = _store()

    async def scenario() -> None:
        port = MemoryEventStore().projections
        kept = runs_list.Summaries(port, lag_max=lag_max)
        projected = 0
        made = 0
        for step in steps:
            last = await store.last_position()
            if step[0] == "fork":
                _, which, at, new_id = step
                source = runs[which % len(runs)]
                positions = await reads.run_positions(store, source)
                new_id = f"{new_id}-{made}"
                made += 1
                await history.fork(
                    store, source, positions[at * len(positions) // 100], new_id, "human:t"
                )
                runs.append(new_id)
            elif step[0] == "project":
                target = projected + (last - projected) * step[1] // 100
                if target > projected:
                    projector = Projector(store, port, RunSummaries(store))
                    projected = await projector.run(until_position=target)
            else:
                _, size, status = step
                wanted = runs_list.RunFilter(status=status)
                shown = await _every_page(store, kept, wanted, size)
                assert shown == await _every_page(store, runs_list.Summaries(), wanted, size)
                assert len({row[0] for row in shown}) == len(shown), "a run shown twice"
        everything = await _every_page(store, kept, runs_list.RunFilter(), 5)
        assert sorted(row[0] for row in everything) == sorted(runs)

    asyncio.run(scenario())


class GatedReads(MemoryEventStore):
    """The in-memory store whose next stream read, once `hold` is called, waits for
    `gate` (the reads after it do not)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.held = False

    def hold(self) -> None:
        self.held = True

    async def read_stream(self, *args: Any, **kwargs: Any) -> Any:
        if self.held:
            self.held = False
            await self.gate.wait()
        return await super().read_stream(*args, **kwargs)


def test_seeding_waits_while_a_page_folds_the_rows_it_shows() -> None:
    """On a log with no projection yet, a page's rows are folded from the log while the
    projection is seeded: the seed yields to the page (`Summaries.quiet`), so the first
    page does not wait for the seed's folds."""

    async def scenario() -> None:
        store = GatedReads()
        runs = [await history.import_lines(store, log.read_text().splitlines()) for log in LOGS]
        port = MemoryEventStore().projections
        summaries = runs_list.Summaries(port)
        store.hold()  # the page's fold is under way, and waits
        folding = asyncio.ensure_future(summaries.row(store, runs[0]))
        await asyncio.sleep(0.01)
        assert not summaries.idle.is_set()
        seeding = asyncio.ensure_future(run_summaries.seed(store, port, quiet=summaries.quiet))
        await asyncio.sleep(0.05)
        assert not seeding.done(), "the seed waits for the page"
        store.gate.set()
        row = await folding
        assert row.run_id == runs[0]
        assert summaries.idle.is_set()
        assert await seeding == await store.last_position()
        assert await _rows(port, run_summaries.NAME) == await _folded(store, runs)
        with summaries.paging():  # a whole page, not only each of its folds
            assert not summaries.idle.is_set()
        assert summaries.idle.is_set()

    asyncio.run(scenario())
