"""Each attack on the log against real storage, behind the store's back: a SQLite file
edited with sqlite3, a JetStream log changed through its streams (deleted, recreated and
refilled; a message published on a log or snapshot subject).

For each, what the keyless chain says (`verify()`) and what the signed checkpoints say
(`verify_anchored`): an edited snapshot is named and never used; a cut tail and a rewrite
with recomputed hashes pass the chain and fail the anchor; an event forged after the
newest checkpoint passes both, as docs/security.md says.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import msgspec
import nats
import pytest
from nacl.signing import SigningKey
from nats.aio.client import Client as NATS

from eventstore import (
    GENESIS,
    EventStore,
    JetStreamEventStore,
    NewEvent,
    Snapshot,
    SqliteEventStore,
    StoredEvent,
)
from eventstore.anchor import Checkpointer, verify_anchored
from eventstore.chain import hash_of, snapshot_digest
from eventstore.jetstream.schema import (
    BODY_ENCODER,
    SNAPSHOT_DECODER,
    VERSION_HEADER,
    Layout,
    body_of,
)
from eventstore.sqlite.schema import COLUMNS

T = TypeVar("T")
STREAMS = ["run-a", "run-b", "run-a", "system", "run-a", "run-b", "run-a", "run-a"] * 2
"""Sixteen events; run-a is at v2 at position 3 and at v4 at position 7."""


def reseal(log: list[StoredEvent], start: int, data: bytes) -> list[StoredEvent]:
    """`log` with the event at position `start` given `data` and every hash from there on
    recomputed: a rewrite that the chain alone cannot tell from the original."""
    rewritten = log[: start - 1]
    prev = rewritten[-1].hash if rewritten else GENESIS
    for event in log[start - 1 :]:
        changed = msgspec.structs.replace(
            event, data=data if event.position == start else event.data, prev_hash=prev
        )
        changed = msgspec.structs.replace(changed, hash=hash_of(changed))
        rewritten.append(changed)
        prev = changed.hash
    return rewritten


def forged_after(log: list[StoredEvent], stream: str) -> StoredEvent:
    """An event of `stream` that links correctly onto the tail of `log`."""
    tail = log[-1]
    version = sum(e.stream == stream for e in log) + 1
    forged = StoredEvent(
        position=tail.position + 1,
        stream=stream,
        version=version,
        event_id=f"forged-{stream}@{version}",
        type="run.completed",
        data=b"forged",
        schema=1,
        recorded_at=tail.recorded_at + 1,
        correlation_id="",
        causation_id="",
        actor="orchestrator",
        trace_id="",
        span_id="",
        prev_hash=tail.hash,
        hash="",
    )
    return msgspec.structs.replace(forged, hash=hash_of(forged))


class Attacks:
    """The attacks; each backend says how to reach its storage behind the store's back."""

    opened: list[EventStore]

    def make_store(self) -> contextlib.AbstractAsyncContextManager[EventStore]:
        """A fresh, empty store; it and every store `reopen` made are closed at the end."""
        raise NotImplementedError

    async def reopen(self, store: EventStore) -> EventStore:
        """A new store object over the same storage (closing `store`): what an auditor or
        a restarted service opens after the storage was changed."""
        raise NotImplementedError

    async def replace_log(self, store: EventStore, events: list[StoredEvent]) -> None:
        """Make the storage hold exactly `events` as the log."""
        raise NotImplementedError

    async def forge(self, store: EventStore, event: StoredEvent) -> None:
        """Add `event` at the tail of the log."""
        raise NotImplementedError

    async def edit_snapshot(
        self, store: EventStore, stream: str, version: int, data: bytes, digest: str | None
    ) -> None:
        """Put `data` in the stored snapshot of `stream` at `version` (and `digest`, if
        given, in its binding)."""
        raise NotImplementedError

    def run(self, scenario: Callable[[EventStore, Path], Awaitable[T]]) -> T:
        async def main() -> T:
            with tempfile.TemporaryDirectory(prefix="baton-anchor-") as directory:
                async with self.make_store() as store:
                    return await scenario(store, Path(directory) / "checkpoints.jsonl")

        return asyncio.run(main())

    async def anchored_log(
        self, store: EventStore, anchor: Path, key: SigningKey
    ) -> list[StoredEvent]:
        """Sixteen events, with a signed checkpoint after each fourth."""
        checkpoints = Checkpointer(store, anchor, key)
        for n, stream in enumerate(STREAMS, start=1):
            version = await store.stream_version(stream)
            event = NewEvent(event_id=f"{stream}@{version + 1}", type="t", data=b"%d" % n)
            await store.append(stream, [event], version)
            if n % 4 == 0:
                assert await checkpoints.checkpoint() is not None
        return await store.read_all()

    # -- snapshots -----------------------------------------------------------------------

    def test_an_edited_snapshot_is_named_and_never_used(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def scenario(store: EventStore, anchor: Path) -> None:
            await self.anchored_log(store, anchor, SigningKey.generate())
            older = Snapshot(stream="run-a", version=2, position=3, data=b"state at v2")
            newer = Snapshot(stream="run-a", version=4, position=7, data=b"state at v4")
            for snapshot in (older, newer):
                await store.save_snapshot(snapshot)
            await self.edit_snapshot(store, "run-a", 4, b"forged state", digest=None)
            store = await self.reopen(store)

            checks = {c.version: c for c in await store.verify_snapshots()}
            assert checks[2].ok
            assert checks[4].problem == "changed: its content does not match its digest"
            assert (checks[4].stream, checks[4].position) == ("run-a", 7)
            with caplog.at_level(logging.WARNING, logger="baton.eventstore"):
                assert await store.load_snapshot("run-a") == older, "the bound one is used"
            assert "snapshot of run-a v4 at position 7 ignored" in caplog.text
            assert (await store.verify()).ok, "snapshots are not in the chain itself"

            # Someone who can write the store can also recompute the keyless digest: the
            # store cannot tell that apart; `baton audit verify` can (it refolds the run).
            forged = Snapshot(stream="run-a", version=4, position=7, data=b"forged state")
            event_hash = (await store.read_all(7, 1))[0].hash
            digest = snapshot_digest(forged, event_hash)
            await self.edit_snapshot(store, "run-a", 4, b"forged state", digest=digest)
            store = await self.reopen(store)
            assert all(c.ok for c in await store.verify_snapshots())
            assert await store.load_snapshot("run-a") == forged

        self.run(scenario)

    def test_a_snapshot_is_not_used_once_the_log_under_it_is_rewritten(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def scenario(store: EventStore, anchor: Path) -> None:
            log = await self.anchored_log(store, anchor, SigningKey.generate())
            snapshot = Snapshot(stream="run-a", version=4, position=7, data=b"state at v4")
            await store.save_snapshot(snapshot)
            await self.replace_log(store, reseal(log, 2, b"rewritten"))
            store = await self.reopen(store)
            (check,) = await store.verify_snapshots()
            assert "the log was changed under it" in check.problem
            with caplog.at_level(logging.WARNING, logger="baton.eventstore"):
                assert await store.load_snapshot("run-a") is None
            assert "the state is rebuilt from events" in caplog.text

        self.run(scenario)

    # -- the chain and its anchor --------------------------------------------------------

    def test_a_cut_tail_passes_the_chain_and_fails_the_anchor(self) -> None:
        async def scenario(store: EventStore, anchor: Path) -> None:
            key = SigningKey.generate()
            log = await self.anchored_log(store, anchor, key)
            await self.replace_log(store, log[:9])
            store = await self.reopen(store)
            assert (await store.last_position(), (await store.verify()).ok) == (9, True)

            report = await verify_anchored(store, anchor, key.verify_key)
            assert not report.ok
            assert report.chain.first_bad_position == 10
            assert report.chain.reason.startswith(
                "truncated: the log ends at position 9, but a signed checkpoint recorded "
                "position 16"
            )

        self.run(scenario)

    def test_a_rewrite_with_recomputed_hashes_passes_the_chain_and_fails_the_anchor(
        self,
    ) -> None:
        async def scenario(store: EventStore, anchor: Path) -> None:
            key = SigningKey.generate()
            log = await self.anchored_log(store, anchor, key)
            await self.replace_log(store, reseal(log, 6, b"rewritten"))
            store = await self.reopen(store)
            assert (await store.read_all(6, 1))[0].data == b"rewritten"
            assert (await store.verify()).ok, "every hash was recomputed"

            report = await verify_anchored(store, anchor, key.verify_key)
            assert not report.ok
            assert report.chain.first_bad_position == 8
            assert report.chain.reason.startswith("rewritten: the hash at position 8 is not")
            assert "after position 4 (still as checkpointed) and at or before position 8" in (
                report.chain.reason
            )

        self.run(scenario)

    def test_an_event_forged_after_the_newest_checkpoint_is_not_detected(self) -> None:
        async def scenario(store: EventStore, anchor: Path) -> None:
            key = SigningKey.generate()
            log = await self.anchored_log(store, anchor, key)
            await self.forge(store, forged_after(log, "run-a"))
            store = await self.reopen(store)
            assert (await store.read_all(17, 1))[0].data == b"forged"
            assert await store.verify() == (await store.verify({}))
            assert (await store.verify()).ok

            report = await verify_anchored(store, anchor, key.verify_key)
            assert report.ok, "checkpoints alone cannot tell it from a real append"
            assert (report.anchor.newest, report.chain.checked) == (16, 17)
            # and the next checkpoint signs whatever head it finds, the forgery included
            checkpoint = await Checkpointer(store, anchor, key).checkpoint()
            assert checkpoint is not None
            assert checkpoint.position == 17

        self.run(scenario)

    def test_an_event_forged_before_a_checkpoint_is_a_rewrite(self) -> None:
        async def scenario(store: EventStore, anchor: Path) -> None:
            key = SigningKey.generate()
            log = await self.anchored_log(store, anchor, key)
            inserted = forged_after(log[:10], "run-b")
            shifted = [
                msgspec.structs.replace(e, position=e.position + 1)
                if e.stream != "run-b"
                else msgspec.structs.replace(e, position=e.position + 1, version=e.version + 1)
                for e in log[10:]
            ]
            relinked = reseal([*log[:10], inserted, *shifted], 11, inserted.data)
            await self.replace_log(store, relinked)
            store = await self.reopen(store)
            assert (await store.verify()).ok
            report = await verify_anchored(store, anchor, key.verify_key)
            assert report.chain.reason.startswith("rewritten: the hash at position 12")

        self.run(scenario)


class TestSqliteAttacks(Attacks):
    """The SQLite file, edited with sqlite3 while no store has it open."""

    @contextlib.asynccontextmanager
    async def make_store(self) -> AsyncIterator[EventStore]:
        self.opened = []
        with tempfile.TemporaryDirectory(prefix="baton-es-") as directory:
            store = await SqliteEventStore.open(Path(directory) / "events.db")
            self.opened.append(store)
            try:
                yield store
            finally:
                for each in self.opened:
                    await each.close()

    @staticmethod
    def _edit(store: EventStore, *statements: tuple[str, tuple[object, ...]]) -> None:
        assert isinstance(store, SqliteEventStore)
        with contextlib.closing(sqlite3.connect(store.path)) as conn, conn:
            for sql, params in statements:
                conn.execute(sql, params)

    @staticmethod
    def _insert(event: StoredEvent) -> tuple[str, tuple[object, ...]]:
        names = [name.strip() for name in COLUMNS.split(",")]
        marks = ", ".join("?" * len(names))
        return f"INSERT INTO events ({COLUMNS}) VALUES ({marks})", tuple(
            getattr(event, name) for name in names
        )

    async def reopen(self, store: EventStore) -> EventStore:
        assert isinstance(store, SqliteEventStore)
        await store.close()
        again = await SqliteEventStore.open(store.path)
        self.opened.append(again)
        return again

    async def replace_log(self, store: EventStore, events: list[StoredEvent]) -> None:
        self._edit(store, ("DELETE FROM events", ()), *map(self._insert, events))

    async def forge(self, store: EventStore, event: StoredEvent) -> None:
        self._edit(store, self._insert(event))

    async def edit_snapshot(
        self, store: EventStore, stream: str, version: int, data: bytes, digest: str | None
    ) -> None:
        sql = "UPDATE snapshots SET data = ?, digest = coalesce(?, digest)"
        self._edit(
            store, (f"{sql} WHERE stream = ? AND version = ?", (data, digest, stream, version))
        )


class TestJetStreamAttacks(Attacks):
    """The JetStream log, changed through its streams by a client with the rights to."""

    url = ""
    nc: NATS
    layout: Layout

    @pytest.fixture(autouse=True)
    def _server(self, nats_url: str) -> None:
        self.url = nats_url

    @contextlib.asynccontextmanager
    async def make_store(self) -> AsyncIterator[EventStore]:
        tag = uuid.uuid4().hex[:12]
        self.layout = Layout(f"T{tag}", f"t{tag}")
        self.nc = await nats.connect(self.url)
        self.opened = []
        try:
            store = await self._open()
            yield store
        finally:
            for each in self.opened:
                await each.close()
            js = self.nc.jetstream()
            for name in (self.layout.name, self.layout.snapshot_name):
                with contextlib.suppress(Exception):
                    await js.delete_stream(name)
            await self.nc.close()

    async def _open(self) -> EventStore:
        store = await JetStreamEventStore.open(
            self.nc, self.layout.name, subject_prefix=self.layout.prefix
        )
        self.opened.append(store)
        return store

    async def reopen(self, store: EventStore) -> EventStore:
        await store.close()
        return await self._open()

    async def _publish(self, event: StoredEvent) -> None:
        await self.nc.jetstream().publish(
            self.layout.subject(event.stream),
            body_of(event),
            stream=self.layout.name,
            headers={VERSION_HEADER: str(event.version)},
        )

    async def replace_log(self, store: EventStore, events: list[StoredEvent]) -> None:
        # deny_delete and deny_purge keep single messages in; a client with the rights to
        # delete the stream can still replace the whole log
        js = self.nc.jetstream()
        await js.delete_stream(self.layout.name)
        await js.add_stream(self.layout.log_config(1))
        for event in events:
            await self._publish(event)

    async def forge(self, store: EventStore, event: StoredEvent) -> None:
        await self._publish(event)  # anyone who may publish on the log's subjects

    async def edit_snapshot(
        self, store: EventStore, stream: str, version: int, data: bytes, digest: str | None
    ) -> None:
        js = self.nc.jetstream()
        subject = f"{self.layout.snapshot_prefix(stream)}{version}"
        kept = await js.get_last_msg(self.layout.snapshot_name, subject)
        body = SNAPSHOT_DECODER.decode(kept.data or b"")
        edited = msgspec.structs.replace(body, data=data, digest=digest or body.digest)
        await js.publish(subject, BODY_ENCODER.encode(edited), stream=self.layout.snapshot_name)


def test_the_unbound_snapshots_of_a_schema_2_file_are_dropped_at_the_upgrade(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.db"

    async def fill() -> None:
        store = await SqliteEventStore.open(path)
        try:
            await store.append("run-a", [NewEvent(event_id="run-a@1", type="t", data=b"")], 0)
        finally:
            await store.close()

    asyncio.run(fill())
    with contextlib.closing(sqlite3.connect(path)) as conn, conn:  # as schema 2 had it
        conn.execute("ALTER TABLE snapshots DROP COLUMN event_hash")
        conn.execute("ALTER TABLE snapshots DROP COLUMN digest")
        conn.execute("INSERT INTO snapshots VALUES ('run-a', 1, 1, 1, x'00')")
        conn.execute("PRAGMA user_version = 2")

    async def reopened() -> None:
        store = await SqliteEventStore.open(path)
        try:
            assert await store.verify_snapshots() == []
            assert await store.load_snapshot("run-a") is None
            assert (await store.verify()).ok
        finally:
            await store.close()

    asyncio.run(reopened())
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 3
