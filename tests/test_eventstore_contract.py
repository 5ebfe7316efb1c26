"""The behaviour every `EventStore` backend must share, run against each of them.

`EventStoreContract` holds the tests; each backend subclasses it with a `make_store`
factory. Tests are plain functions that drive the async API through `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import re
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)
from nacl.signing import SigningKey

from eventstore import (
    GENESIS,
    CheckpointConflictError,
    ConcurrencyError,
    DuplicateEventError,
    EventQuery,
    EventStore,
    InvalidEventError,
    MemoryEventStore,
    NewEvent,
    ProjectionStore,
    ProjectionView,
    Projector,
    Snapshot,
    SqliteEventStore,
    StorageError,
    StoredEvent,
    VerifyReport,
)
from eventstore.anchor import Checkpointer, verify_anchored
from eventstore.chain import seal_snapshot, snapshot_problem

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


async def lay_out(store: EventStore, streams: list[str]) -> list[StoredEvent]:
    """Append one event to each of `streams` in turn: event n lands at position n."""
    stored: list[StoredEvent] = []
    for n, stream in enumerate(streams, start=1):
        version = await store.stream_version(stream)
        stored += await store.append(
            stream, [ev(f"{stream}@{version + 1}", data=b"%d" % n)], version
        )
    return stored


SNAPSHOT_LOG = [
    *("run-2", "run-2", "run-1", "run-1", "run-1", "run-2", "run-2"),
    *("run-1", "run-1", "run-1", "run-2", "run-1", "x", "x", "x", "x"),
    *("run-2", "run-2", "run-2", "run-2"),
]
"""A log where run-1 is at v3 at position 5 and at v7 at 12, and run-2 at v9 at 20."""


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


# -- queries against a plain filter (the property test) ---------------------------------

QUERY_STREAMS = ["run-a", "run-b", "agent-x"]
QUERY_TYPES = ["task.assigned", "task.done", "run.started", "tool.call", "odd[1]*"]
QUERY_RUNS = ["r1", "r2", "r3", ""]
QUERY_ACTORS = ["orchestrator", "agent:a", "agent:b"]
QUERY_WORDS = ["disk full", "all good", "full stop", "{}"]

event_queries = st.builds(
    EventQuery,
    stream=st.none() | st.sampled_from([*QUERY_STREAMS, "nowhere"]),
    correlation_id=st.none() | st.sampled_from([*QUERY_RUNS, "r9"]),
    actor=st.none() | st.sampled_from([*QUERY_ACTORS, "nobody"]),
    type_glob=st.none()
    | st.sampled_from(["task.*", "*", "run.*", "tool.call", "*.d?ne", "odd[1]?", "nothing"]),
    text=st.none() | st.sampled_from(["full", "good", "absent"]),
    from_position=st.integers(-2, 140),
    to_position=st.none() | st.integers(0, 140),
    limit=st.none() | st.integers(0, 12),
)


def plainly_matches(query: EventQuery, event: StoredEvent) -> bool:
    """`query`'s filters, written out independently of any store's code."""
    glob = query.type_glob
    pattern = None
    if glob is not None:
        pattern = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in glob)
    return (
        event.position >= query.from_position
        and (query.to_position is None or event.position <= query.to_position)
        and query.stream in (None, event.stream)
        and query.correlation_id in (None, event.correlation_id)
        and query.actor in (None, event.actor)
        and (pattern is None or re.fullmatch(pattern, event.type, re.DOTALL) is not None)
        and (query.text is None or query.text.encode() in event.data)
        and (query.since is None or event.recorded_at >= query.since)
        and (query.until is None or event.recorded_at < query.until)
    )


class EventStoreContract:
    """The contract; subclasses name the backend through `make_store` (and, for a durable
    backend, `reopen`)."""

    max_examples: ClassVar[int] = 200

    stateful_examples: ClassVar[int] = 30

    def make_store(self) -> AbstractAsyncContextManager[EventStore]:
        """A fresh, empty store, closed when the context ends."""
        raise NotImplementedError

    async def reopen(self, store: EventStore) -> EventStore:
        """The same log through a new store object (a durable backend closes `store` and
        opens its storage again); the default keeps `store`. Closing the result is
        the test's job; closing twice is harmless."""
        return store

    def projection_port(self, store: EventStore) -> ProjectionStore | None:
        """The backend's projection port, `None` if it has none."""
        port = getattr(store, "projections", None)
        return port if isinstance(port, ProjectionStore) else None

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

    def test_lean_rows_are_the_full_events_projected(self) -> None:
        async def scenario(store: EventStore) -> None:
            await store.append("s", [ev(f"r{n}", schema=1 + n % 2) for n in range(5)], 0)
            await store.append("other", [ev("o1")], 0)
            for start, until in ((1, None), (3, None), (1, 3), (2, 4)):
                full = await store.read_stream("s", start, until)
                rows = await store.read_stream_rows("s", start, until)
                assert rows == [(e.position, e.version, e.type, e.schema, e.data) for e in full]
            assert await store.read_stream_rows("missing") == []

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

    def test_open_streams_are_those_without_a_closing_event(self) -> None:
        ends = ["run.completed", "run.failed"]

        async def scenario(store: EventStore) -> None:
            await store.append("run-open", [ev("o1", "run.started"), ev("o2", "task")], 0)
            await store.append("run-done", [ev("d1", "run.started"), ev("d2", "run.failed")], 0)
            # closed, then a late event after the closing one: still closed
            late = [ev("l1", "run.started"), ev("l2", "run.completed"), ev("l3", "rejected")]
            await store.append("run-late", late, 0)
            await store.append("run-new", [ev("n1", "run.started")], 0)
            await store.append("system", [ev("s1", "agent.joined")], 0)
            assert await store.open_streams("run-", ends) == ["run-new", "run-open"]
            assert await store.open_streams("", ends) == ["run-new", "run-open", "system"]
            assert await store.open_streams("run-", []) == await store.streams("run-")
            assert await store.open_streams("zzz", ends) == []
            await store.append("run-open", [ev("o3", "run.completed")], 2)
            assert await store.open_streams("run-", ends) == ["run-new"]
            reopened = await self.reopen(store)
            try:
                assert await reopened.open_streams("run-", ends) == ["run-new"]
            finally:
                await reopened.close()

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

            async def ids(**kw: Any) -> list[str]:
                return [e.event_id for e in await store.query(EventQuery(**kw))]

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

    # -- schema, last position, queries -------------------------------------------------

    def test_schema_is_kept_and_chained(self) -> None:
        async def scenario(store: EventStore) -> None:
            assert await store.last_position() == 0
            stored = await store.append(
                "s", [ev("old"), NewEvent(event_id="new", type="t", data=b"x", schema=3)], 0
            )
            assert [e.schema for e in stored] == [1, 3]
            assert [e.schema for e in await store.read_stream("s")] == [1, 3]
            assert await store.last_position() == 2
            assert (await store.verify()).ok
            with pytest.raises(InvalidEventError):
                await store.append("s", [NewEvent(event_id="z", type="t", data=b"", schema=0)], 2)

        self.run(scenario)

    def test_query_by_text_time_and_position_range(self) -> None:
        async def scenario(store: EventStore) -> None:
            first = await store.append(
                "run-1",
                [
                    ev("1", data=b'{"note": "disk is full"}'),
                    ev("2", data="{'note': 'crème brûlée'}".encode()),
                    ev("3", data=b"\x00\xffbinary full\x00"),
                ],
                0,
            )
            await asyncio.sleep(0.02)
            middle = time.time()
            await asyncio.sleep(0.02)
            await store.append("run-2", [ev("4", data=b"FULL"), ev("5", data=b"full")], 0)

            async def ids(**kw: Any) -> list[str]:
                return [e.event_id for e in await store.query(EventQuery(**kw))]

            assert await ids(text="full") == ["1", "3", "5"]
            assert await ids(text="brûlée") == ["2"]
            assert await ids(text="full", stream="run-2") == ["5"]
            assert await ids(text="nowhere") == []
            assert await ids(text="") == ["1", "2", "3", "4", "5"]
            assert await ids(until=middle) == ["1", "2", "3"]
            assert await ids(since=middle) == ["4", "5"]
            assert await ids(since=first[0].recorded_at, until=first[0].recorded_at) == []
            assert await ids(since=first[0].recorded_at, until=middle) == ["1", "2", "3"]
            assert await ids(to_position=2) == ["1", "2"]
            assert await ids(from_position=2, to_position=4) == ["2", "3", "4"]
            assert await ids(from_position=3, to_position=2) == []
            assert await ids(text="full", since=middle, to_position=4) == []
            assert await ids(text="full", to_position=5, limit=2) == ["1", "3"]

        self.run(scenario)

    def second_view(self, store: EventStore) -> AbstractAsyncContextManager[EventStore]:
        """Another store object on `store`'s log (a second process's view), closed when the
        context ends; by default `store` itself."""
        return contextlib.nullcontext(store)

    def test_queries_equal_a_filtered_read_of_the_whole_log(self) -> None:
        """Every query answers exactly what filtering the whole log in Python gives (order,
        bounds, limit), also after another store object on the log appended more."""

        async def grow(writer: EventStore, rng: random.Random, count: int) -> None:
            for _ in range(count):
                stream = rng.choice(QUERY_STREAMS)
                version = await writer.stream_version(stream)
                batch = [
                    ev(
                        f"q{rng.getrandbits(64):x}",
                        rng.choice(QUERY_TYPES),
                        rng.choice(QUERY_WORDS).encode(),
                        correlation_id=rng.choice(QUERY_RUNS),
                        actor=rng.choice(QUERY_ACTORS),
                    )
                    for _ in range(rng.randint(1, 4))
                ]
                await writer.append(stream, batch, version)

        loop = asyncio.new_event_loop()
        context = self.make_store()
        store = loop.run_until_complete(context.__aenter__())
        try:
            view = self.second_view(store)
            writer = loop.run_until_complete(view.__aenter__())
            try:
                loop.run_until_complete(grow(store, random.Random(7), 30))

                @settings(
                    max_examples=self.max_examples,
                    deadline=None,
                    suppress_health_check=[HealthCheck.too_slow],
                )
                @given(query=event_queries, more=st.integers(0, 3), seed=st.integers(0, 2**32))
                def check(query: EventQuery, more: int, seed: int) -> None:
                    async def scenario() -> None:
                        await grow(writer, random.Random(seed), more)
                        log = await store.read_all()
                        expected = [e for e in log if plainly_matches(query, e)]
                        if query.limit is not None:
                            expected = expected[: query.limit]
                        assert await store.query(query) == expected

                    loop.run_until_complete(scenario())

                check()
            finally:
                loop.run_until_complete(view.__aexit__(None, None, None))
        finally:
            loop.run_until_complete(context.__aexit__(None, None, None))
            loop.close()

    # -- subscriptions -------------------------------------------------------------------

    def test_subscribers_see_history_then_live_appends_exactly_once_in_order(self) -> None:
        async def consume(
            store: EventStore, start: int, until: int, out: list[StoredEvent]
        ) -> None:
            async for event in store.subscribe(start):
                out.append(event)
                if event.position >= until:
                    return

        async def appender(store: EventStore, k: int) -> None:
            for n in range(15):
                await store.append(f"w{k}", [ev(f"w{k}-{n}a"), ev(f"w{k}-{n}b")], 2 * n)
                if n % 4 == 0:
                    await asyncio.sleep(0)

        async def scenario(store: EventStore) -> None:
            for k in range(20):
                await store.append("history", [ev(f"h{k}")], k)
            total = 20 + 4 * 15 * 2
            starts = [1, 7, 20, 21, 0]
            outs: list[list[StoredEvent]] = [[] for _ in starts]
            readers = [
                asyncio.create_task(consume(store, start, total, out))
                for start, out in zip(starts, outs, strict=True)
            ]
            await asyncio.sleep(0)
            await asyncio.gather(*(appender(store, k) for k in range(4)))
            await asyncio.wait_for(asyncio.gather(*readers), timeout=30)
            log = await store.read_all()
            assert len(log) == total
            for start, out in zip(starts, outs, strict=True):
                assert out == log[max(start, 1) - 1 :]

        self.run(scenario)

    def test_a_subscriber_waits_for_the_next_append(self) -> None:
        async def scenario(store: EventStore) -> None:
            await store.append("s", [ev("1")], 0)
            subscription = cast(AsyncGenerator[StoredEvent, None], store.subscribe(2))
            waiting = asyncio.ensure_future(anext(subscription))
            await asyncio.sleep(0.05)
            assert not waiting.done()
            await store.append("s", [ev("2")], 1)
            event = await asyncio.wait_for(waiting, timeout=10)
            assert (event.event_id, event.position) == ("2", 2)
            await subscription.aclose()

        self.run(scenario)

    def test_subscriptions_end_when_the_store_closes(self) -> None:
        async def main() -> None:
            async with self.make_store() as store:
                await store.append("s", [ev("1"), ev("2")], 0)
                seen: list[str] = []

                async def consume() -> None:
                    async for event in store.subscribe():
                        seen.append(event.event_id)

                task = asyncio.create_task(consume())
                while len(seen) < 2:
                    await asyncio.sleep(0.01)
                await store.close()
                await asyncio.wait_for(task, timeout=10)
                assert seen == ["1", "2"]

        asyncio.run(main())

    # -- snapshots -----------------------------------------------------------------------

    def test_snapshots_save_load_replace_and_pick_by_position(self) -> None:
        async def scenario(store: EventStore) -> None:
            # a snapshot is bound to the event at its position: run-1 v3 at 5, v7 at 12,
            # run-2 v9 at 20
            await lay_out(store, SNAPSHOT_LOG)
            assert await store.load_snapshot("run-1") is None
            at3 = Snapshot(stream="run-1", version=3, position=5, data=b"three")
            at7 = Snapshot(stream="run-1", version=7, position=12, data=b"seven", schema=2)
            other = Snapshot(stream="run-2", version=9, position=20, data=b"other")
            for snapshot in (at7, at3, other):
                await store.save_snapshot(snapshot)
            assert await store.load_snapshot("run-1") == at7
            assert await store.load_snapshot("run-1", until_position=12) == at7
            assert await store.load_snapshot("run-1", until_position=11) == at3
            assert await store.load_snapshot("run-1", until_position=5) == at3
            assert await store.load_snapshot("run-1", until_position=4) is None
            assert await store.load_snapshot("run-2") == other
            assert await store.load_snapshot("run-3") is None
            replaced = Snapshot(stream="run-1", version=7, position=12, data=b"seven again")
            await store.save_snapshot(replaced)
            assert await store.load_snapshot("run-1") == replaced
            with pytest.raises(InvalidEventError):
                await store.save_snapshot(Snapshot(stream="", version=1, position=1, data=b""))
            with pytest.raises(InvalidEventError):
                await store.save_snapshot(Snapshot(stream="s", version=-1, position=1, data=b""))
            again = await self.reopen(store)
            try:
                assert await again.load_snapshot("run-1", until_position=11) == at3
                assert await again.load_snapshot("run-1") == replaced
            finally:
                await again.close()

        self.run(scenario)

    def test_a_snapshot_is_bound_to_the_event_at_its_position(self) -> None:
        async def scenario(store: EventStore) -> None:
            log = await lay_out(store, SNAPSHOT_LOG)
            for misfit in (
                Snapshot(stream="run-1", version=3, position=6, data=b""),  # run-2's event
                Snapshot(stream="run-1", version=4, position=5, data=b""),  # v3 is there
                Snapshot(stream="run-1", version=8, position=21, data=b""),  # not stored
            ):
                with pytest.raises(InvalidEventError, match="does not fit the log"):
                    await store.save_snapshot(misfit)
            assert await store.verify_snapshots() == []
            at3 = Snapshot(stream="run-1", version=3, position=5, data=b"three")
            at9 = Snapshot(stream="run-2", version=9, position=20, data=b"nine")
            for snapshot in (at9, at3):
                await store.save_snapshot(snapshot)
            checks = await store.verify_snapshots()
            assert [(c.stream, c.version, c.position, c.ok) for c in checks] == [
                ("run-1", 3, 5, True),
                ("run-2", 9, 20, True),
            ]
            assert snapshot_problem(at3, seal_snapshot(at3, log[4]), log[4]) == ""

        self.run(scenario)

    # -- checkpoints ---------------------------------------------------------------------

    def test_verify_holds_the_log_to_its_checkpoints(self) -> None:
        async def scenario(store: EventStore) -> None:
            log = await lay_out(store, ["a", "b", "a", "c", "a", "b", "a", "a", "c", "b"])
            at = {e.position: e.hash for e in log}
            assert await store.verify({}) == VerifyReport(ok=True, checked=10)
            assert await store.verify({5: at[5], 10: at[10]}) == VerifyReport(ok=True, checked=10)

            cut = await store.verify({5: at[5], 12: "a" * 64})
            assert (cut.ok, cut.first_bad_position) == (False, 11)
            assert cut.reason.startswith("truncated: the log ends at position 10")
            assert "recorded position 12" in cut.reason

            rewritten = await store.verify({3: at[3], 5: at[5], 8: "0" * 64, 10: at[10]})
            assert (rewritten.ok, rewritten.first_bad_position) == (False, 8)
            assert rewritten.reason.startswith("rewritten: the hash at position 8")
            assert "after position 5 (still as checkpointed) and at or before position 8" in (
                rewritten.reason
            )
            first = await store.verify({1: "0" * 64})
            assert (first.first_bad_position, first.reason.startswith("rewritten")) == (1, True)

        self.run(scenario)

    def test_signed_checkpoints_of_the_head_anchor_the_log(self) -> None:
        async def scenario(store: EventStore) -> None:
            with tempfile.TemporaryDirectory(prefix="baton-anchor-") as directory:
                anchor = Path(directory) / "anchor"
                key = SigningKey.generate()
                checkpoints = Checkpointer(store, anchor, key)
                assert await checkpoints.checkpoint() is None, "an empty log has no head"
                await lay_out(store, ["a", "b", "a"])
                first = await checkpoints.checkpoint()
                assert first is not None
                assert (first.position, first.hash) == (3, (await store.read_all(3))[0].hash)
                assert await checkpoints.checkpoint() is None, "the head did not move"
                await lay_out(store, ["c", "a"])
                await checkpoints.close()  # signs the head one last time
                report = await verify_anchored(store, anchor, key.verify_key)
                assert report.ok, report
                assert (report.anchor.count, report.anchor.newest, report.chain.checked) == (
                    2,
                    5,
                    5,
                )
                stranger = await verify_anchored(store, anchor, SigningKey.generate().verify_key)
                assert not stranger.ok
                assert "not the trusted key" in stranger.anchor.problems[0]

        self.run(scenario)

    # -- stateful interleavings ----------------------------------------------------------

    def test_stateful_interleavings_keep_the_invariants(self) -> None:
        machine = make_machine(self)
        run_state_machine_as_test(
            machine,
            settings=settings(
                max_examples=self.stateful_examples,
                stateful_step_count=25,
                deadline=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )


class ProjectionContract(EventStoreContract):
    """The contract of backends that also keep projections (output and checkpoint
    committed together): the in-memory, SQLite and JetStream ones."""

    # -- projections ---------------------------------------------------------------------

    def port_of(self, store: EventStore) -> ProjectionStore:
        port = self.projection_port(store)
        assert port is not None, f"{type(store).__name__} has no projection port"
        return port

    def test_projection_commit_is_all_or_nothing_and_fenced(self) -> None:
        async def scenario(store: EventStore) -> None:
            port = self.port_of(store)
            assert await port.checkpoint("p") == 0
            await port.commit("p", 0, 3, {"a": b"1", "b": b"2", "c": b"3"})
            await port.commit("p", 3, 5, {"a": b"10"}, ["b", "never"])
            assert await port.checkpoint("p") == 5
            assert await port.items("p") == [("a", b"10"), ("c", b"3")]
            assert await port.get("p", "b") is None
            with pytest.raises(CheckpointConflictError) as caught:
                await port.commit("p", 3, 9, {"a": b"stale"})
            assert (caught.value.expected, caught.value.actual) == (3, 5)
            with pytest.raises(InvalidEventError):
                await port.commit("p", 5, 5, {})
            with pytest.raises(InvalidEventError):
                await port.commit("p", 5, 6, {"a": b"x"}, ["a"])
            assert await port.get("p", "a") == b"10"
            assert await port.checkpoint("p") == 5
            await port.commit("q", 0, 1, {"a/1": b"x", "a/2": b"y", "b/1": b"z"})
            assert await port.items("q", "a/") == [("a/1", b"x"), ("a/2", b"y")]
            assert await port.items("p", "a/") == []

        self.run(scenario)

    def test_projector_resumes_exactly_where_a_cancel_stopped_it(self) -> None:
        rng = random.Random(7)

        async def scenario(store: EventStore) -> None:
            port = self.port_of(store)
            for k in range(15):
                await store.append(f"s{k % 3}", [ev(f"e{k}-{n}") for n in range(4)], 4 * (k // 3))
            total = await store.last_position()
            crashes = 0
            while await port.checkpoint("counter") < total:
                batch_size = rng.randint(1, 9)
                # The crash: the task cancels itself after a random number of applies,
                # so it lands in the middle of a batch, in a read or in a commit.
                doomed = Counting(cancel_after=rng.randint(1, 2 * batch_size))
                projector = Projector(store, port, doomed, batch_size=batch_size)
                task = asyncio.create_task(projector.run(until_position=total))
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                crashes += 1
                await check_counter(port, await port.checkpoint("counter"))
            assert crashes > 3
            again = await self.reopen(store)
            try:
                port = self.port_of(again)
                await check_counter(port, total)
                await again.append("late", [ev("late")], 0)
                done = await Projector(again, port, Counting()).run(until_position=total + 1)
                assert done == total + 1
                await check_counter(port, total + 1)
            finally:
                await again.close()

        self.run(scenario)

    def test_projector_follows_live_appends(self) -> None:
        async def scenario(store: EventStore) -> None:
            port = self.port_of(store)
            projector = Projector(store, port, Counting(), batch_size=4)
            task = asyncio.create_task(projector.run())
            for k in range(10):
                await store.append("s", [ev(f"e{k}")], k)
            while await port.checkpoint("counter") < 10:
                if task.done():  # it stopped: its failure, not a wait until the timeout
                    pytest.fail(f"the projector stopped at {projector.position}: {task!r}")
                await asyncio.sleep(0.01)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await check_counter(port, 10)

        self.run(scenario)


# -- helpers for the projection and stateful tests -----------------------------------------


class Counting:
    """A projection that is wrong if any event is applied twice or skipped: a counter, and
    one row per position."""

    name = "counter"

    def __init__(self, cancel_after: int | None = None) -> None:
        self.cancel_after = cancel_after
        self.applied = 0

    async def apply(self, event: StoredEvent, view: ProjectionView) -> None:
        self.applied += 1
        if self.applied == self.cancel_after:
            task = asyncio.current_task()
            assert task is not None
            task.cancel()
        count = int(await view.get("count") or b"0")
        view.put("count", str(count + 1).encode())
        view.put(f"seen/{event.position:06d}", event.event_id.encode())


async def check_counter(port: ProjectionStore, checkpoint: int) -> None:
    """The output is exactly that of the events up to `checkpoint`: no more, no less."""
    assert await port.checkpoint("counter") == checkpoint
    assert int(await port.get("counter", "count") or b"0") == checkpoint
    seen = await port.items("counter", "seen/")
    assert [key for key, _ in seen] == [f"seen/{p:06d}" for p in range(1, checkpoint + 1)]


async def gather_all(*work: Awaitable[T]) -> list[T | BaseException]:
    """`asyncio.gather` with exceptions returned, started inside the running loop."""
    return await asyncio.gather(*work, return_exceptions=True)


def make_machine(contract: EventStoreContract) -> type[RuleBasedStateMachine]:
    class Interleavings(RuleBasedStateMachine):
        """Appends (fresh, conflicting, retried), reads and subscriptions, interleaved."""

        def __init__(self) -> None:
            super().__init__()
            self.loop = asyncio.new_event_loop()
            self.context = contract.make_store()
            self.store = self.loop.run_until_complete(self.context.__aenter__())
            self.fresh = itertools.count()
            self.version = {"a": 0, "b": 0, "c": 0}
            self.acked: list[tuple[str, list[NewEvent], list[StoredEvent]]] = []
            self.subscribers: list[tuple[int, list[StoredEvent], asyncio.Task[None]]] = []

        def play(self, work: Awaitable[T]) -> T:
            return self.loop.run_until_complete(work)

        @rule(
            stream=st.sampled_from(["a", "b", "c"]),
            sizes=st.lists(st.integers(1, 3), min_size=1, max_size=3),
            delta=st.sampled_from([0, 0, 0, -1, 1]),
        )
        def append(self, stream: str, sizes: list[int], delta: int) -> None:
            expected = max(0, self.version[stream] + delta)
            batches = [[ev(f"id{next(self.fresh)}") for _ in range(n)] for n in sizes]
            results = self.play(
                gather_all(*(self.store.append(stream, b, expected) for b in batches))
            )
            winners = [r for r in results if isinstance(r, list)]
            assert len(winners) == (1 if expected == self.version[stream] else 0), results
            for batch, result in zip(batches, results, strict=True):
                if isinstance(result, list):
                    assert [e.version for e in result] == list(
                        range(expected + 1, expected + 1 + len(batch))
                    )
                    self.acked.append((stream, batch, result))
                    self.version[stream] = result[-1].version
                else:
                    assert isinstance(result, ConcurrencyError), result
                    assert result.actual == self.version[stream]

        @precondition(lambda self: bool(self.acked))
        @rule(which=st.integers(0, 10_000), delta=st.integers(-2, 2))
        def retry(self, which: int, delta: int) -> None:
            stream, batch, stored = self.acked[which % len(self.acked)]
            expected = max(0, self.version[stream] + delta)
            assert self.play(self.store.append(stream, batch, expected)) == stored

        @rule()
        def read(self) -> None:
            log = self.play(self.store.read_all())
            assert [e.position for e in log] == list(range(1, len(log) + 1))
            assert self.play(self.store.last_position()) == len(log)
            for stream, version in self.version.items():
                events = self.play(self.store.read_stream(stream))
                assert [e.version for e in events] == list(range(1, version + 1))

        @rule(back=st.integers(0, 6))
        def subscribe(self, back: int) -> None:
            start = max(1, self.play(self.store.last_position()) + 1 - back)
            seen: list[StoredEvent] = []

            async def consume() -> None:
                async for event in self.store.subscribe(start):
                    seen.append(event)

            self.subscribers.append((start, seen, self.loop.create_task(consume())))

        def teardown(self) -> None:
            try:
                log = self.play(self.store.read_all())

                async def caught_up() -> None:
                    while any(
                        len(seen) < len(log) - start + 1 for start, seen, _ in self.subscribers
                    ):
                        await asyncio.sleep(0.005)

                self.play(asyncio.wait_for(caught_up(), timeout=30))
                for start, seen, _ in self.subscribers:
                    assert seen == log[start - 1 :]
                acked = {s.event_id: s for _, _, batch in self.acked for s in batch}
                assert {e.event_id: e for e in log} == acked
                assert self.play(self.store.verify()).ok
            finally:
                self.play(self.context.__aexit__(None, None, None))
                tasks = [task for _, _, task in self.subscribers]
                self.play(asyncio.wait_for(gather_all(*tasks), timeout=30))
                self.loop.close()

    return Interleavings


class TestMemoryEventStore(ProjectionContract):
    max_examples = 200
    stateful_examples = 100

    @contextlib.asynccontextmanager
    async def make_store(self) -> AsyncIterator[EventStore]:
        store = MemoryEventStore()
        try:
            yield store
        finally:
            await store.close()


@pytest.fixture(scope="session")
def empty_sqlite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty store's file, as `SqliteEventStore.open` creates it and `close` leaves it."""
    path = tmp_path_factory.mktemp("sqlite-empty") / "events.db"

    async def create() -> None:
        await (await SqliteEventStore.open(path)).close()

    asyncio.run(create())
    assert [p.name for p in path.parent.iterdir()] == ["events.db"], "no WAL left behind"
    return path


class TestSqliteEventStore(ProjectionContract):
    # As many examples as the in-memory store gets: each one starts from a copy of an
    # empty file, which is cheaper than creating the schema again (several fsyncs).
    max_examples = 200
    stateful_examples = 100

    @pytest.fixture(autouse=True)
    def _empty_file(self, empty_sqlite_file: Path) -> None:
        self.empty_file = empty_sqlite_file

    @contextlib.asynccontextmanager
    async def make_store(self) -> AsyncIterator[EventStore]:
        with tempfile.TemporaryDirectory(prefix="baton-es-") as directory:
            path = Path(directory) / "events.db"
            shutil.copyfile(self.empty_file, path)
            store = await SqliteEventStore.open(path)
            try:
                yield store
            finally:
                await store.close()

    async def reopen(self, store: EventStore) -> EventStore:
        assert isinstance(store, SqliteEventStore)
        await store.close()
        return await SqliteEventStore.open(store.path)
