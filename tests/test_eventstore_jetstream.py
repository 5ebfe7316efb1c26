"""The JetStream backend: the whole shared contract against a real nats-server (JetStream,
`sync_interval: always`, a free loopback port, data under tmp), plus what only a
distributed log can get wrong: several store objects on one log, subject encoding, and a
server restart in the middle of appends.

Run `python -m tests.test_eventstore_jetstream` to print the backend's append rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast
from urllib.parse import urlparse

import msgspec
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.client import ServerVersion

from bus.server import EmbeddedNats
from eventstore import (
    ConcurrencyError,
    EventQuery,
    EventStore,
    NewEvent,
    Projector,
    StorageError,
    StoredEvent,
)
from eventstore.jetstream import (
    JetStreamEventStore,
    decode_stream_token,
    encode_stream_token,
    saved_index,
)
from eventstore.jetstream.failover import FailoverNotes
from eventstore.jetstream.log import JetStreamLog
from eventstore.jetstream.projections import SavedRows
from eventstore.jetstream.store import check_server
from eventstore.model import Snapshot
from tests.test_eventstore_contract import (
    Counting,
    ProjectionContract,
    check_counter,
    ev,
    lay_out,
)

_saved = msgspec.msgpack.Decoder(SavedRows)
_saved_encoder = msgspec.msgpack.Encoder()


@contextlib.asynccontextmanager
async def fresh_store(url: str) -> AsyncIterator[JetStreamEventStore]:
    """A store on its own new JetStream stream, deleted afterwards."""
    tag = uuid.uuid4().hex[:12]
    name, prefix = f"T{tag}", f"t{tag}"
    nc = await nats.connect(url)
    store = await JetStreamEventStore.open(nc, name, subject_prefix=prefix)
    try:
        yield store
    finally:
        await store.close()
        js = nc.jetstream()
        for stream in (name, f"{name}_SNAPSHOTS", f"OBJ_{name}_PROJECTIONS", f"OBJ_{name}_INDEX"):
            with contextlib.suppress(Exception):
                await js.delete_stream(stream)
        await nc.close()


class TestJetStreamEventStore(ProjectionContract):
    max_examples = 50
    url = ""

    @pytest.fixture(autouse=True)
    def _server(self, nats_url: str) -> None:
        self.url = nats_url

    @contextlib.asynccontextmanager
    async def make_store(self) -> AsyncIterator[EventStore]:
        async with fresh_store(self.url) as store:
            yield store

    @contextlib.asynccontextmanager
    async def second_view(self, store: EventStore) -> AsyncIterator[EventStore]:
        assert isinstance(store, JetStreamEventStore)
        layout = store._layout
        other = await JetStreamEventStore.open(self.url, layout.name, subject_prefix=layout.prefix)
        try:
            yield other
        finally:
            await other.close()


# -- what only this backend can get wrong ------------------------------------------------


def _index_of(store: JetStreamEventStore) -> tuple[object, ...]:
    index = store._index
    return (
        index.tail,
        index.tail_hash,
        index.ids,
        index.positions,
        {k: v.tolist() for k, v in index.correlations.items()},
        {k: v.tolist() for k, v in index.actors.items()},
        {k: v.tolist() for k, v in index.types.items()},
    )


def test_the_index_saved_beside_the_log_spares_the_next_open_reading_it(
    nats_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that learned `SAVE_EVENTS` saves its index at close; the next open adopts
    it and reads only the events after it (an index equal to one read from the whole
    log, and an append retried with stored ids is still known); a saved index that does
    not fit the log (another hash at its tail) or does not decode is ignored, and the
    whole log is read."""
    monkeypatch.setattr(saved_index, "SAVE_EVENTS", 5)
    read: list[int] = []  # the positions of the events read from the whole log
    scan = JetStreamLog.scan

    async def counted(
        log: JetStreamLog, start: int, subject: str | None = None, stop: int | None = None
    ) -> AsyncIterator[StoredEvent]:
        async for event in scan(log, start, subject, stop):
            if subject is None:
                read.append(event.position)
            yield event

    monkeypatch.setattr(JetStreamLog, "scan", counted)

    async def scenario() -> None:
        async with fresh_store(nats_url) as first:
            name, prefix = first._layout.name, first._layout.prefix
            for k in range(4):
                events = [ev(f"e{k}-{n}", correlation_id=f"run{k % 2}", actor=f"a{n}")
                          for n in range(3)]  # fmt: skip
                await first.append(f"s{k % 2}", events, 3 * (k // 2))
            nc = await nats.connect(nats_url)
            try:
                await first._index_saves.close()  # saved as at close (12 events >= 5)
                await first.append("late", [ev("late-1"), ev("late-2")], 0)  # after the save
                read.clear()
                second = await JetStreamEventStore.open(nc, name, subject_prefix=prefix)
                # the saved index's last event (its binding), then the two after it
                assert read == [12, 13, 14], "only the events after the saved index are read"
                assert _index_of(second) == _index_of(first)
                stored = await second.read_stream("s0")
                retried = await second.append("s0", [ev("e0-0", correlation_id="run0",
                                                        actor="a0")], 0)  # fmt: skip
                assert retried == stored[:1], "a retry of stored ids is still recognised"
                found = await second.query(EventQuery(correlation_id="run1"))
                assert [e.event_id for e in found] == [
                    f"e{k}-{n}" for k in (1, 3) for n in range(3)
                ]
                await second.close()
                # a saved index whose tail hash is not the log's: ignored, all read again
                objects = await nc.jetstream().object_store(f"{name}_INDEX")
                saved = saved_index._decoder.decode((await objects.get("index")).data or b"")
                forged = msgspec.structs.replace(saved, tail_hash="0" * 64)
                await objects.put("index", msgspec.msgpack.encode(forged))
                read.clear()
                with caplog.at_level("WARNING", logger="baton.eventstore"):
                    third = await JetStreamEventStore.open(nc, name, subject_prefix=prefix)
                assert read == [12, *range(1, 15)], "the whole log read"
                assert "is not the one it indexed" in caplog.text
                assert _index_of(third) == _index_of(first)
                await third.close()
                await objects.put("index", b"\xc1 not an index")
                read.clear()
                fourth = await JetStreamEventStore.open(nc, name, subject_prefix=prefix)
                assert read == list(range(1, 15)), "the whole log read"
                assert _index_of(fourth) == _index_of(first)
                await fourth.close()
            finally:
                await nc.close()

    asyncio.run(scenario())


def test_projections_are_saved_bound_to_the_log_and_folded_again_when_they_do_not_fit(
    nats_url: str,
) -> None:
    """A projection's rows and checkpoint are saved at close and found by the next store
    object on the log; a saved object that is not bound to the log as it is (another
    hash at its checkpoint) is ignored, and the projection starts from the beginning."""

    async def scenario() -> None:
        async with fresh_store(nats_url) as store:
            for k in range(6):
                await store.append(f"s{k % 2}", [ev(f"e{k}-{n}") for n in range(3)], 3 * (k // 2))
            total = await store.last_position()
            port = store.projections
            done = await Projector(store, port, Counting(), batch_size=5).run(until_position=total)
            assert done == total
            nc = await nats.connect(nats_url)
            name, prefix = store._layout.name, store._layout.prefix
            try:
                await store.projections.save_all()
                again = await JetStreamEventStore.open(nc, name, subject_prefix=prefix)
                assert await again.projections.checkpoint("counter") == total
                await check_counter(again.projections, total)
                await again.append("late", [ev("late")], 0)
                await Projector(again, again.projections, Counting()).run(until_position=total + 1)
                await check_counter(again.projections, total + 1)
                await again.close()  # saves at close
                # a saved object whose hash is not the log's at its checkpoint
                objects = await nc.jetstream().object_store(f"{name}_PROJECTIONS")
                saved = _saved.decode((await objects.get("counter")).data or b"")
                forged = SavedRows(saved.checkpoint, "0" * 64, saved.rows)
                await objects.put("counter", _saved_encoder.encode(forged))
                third = await JetStreamEventStore.open(nc, name, subject_prefix=prefix)
                assert await third.projections.checkpoint("counter") == 0, "folded again"
                assert await third.projections.items("counter") == []
                await third.close()
            finally:
                await nc.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("name", ["a.b", "*", ">", "a.*.>", "100%", "ß/ü:é", "%2E", "x" * 200])
def test_stream_names_are_one_subject_token(name: str) -> None:
    token = encode_stream_token(name)
    assert not any(c in token for c in ".*> ")
    assert token.isascii()
    assert decode_stream_token(token) == name


def test_wildcard_and_dotted_stream_names_stay_apart(nats_url: str) -> None:
    async def main() -> None:
        async with fresh_store(nats_url) as store:
            names = ["a", "a.b", "a.*", "a.>", "*", ">", "a%2Eb"]
            for name in names:
                await store.append(name, [ev(f"{name}#1")], 0)
            for name in names:
                assert [e.event_id for e in await store.read_stream(name)] == [f"{name}#1"]
                assert await store.stream_version(name) == 1
            assert await store.streams() == sorted(names)
            assert await store.streams("a.") == ["a.*", "a.>", "a.b"]

    asyncio.run(main())


def test_two_store_objects_on_one_log_stay_consistent(nats_url: str) -> None:
    """Two processes' views: idempotency and conflicts hold across them, with no reliance
    on JetStream's two-minute duplicate window."""

    async def main() -> None:
        async with fresh_store(nats_url) as first:
            nc = await nats.connect(nats_url)
            second = await JetStreamEventStore.open(
                nc,
                first._layout.name,  # the same log: a second view of it
                subject_prefix=first._layout.prefix,
            )
            try:
                stored = await first.append("s", [ev("1"), ev("2")], 0)
                # `second` opened before that append: its index is stale, yet it must
                # neither duplicate the batch nor accept a stale expected version.
                assert await second.append("s", [ev("1"), ev("2")], 0) == stored
                with pytest.raises(ConcurrencyError) as caught:
                    await second.append("s", [ev("3")], 0)
                assert (caught.value.expected, caught.value.actual) == (0, 2)
                await second.append("t", [ev("t1")], 0)
                # `first`'s cached tail is stale now: it must retry with the fresh one.
                await first.append("s", [ev("3")], 2)
                results = await asyncio.gather(
                    *(
                        store.append(f"w{k}", [ev(f"w{k}-{n}")], n)
                        for n in range(10)
                        for k, store in enumerate((first, second))
                    ),
                    return_exceptions=True,
                )
                assert not [r for r in results if isinstance(r, BaseException)]
                log = await second.read_all()
                assert [e.position for e in log] == list(range(1, len(log) + 1))
                assert len(log) == 4 + 20
                assert await first.read_all() == log
                assert (await first.verify()).ok
                # open streams are named from the index: caught up with the other's appends
                assert await first.open_streams("", ["end"]) == ["s", "t", "w0", "w1"]
                await second.append("t", [ev("t2", "end")], 1)
                assert await first.open_streams("", ["end"]) == ["s", "w0", "w1"]
            finally:
                await second.close()
                await nc.close()

    asyncio.run(main())


def test_subscribe_hands_over_from_history_to_live_without_gap(nats_url: str) -> None:
    async def main() -> None:
        async with fresh_store(nats_url) as store:
            for k in range(5):
                await store.append("s", [ev(f"h{k}")], k)
            seen: list[StoredEvent] = []

            async def follow() -> None:
                async for event in store.subscribe(3):
                    seen.append(event)
                    if len(seen) == 3 + 20:
                        return

            task = asyncio.create_task(follow())
            for k in range(10):
                await store.append("s", [ev(f"l{k}a"), ev(f"l{k}b")], 5 + 2 * k)
            await asyncio.wait_for(task, 10)
            assert [e.position for e in seen] == list(range(3, 26))
            assert seen == (await store.read_all())[2:]

    asyncio.run(main())


def test_subscription_ends_when_the_store_closes(nats_url: str) -> None:
    async def main() -> None:
        async with fresh_store(nats_url) as store:
            await store.append("s", [ev("1")], 0)
            seen: list[str] = []

            async def follow() -> None:
                async for event in store.subscribe():
                    seen.append(event.event_id)

            task = asyncio.create_task(follow())
            await asyncio.sleep(0.2)
            await store.close()
            await asyncio.wait_for(task, 5)
            assert seen == ["1"]

    asyncio.run(main())


def test_snapshots_are_kept_per_stream_and_version(nats_url: str) -> None:
    async def main() -> None:
        async with fresh_store(nats_url) as store:
            # a snapshot is bound to the event at its position: s v2 at 5, s.x v1 at 6,
            # s v9 at 30
            await lay_out(store, ["x", "x", "x", "s", "s", "s.x", *["x"] * 17, *["s"] * 7])
            assert await store.load_snapshot("s") is None
            await store.save_snapshot(Snapshot(stream="s", version=2, position=5, data=b"two"))
            await store.save_snapshot(Snapshot(stream="s", version=9, position=30, data=b"n"))
            await store.save_snapshot(Snapshot(stream="s", version=9, position=30, data=b"nine"))
            await store.save_snapshot(Snapshot(stream="s.x", version=1, position=6, data=b"x"))
            newest = await store.load_snapshot("s")
            assert newest is not None
            assert (newest.version, newest.data) == (9, b"nine")
            older = await store.load_snapshot("s", until_position=29)
            assert older is not None
            assert (older.version, older.data) == (2, b"two")
            assert await store.load_snapshot("s", until_position=4) is None
            other = await store.load_snapshot("s.x")
            assert other is not None
            assert other.data == b"x"

    asyncio.run(main())


def test_oversized_append_is_refused_before_storage(nats_url: str) -> None:
    from eventstore import InvalidEventError

    async def main() -> None:
        async with fresh_store(nats_url) as store:
            with pytest.raises(InvalidEventError):
                await store.append("s", [ev(str(n)) for n in range(1001)], 0)
            stored = await store.append("s", [ev(str(n)) for n in range(1000)], 0)
            assert [e.position for e in stored] == list(range(1, 1001))
            assert await store.read_all() == stored
            with pytest.raises(StorageError):  # over the server's max_payload (1 MB)
                await store.append("s", [ev("a"), ev("big", data=b"x" * 2_000_000)], 1000)
            assert await store.last_position() == 1000

    asyncio.run(main())


def test_schema_is_kept_and_hashed(nats_url: str) -> None:
    async def main() -> None:
        async with fresh_store(nats_url) as store:
            stored = await store.append("s", [ev("1"), ev("2", schema=3)], 0)
            assert [e.schema for e in stored] == [1, 3]
            assert await store.read_all() == stored
            report = await store.verify()
            assert report.ok
            assert report.checked == 2

    asyncio.run(main())


def test_a_message_not_written_by_the_store_fails_verify(nats_url: str) -> None:
    async def main() -> None:
        async with fresh_store(nats_url) as store:
            await store.append("s", [ev("1")], 0)
            await store._nc.request(
                f"{store._layout.log_prefix}intruder", b"not an event", timeout=2
            )
            # The store cannot chain onto a message it cannot read: it refuses, loudly.
            with pytest.raises(StorageError, match=r"message 2 .* is not a Baton event"):
                await store.append("s", [ev("2")], 1)
            report = await store.verify()
            assert not report.ok
            assert report.first_bad_position == 2
            with pytest.raises(StorageError):
                await store.read_all()

    asyncio.run(main())


# -- a server restart in the middle of appends --------------------------------------------


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_server_restart_mid_appends_loses_nothing_acknowledged(
    tmp_path: Path, how: signal.Signals
) -> None:
    async def main() -> None:
        server = EmbeddedNats(tmp_path)  # sync_interval: always
        url = await server.start()
        box = {"store": await JetStreamEventStore.open(url, timeout=1.0)}
        acked: dict[str, list[StoredEvent]] = {}
        failures = 0
        stop = asyncio.Event()

        async def appender(k: int) -> None:
            nonlocal failures
            stream, version, n = f"w{k}", 0, 0
            while not stop.is_set():
                # Batches of 1 to 3; a failed batch is retried with the same ids.
                batch = [
                    NewEvent(event_id=f"{stream}-{n + i}", type="t", data=b"x")
                    for i in range(1 + n % 3)
                ]
                while True:
                    try:
                        stored = await box["store"].append(stream, batch, version)
                        break
                    except StorageError:
                        failures += 1
                        await asyncio.sleep(0.05)
                acked.setdefault(stream, []).extend(stored)
                version += len(batch)
                n += len(batch)

        tasks = [asyncio.create_task(appender(k)) for k in range(4)]
        await asyncio.sleep(0.5)
        before = sum(map(len, acked.values()))
        assert server.pid is not None
        os.kill(server.pid, how)
        await asyncio.sleep(1.5)  # appends in flight now fail or hang until their timeout
        server.stop()
        old = box["store"]
        url = await server.start()  # same store directory, a new port
        box["store"] = await JetStreamEventStore.open(url, timeout=1.0)
        await old.close()
        await asyncio.sleep(0.5)
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        store = box["store"]
        try:
            log = await store.read_all()
            after = sum(map(len, acked.values()))
            assert before > 0
            assert after > before
            assert failures > 0
            assert [e.position for e in log] == list(range(1, len(log) + 1))
            assert len({e.event_id for e in log}) == len(log)
            by_id = {e.event_id: e for e in log}
            for stream, events in acked.items():
                # Every acknowledged event is stored exactly as acknowledged, in order.
                assert all(by_id[e.event_id] == e for e in events)
                in_stream = await store.read_stream(stream)
                assert in_stream == events
                assert [e.version for e in in_stream] == list(range(1, len(in_stream) + 1))
            assert len(log) == after
            report = await store.verify()
            assert report.ok, report
            assert report.checked == len(log)
        finally:
            await store.close()
            server.stop()

    asyncio.run(main())


def test_an_append_while_the_server_is_away_waits_for_it_and_says_so_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What a leader failover looks like from one client, on one server: the server is
    SIGKILLed and started again on the same port a second later; an append made while it
    is away is not an error but a pause, it lands once, and one line says so."""

    async def main() -> None:
        server = EmbeddedNats(tmp_path)
        url = await server.start()
        store = await JetStreamEventStore.open(url, timeout=1.0)
        try:
            await store.append("s", [ev("s-0")], 0)
            assert server.pid is not None
            os.kill(server.pid, signal.SIGKILL)
            server.stop()  # reaps it
            pending = asyncio.create_task(store.append("s", [ev("s-1"), ev("s-2")], 1))
            await asyncio.sleep(1.0)
            assert not pending.done()
            assert await server.start() == url  # the state directory keeps its port
            stored = await asyncio.wait_for(pending, 20)
            assert [e.version for e in stored] == [2, 3]
            assert [e.event_id for e in await store.read_stream("s")] == ["s-0", "s-1", "s-2"]
            assert (await store.verify()).ok
        finally:
            await store.close()
            server.stop()

    with caplog.at_level("WARNING", logger="baton.eventstore"):
        asyncio.run(main())
    said = [r.getMessage() for r in caplog.records if "appends paused" in r.getMessage()]
    assert len(said) == 1, said
    assert said[0].startswith("event log BATON_EVENTS: no leader or no connection")


def test_queries_during_own_appends_neither_break_the_index_nor_miss_events(
    nats_url: str,
) -> None:
    """A query catches the index up with the log while this store's appends are in
    flight, so it may learn a batch before the writer does: the writer must take that in
    its stride, and every query answers a prefix of the log that holds every append
    acknowledged before the query began."""

    async def main() -> None:
        async with fresh_store(nats_url) as store:
            acknowledged: list[StoredEvent] = []

            async def append(k: int) -> None:
                for n in range(8):
                    stored = await store.append(
                        f"s{k}",
                        [ev(f"{k}-{n}-{m}", "task.done", correlation_id="r") for m in range(2)],
                        2 * n,
                    )
                    acknowledged.extend(stored)

            async def query() -> None:
                for _ in range(30):
                    known = {e.event_id for e in acknowledged}
                    found = await store.query(EventQuery(type_glob="task.*", correlation_id="r"))
                    assert [e.position for e in found] == list(range(1, len(found) + 1))
                    assert known <= {e.event_id for e in found}

            await asyncio.gather(*(append(k) for k in range(3)), *(query() for _ in range(3)))
            log = await store.read_all()
            assert len(log) == 48
            assert await store.query(EventQuery(correlation_id="r")) == log
            assert (await store.verify()).ok

    asyncio.run(main())


def test_the_index_takes_an_event_it_already_learned_but_no_other_at_a_known_position(
    nats_url: str,
) -> None:
    """A query's catch-up may learn this store's batch before its writer does (the race
    the test above cannot force): learning it again changes nothing, while another event
    at a known position is still a gap in the log."""

    async def main() -> None:
        async with fresh_store(nats_url) as store:
            stored = await store.append("s", [ev("a", correlation_id="r"), ev("b")], 0)
            index = store._index
            before = (index.tail, index.tail_hash, dict(index.ids), list(index.correlations["r"]))
            for event in stored:
                index.learn(event)
            after = (index.tail, index.tail_hash, dict(index.ids), list(index.correlations["r"]))
            assert after == before == (2, stored[-1].hash, {"a": 1, "b": 2}, [1])
            stranger = msgspec.structs.replace(stored[0], event_id="c")
            with pytest.raises(StorageError, match="gap"):
                index.learn(stranger)

    asyncio.run(main())


def test_an_election_announced_while_the_client_reconnected_is_said_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A client reconnecting to another node when the log's new leader is announced does
    not hear the announcement: after the reconnect the leader is asked for, and a new one
    is said in one line; its announcement heard afterwards is not said again, the next
    election is."""
    leaders = ["n1", "n2"]

    async def leader() -> str:
        return leaders[0]

    async def main() -> None:
        server = EmbeddedNats(tmp_path)
        url = await server.start()
        nc = await nats.connect(url, max_reconnect_attempts=-1, reconnect_time_wait=0.1)
        notes = FailoverNotes("BATON_EVENTS")
        try:
            await notes.listen(nc, leader)
            notes.reconnected(nc, leader)  # no reconnect yet: nothing asked, nothing said
            server.stop()
            leaders.pop(0)  # elected while this client was away
            assert await server.start() == url
            while not nc.stats["reconnects"]:
                await asyncio.sleep(0.05)
            notes.reconnected(nc, leader)
            notes.reconnected(nc, leader)  # asked once per reconnect
            await asyncio.sleep(0.2)
            subject = "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.BATON_EVENTS"
            for announced in ("n2", "n3"):
                await nc.publish(subject, msgspec.json.encode({"leader": announced}))
            await nc.flush()
            await asyncio.sleep(0.2)
        finally:
            await notes.close()
            await nc.close()
            server.stop()

    with caplog.at_level("WARNING", logger="baton.eventstore"):
        asyncio.run(main())
    said = [r.getMessage() for r in caplog.records if "leader failover" in r.getMessage()]
    assert said == [
        "event log BATON_EVENTS: leader failover, n2 leads it now; announced while this "
        "client reconnected",
        "event log BATON_EVENTS: leader failover, n3 leads it now; no append was waiting",
    ]


class _Connected:
    """What `check_server` reads of a client: the server's release and its URL."""

    def __init__(self, release: str) -> None:
        self.connected_server_version = ServerVersion(release)
        self.connected_url = urlparse("nats://user:secret@127.0.0.1:4999")


@pytest.mark.parametrize(
    ("release", "refused"),
    [("2.9.10", True), ("2.11.4", True), ("2.12.0", False), ("2.15.1", False), ("3.0.0", False)],
)
def test_a_server_older_than_2_12_is_refused_by_name(release: str, refused: bool) -> None:
    client = cast(NATS, _Connected(release))
    if not refused:
        check_server(client)
        return
    with pytest.raises(StorageError) as caught:
        check_server(client)
    assert str(caught.value) == (
        f"the JetStream event store needs nats-server 2.12 or newer; "
        f"nats://127.0.0.1:4999 runs {release}"
    )
