"""The behaviour every `EventStore` backend must share, run against each of them.

`EventStoreContract` holds the tests; each backend subclasses it with a `make_store`
factory. Tests are plain functions that drive the async API through `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstore import (
    GENESIS,
    ConcurrencyError,
    DuplicateEventError,
    EventQuery,
    EventStore,
    InvalidEventError,
    MemoryEventStore,
    NewEvent,
    SqliteEventStore,
    StorageError,
    StoredEvent,
)

T = TypeVar("T")


def ev(event_id: str, type: str = "thing.happened", data: bytes = b"{}", **meta: Any) -> NewEvent:
    return NewEvent(event_id=event_id, type=type, data=data, **meta)


def same_content(stored: StoredEvent, new: NewEvent, stream: str) -> bool:
    return (
        stored.stream == stream
        and stored.event_id == new.event_id
        and stored.type == new.type
        and stored.data == new.data
        and stored.correlation_id == new.correlation_id
        and stored.causation_id == new.causation_id
        and stored.actor == new.actor
        and stored.trace_id == new.trace_id
        and stored.span_id == new.span_id
    )


# -- random histories (the property test) ----------------------------------------------


@dataclass(frozen=True)
class Append:
    stream: int
    size: int
    version_delta: int  # added to the version the test last saw: 0 is fresh, <0 stale


@dataclass(frozen=True)
class Retry:
    which: int
    version_delta: int


@dataclass(frozen=True)
class PartialRetry:
    which: int


Op = Append | Retry | PartialRetry

ops = st.one_of(
    st.builds(
        Append,
        stream=st.integers(0, 2),
        size=st.integers(0, 3),
        version_delta=st.one_of(st.just(0), st.integers(-3, 2)),
    ),
    st.builds(Retry, which=st.integers(0, 1000), version_delta=st.integers(-2, 2)),
    st.builds(PartialRetry, which=st.integers(0, 1000)),
)
# Each round's operations run concurrently; rounds run one after the other.
histories = st.lists(st.lists(ops, min_size=1, max_size=4), max_size=8)


class EventStoreContract:
    """The contract; subclasses name the backend through `make_store`."""

    max_examples: ClassVar[int] = 200

    def make_store(self) -> AbstractAsyncContextManager[EventStore]:
        """A fresh, empty store, closed when the context ends."""
        raise NotImplementedError

    def run(self, scenario: Callable[[EventStore], Awaitable[T]]) -> T:
        async def main() -> T:
            async with self.make_store() as store:
                return await scenario(store)

        return asyncio.run(main())

    # -- round trip, versions, positions -------------------------------------------------

    def test_round_trip_keeps_every_field(self) -> None:
        first = NewEvent(
            event_id="e-1",
            type="task.assigned",
            data=bytes(range(256)),
            correlation_id="run-42",
            causation_id="msg-7",
            actor="agent:writer",
            trace_id="4bf92f3577b34da6a3ce929d0e0e4736",
            span_id="00f067aa0ba902b7",
        )
        second = NewEvent(event_id="é-2 ✓", type="tâche.finie", data=b"")

        async def scenario(store: EventStore) -> None:
            before = time.time()
            stored = await store.append("run-42", [first, second], 0)
            after = time.time()
            assert [s.position for s in stored] == [1, 2]
            assert [s.version for s in stored] == [1, 2]
            assert same_content(stored[0], first, "run-42")
            assert same_content(stored[1], second, "run-42")
            assert before <= stored[0].recorded_at <= after
            assert stored[0].prev_hash == GENESIS
            assert stored[1].prev_hash == stored[0].hash != GENESIS
            assert await store.read_stream("run-42") == stored
            assert await store.read_all() == stored
            assert await store.query(EventQuery()) == stored
            assert await store.stream_version("run-42") == 2

        self.run(scenario)

    def test_versions_are_per_stream_and_positions_global(self) -> None:
        async def scenario(store: EventStore) -> None:
            await store.append("a", [ev("a1"), ev("a2")], 0)
            await store.append("b", [ev("b1")], 0)
            await store.append("a", [ev("a3")], 2)
            log = await store.read_all()
            assert [(e.event_id, e.position, e.version) for e in log] == [
                ("a1", 1, 1),
                ("a2", 2, 2),
                ("b1", 3, 1),
                ("a3", 4, 3),
            ]
            assert await store.stream_version("a") == 3
            assert await store.stream_version("b") == 1
            assert await store.stream_version("never") == 0
            assert await store.read_stream("never") == []

        self.run(scenario)

    # -- optimistic concurrency and atomicity --------------------------------------------

    @pytest.mark.parametrize("expected", [0, 1, 3, 10])
    def test_wrong_expected_version_raises_concurrency_error(self, expected: int) -> None:
        async def scenario(store: EventStore) -> None:
            await store.append("s", [ev("1"), ev("2")], 0)
            with pytest.raises(ConcurrencyError) as caught:
                await store.append("s", [ev("3")], expected)
            assert (caught.value.stream, caught.value.expected, caught.value.actual) == (
                "s",
                expected,
                2,
            )
            assert [e.event_id for e in await store.read_all()] == ["1", "2"]

        self.run(scenario)

    def test_failed_batch_leaves_nothing(self) -> None:
        async def scenario(store: EventStore) -> None:
            kept = await store.append("s", [ev("1")], 0)
            with pytest.raises(ConcurrencyError):
                await store.append("s", [ev("2"), ev("3"), ev("4")], 0)
            with pytest.raises(DuplicateEventError):
                await store.append("s", [ev("5"), ev("1")], 1)
            with pytest.raises(InvalidEventError):
                await store.append("s", [ev("6"), NewEvent(event_id="", type="t", data=b"")], 1)
            assert await store.read_all() == kept
            assert await store.read_stream("s") == kept
            assert await store.stream_version("s") == 1
            assert (await store.verify()).ok

        self.run(scenario)

    def test_retrying_a_stored_batch_returns_it_unchanged(self) -> None:
        async def scenario(store: EventStore) -> None:
            batch = [ev("1"), ev("2")]
            stored = await store.append("s", batch, 0)
            await store.append("other", [ev("x")], 0)
            # A retry names whatever version the caller had: the stored result wins.
            assert await store.append("s", batch, 0) == stored
            assert await store.append("s", batch, 2) == stored
            assert await store.append("s", batch, 99) == stored
            assert await store.append("s", [ev("2")], 0) == stored[1:]
            assert len(await store.read_all()) == 3
            assert await store.stream_version("s") == 2

        self.run(scenario)

    def test_partly_repeated_batch_raises_duplicate_event_error(self) -> None:
        async def scenario(store: EventStore) -> None:
            await store.append("s", [ev("1"), ev("2")], 0)
            await store.append("t", [ev("9")], 0)
            with pytest.raises(DuplicateEventError) as caught:
                await store.append("s", [ev("2"), ev("3"), ev("1")], 2)
            assert caught.value.stream == "s"
            assert sorted(caught.value.event_ids) == ["1", "2"]
            # An id stored in another stream is not a retry in this one.
            with pytest.raises(DuplicateEventError):
                await store.append("s", [ev("9")], 2)
            assert [e.event_id for e in await store.read_all()] == ["1", "2", "9"]

        self.run(scenario)

    def test_empty_batch_writes_nothing(self) -> None:
        async def scenario(store: EventStore) -> None:
            assert await store.append("s", [], 0) == []
            assert await store.append("s", [], 7) == []
            assert await store.read_all() == []
            assert await store.streams() == []

        self.run(scenario)

    @pytest.mark.parametrize(
        ("stream", "events", "expected"),
        [
            ("", [ev("1")], 0),
            ("has space", [ev("1")], 0),
            ("tab\there", [ev("1")], 0),
            ("new\nline", [ev("1")], 0),
            ("x" * 201, [ev("1")], 0),
            ("ok", [ev("1")], -1),
            ("ok", [NewEvent(event_id="", type="t", data=b"")], 0),
            ("ok", [NewEvent(event_id="1", type="", data=b"")], 0),
            ("ok", [ev("1"), ev("1")], 0),
            ("ok", [NewEvent(event_id="1", type="t", data="text")], 0),  # type: ignore[arg-type]
            ("ok", [ev("\ud800")], 0),
        ],
    )
    def test_invalid_input_is_refused_before_storage(
        self, stream: str, events: list[NewEvent], expected: int
    ) -> None:
        async def scenario(store: EventStore) -> None:
            with pytest.raises(InvalidEventError):
                await store.append(stream, events, expected)
            assert await store.read_all() == []

        self.run(scenario)

    def test_longest_stream_name_is_accepted(self) -> None:
        async def scenario(store: EventStore) -> None:
            name = "ß" * 200
            await store.append(name, [ev("1")], 0)
            assert await store.streams() == [name]

        self.run(scenario)

    # -- concurrency ---------------------------------------------------------------------

    def test_concurrent_appenders_to_different_streams_all_land(self) -> None:
        async def writer(store: EventStore, k: int) -> None:
            for version in range(20):
                await store.append(f"w{k}", [ev(f"w{k}-{version}")], version)

        async def scenario(store: EventStore) -> None:
            await asyncio.gather(*(writer(store, k) for k in range(8)))
            log = await store.read_all()
            assert [e.position for e in log] == list(range(1, 161))
            for k in range(8):
                stream = await store.read_stream(f"w{k}")
                assert [e.version for e in stream] == list(range(1, 21))
                assert [e.event_id for e in stream] == [f"w{k}-{v}" for v in range(20)]
            assert (await store.verify()).ok

        self.run(scenario)

    def test_concurrent_appenders_to_one_stream_exactly_one_wins(self) -> None:
        async def scenario(store: EventStore) -> None:
            results = await asyncio.gather(
                *(store.append("s", [ev(f"c{k}")], 0) for k in range(10)),
                return_exceptions=True,
            )
            winners = [r for r in results if isinstance(r, list)]
            losers = [r for r in results if isinstance(r, ConcurrencyError)]
            assert len(winners) == 1
            assert len(losers) == 9
            assert all((e.expected, e.actual) == (0, 1) for e in losers)
            assert await store.read_stream("s") == winners[0]

        self.run(scenario)

    def test_contending_appenders_each_land_once_in_version_order(self) -> None:
        async def contender(store: EventStore, k: int) -> int:
            conflicts = 0
            for n in range(5):
                while True:
                    version = await store.stream_version("s")
                    try:
                        await store.append("s", [ev(f"k{k}-{n}")], version)
                        break
                    except ConcurrencyError:
                        conflicts += 1
            return conflicts

        async def scenario(store: EventStore) -> None:
            await asyncio.gather(*(contender(store, k) for k in range(6)))
            stream = await store.read_stream("s")
            assert [e.version for e in stream] == list(range(1, 31))
            assert sorted(e.event_id for e in stream) == sorted(
                f"k{k}-{n}" for k in range(6) for n in range(5)
            )
            for k in range(6):  # each contender's own events stay in its order
                mine = [e.event_id for e in stream if e.event_id.startswith(f"k{k}-")]
                assert mine == [f"k{k}-{n}" for n in range(5)]

        self.run(scenario)

    def test_one_failed_request_among_concurrent_ones_fails_alone(self) -> None:
        async def scenario(store: EventStore) -> None:
            await store.append("a", [ev("a1")], 0)
            results = await asyncio.gather(
                store.append("a", [ev("a2"), ev("a3")], 1),
                store.append("a", [ev("stale")], 0),
                store.append("b", [ev("b1")], 0),
                store.append("b", [ev("b2"), ev("a1")], 1),
                store.append("c", [ev("c1")], 0),
                return_exceptions=True,
            )
            assert [type(r).__name__ for r in results] == [
                "list",
                "ConcurrencyError",
                "list",
                "DuplicateEventError",
                "list",
            ]
            ids = [e.event_id for e in await store.read_all()]
            assert ids == ["a1", "a2", "a3", "b1", "c1"]
            assert (await store.verify()).ok

        self.run(scenario)

    # -- reads ---------------------------------------------------------------------------

    def test_read_stream_from_version_and_until_position(self) -> None:
        async def scenario(store: EventStore) -> None:
            await store.append("a", [ev("a1"), ev("a2")], 0)  # positions 1, 2
            await store.append("b", [ev("b1")], 0)  # position 3
            await store.append("a", [ev("a3"), ev("a4")], 2)  # positions 4, 5

            async def ids(**kw: int) -> list[str]:
                return [e.event_id for e in await store.read_stream("a", **kw)]

            assert await ids() == ["a1", "a2", "a3", "a4"]
            assert await ids(from_version=3) == ["a3", "a4"]
            assert await ids(until_position=3) == ["a1", "a2"]
            assert await ids(until_position=4) == ["a1", "a2", "a3"]
            assert await ids(from_version=2, until_position=4) == ["a2", "a3"]
            assert await ids(until_position=0) == []
            assert await ids(from_version=5) == []

        self.run(scenario)

    def test_read_all_from_position_and_limit(self) -> None:
        async def scenario(store: EventStore) -> None:
            for k in range(10):
                await store.append(f"s{k % 3}", [ev(str(k))], k // 3)

            async def positions(**kw: int) -> list[int]:
                return [e.position for e in await store.read_all(**kw)]

            assert await positions() == list(range(1, 11))
            assert await positions(from_position=4) == list(range(4, 11))
            assert await positions(from_position=4, limit=3) == [4, 5, 6]
            assert await positions(limit=0) == []
            assert await positions(from_position=11) == []
            with pytest.raises(InvalidEventError):
                await store.read_all(limit=-1)

        self.run(scenario)

    def test_streams_lists_names_sorted_by_prefix(self) -> None:
        names = ["run-2", "run-10", "agents", "run-1", "r", "rün", "run-1/child", "s"]

        async def scenario(store: EventStore) -> None:
            for name in names:
                await store.append(name, [ev(f"{name}#1"), ev(f"{name}#2")], 0)
            assert await store.streams() == sorted(names)
            assert await store.streams("run-") == ["run-1", "run-1/child", "run-10", "run-2"]
            assert await store.streams("run-1") == ["run-1", "run-1/child", "run-10"]
            assert await store.streams("r") == [
                "r",
                "run-1",
                "run-1/child",
                "run-10",
                "run-2",
                "rün",
            ]
            assert await store.streams("rü") == ["rün"]
            assert await store.streams("zzz") == []
            assert await store.streams("run-1/child") == ["run-1/child"]

        self.run(scenario)

    def test_query_filters_combine(self) -> None:
        async def scenario(store: EventStore) -> None:
            await store.append(
                "run-1",
                [
                    ev("1", "task.assigned", actor="orchestrator", correlation_id="r1"),
                    ev("2", "task.done", actor="agent:a", correlation_id="r1"),
                    ev("3", "tool.called", actor="agent:a", correlation_id="r1"),
                ],
                0,
            )
            await store.append(
                "run-2",
                [
                    ev("4", "task.assigned", actor="orchestrator", correlation_id="r2"),
                    ev("5", "task.gone", actor="agent:b", correlation_id="r2"),
                    ev("6", "odd[1]*", actor="agent:b", correlation_id="r2"),
                ],
                0,
            )

            async def ids(**kw: str | int) -> list[str]:
                return [e.event_id for e in await store.query(EventQuery(**kw))]  # type: ignore[arg-type]

            assert await ids() == ["1", "2", "3", "4", "5", "6"]
            assert await ids(stream="run-2") == ["4", "5", "6"]
            assert await ids(correlation_id="r1") == ["1", "2", "3"]
            assert await ids(actor="agent:a") == ["2", "3"]
            assert await ids(actor="nobody") == []
            assert await ids(type_glob="task.*") == ["1", "2", "4", "5"]
            assert await ids(type_glob="task.?one") == ["2", "5"]
            assert await ids(type_glob="task.d*") == ["2"]
            assert await ids(type_glob="*.assigned") == ["1", "4"]
            assert await ids(type_glob="task") == []
            assert await ids(type_glob="odd[1]?") == ["6"]
            assert await ids(type_glob="odd[1]") == []
            assert await ids(type_glob="TASK.*") == []
            assert await ids(type_glob="task.*", actor="orchestrator", correlation_id="r2") == ["4"]
            assert await ids(type_glob="task.*", from_position=3) == ["4", "5"]
            assert await ids(type_glob="*", from_position=2, limit=2) == ["2", "3"]
            assert await ids(stream="run-1", actor="agent:b") == []

        self.run(scenario)

    def test_verify_reports_every_event_checked(self) -> None:
        async def scenario(store: EventStore) -> None:
            empty = await store.verify()
            assert (empty.ok, empty.checked, empty.first_bad_position) == (True, 0, None)
            for k in range(5):
                await store.append("s", [ev(f"{k}a"), ev(f"{k}b")], 2 * k)
            report = await store.verify()
            assert (report.ok, report.checked, report.first_bad_position) == (True, 10, None)

        self.run(scenario)

    def test_closed_store_refuses_calls(self) -> None:
        async def main() -> None:
            async with self.make_store() as store:
                await store.append("s", [ev("1")], 0)
                await store.close()
                await store.close()  # closing twice is harmless
                with pytest.raises(StorageError):
                    await store.append("s", [ev("2")], 1)
                with pytest.raises(StorageError):
                    await store.read_all()
                with pytest.raises(StorageError):
                    await store.verify()

        asyncio.run(main())

    # -- random histories ----------------------------------------------------------------

    def test_random_histories_keep_the_log_invariants(self) -> None:
        @settings(
            max_examples=self.max_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(rounds=histories)
        def check(rounds: list[list[Op]]) -> None:
            self.run(lambda store: self._play(store, rounds))

        check()

    async def _play(self, store: EventStore, rounds: list[list[Op]]) -> None:
        fresh = (f"id{n}" for n in itertools.count())
        names = ["s0", "s1", "s2"]
        acked: list[tuple[str, list[NewEvent], list[StoredEvent]]] = []
        rejected: set[str] = set()
        version = dict.fromkeys(names, 0)  # what the test has seen acknowledged

        for ops_in_round in rounds:
            calls: list[tuple[Op, str, list[NewEvent], int, list[StoredEvent]]] = []
            for op in ops_in_round:
                original: list[StoredEvent] = []
                if isinstance(op, Append):
                    stream = names[op.stream]
                    batch = [ev(next(fresh), actor=f"actor{op.size}") for _ in range(op.size)]
                    expected = max(0, version[stream] + op.version_delta)
                elif not acked:
                    continue
                elif isinstance(op, Retry):
                    stream, batch, original = acked[op.which % len(acked)]
                    expected = max(0, version[stream] + op.version_delta)
                else:
                    stream, old, _ = acked[op.which % len(acked)]
                    batch = [old[0], ev(next(fresh))]
                    expected = version[stream]
                calls.append((op, stream, batch, expected, original))
            results = await asyncio.gather(
                *(store.append(stream, batch, expected) for _, stream, batch, expected, _ in calls),
                return_exceptions=True,
            )
            for (op, stream, batch, expected, original), result in zip(calls, results, strict=True):
                if isinstance(op, Retry):
                    assert result == original
                elif isinstance(op, PartialRetry):
                    assert isinstance(result, DuplicateEventError)
                    rejected.add(batch[1].event_id)
                elif isinstance(result, ConcurrencyError):
                    assert (result.stream, result.expected) == (stream, expected)
                    assert result.actual != expected
                    if len(calls) == 1:
                        assert result.actual == version[stream]
                    rejected.update(e.event_id for e in batch)
                elif not batch:
                    assert result == []
                else:
                    assert isinstance(result, list), result
                    if len(calls) == 1:
                        assert expected == version[stream]
                    assert [s.version for s in result] == list(
                        range(expected + 1, expected + 1 + len(batch))
                    )
                    first = result[0].position
                    assert [s.position for s in result] == list(range(first, first + len(batch)))
                    assert all(
                        same_content(s, e, stream) for s, e in zip(result, batch, strict=True)
                    )
                    acked.append((stream, batch, result))
            for stream in names:
                version[stream] = await store.stream_version(stream)

        log = await store.read_all()
        assert [e.position for e in log] == list(range(1, len(log) + 1))
        counts = Counter(e.event_id for e in log)
        assert all(n == 1 for n in counts.values())
        stored = {e.event_id: e for e in log}
        acknowledged = {s.event_id: s for _, _, batch in acked for s in batch}
        assert acknowledged.keys() == stored.keys()
        assert all(stored[i] == s for i, s in acknowledged.items())
        assert not rejected & stored.keys()
        for stream in names:
            in_stream = await store.read_stream(stream)
            assert [e.version for e in in_stream] == list(range(1, len(in_stream) + 1))
            assert [e.position for e in in_stream] == sorted(e.position for e in in_stream)
            assert await store.stream_version(stream) == len(in_stream)
        report = await store.verify()
        assert report.ok, report
        assert report.checked == len(log)


class TestMemoryEventStore(EventStoreContract):
    max_examples = 200

    @contextlib.asynccontextmanager
    async def make_store(self) -> AsyncIterator[EventStore]:
        store = MemoryEventStore()
        try:
            yield store
        finally:
            await store.close()


class TestSqliteEventStore(EventStoreContract):
    max_examples = 25

    @contextlib.asynccontextmanager
    async def make_store(self) -> AsyncIterator[EventStore]:
        with tempfile.TemporaryDirectory(prefix="baton-es-") as directory:
            store = await SqliteEventStore.open(Path(directory) / "events.db")
            try:
                yield store
            finally:
                await store.close()
