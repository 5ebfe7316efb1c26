"""`baton blobs gc`: blobs no event refers to, stored before the grace period, go; the
referenced ones (directly, or through a referenced msgpack blob) and the young ones stay."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec
import pytest

from bus import blobs
from bus.protocol import BlobRef
from bus.server import EmbeddedNats
from eventstore import BlobInfo, JetStreamEventStore, NewEvent, SqliteEventStore
from orchestrator.cli.main import main
from orchestrator.service import blob_gc


async def _put(store: SqliteEventStore, value: object) -> BlobInfo:
    data, media_type = blobs.encode_value(value)
    return await store.blobs.put(data, media_type)


def _ref(info: BlobInfo) -> dict[str, object]:
    return blobs.ref_value(BlobRef(info.digest, info.size, info.media_type))


def test_gc_removes_only_old_unreferenced_blobs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.db"

    async def setup() -> dict[str, str]:
        store = await SqliteEventStore.open(path)
        try:
            direct = await _put(store, "referenced by an event")
            inner = await _put(store, "referenced by a referenced blob")
            outer = await _put(store, [_ref(inner), "and more"])
            orphan = await _put(store, "an upload whose result never came")
            data = msgspec.msgpack.encode({"output": {"a": _ref(direct), "b": _ref(outer)}})
            await store.append("run-x", [NewEvent(event_id="run-x@1", type="t", data=data)], 0)
            return {"direct": direct.digest, "inner": inner.digest, "outer": outer.digest,
                    "orphan": orphan.digest}  # fmt: skip
        finally:
            await store.close()

    digests = asyncio.run(setup())

    async def collect(grace_s: float, dry_run: bool = False) -> blob_gc.Collected:
        store = await SqliteEventStore.open(path)
        try:
            return await blob_gc.collect(store, grace_s=grace_s, dry_run=dry_run)
        finally:
            await store.close()

    young = asyncio.run(collect(grace_s=3600))
    assert (young.removed, young.kept_young, young.referenced) == ([], 1, 3)
    dry = asyncio.run(collect(grace_s=0, dry_run=True))
    assert dry.removed == [digests["orphan"]]

    # the command: removes the orphan only, and says so
    time.sleep(0.01)
    assert main(["blobs", "gc", "--grace", "0", "--state-dir", str(tmp_path)]) == 0
    said = capsys.readouterr().out
    assert "removed 1 unreferenced blob(s)" in said
    assert digests["orphan"] in said

    async def left() -> set[str]:
        store = await SqliteEventStore.open(path)
        try:
            return {info.digest for info in await store.blobs.list()}
        finally:
            await store.close()

    assert asyncio.run(left()) == {digests["direct"], digests["inner"], digests["outer"]}
    assert main(["blobs", "ls", "--state-dir", str(tmp_path)]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert len(listed) == 3
    assert all(line.endswith(" referenced") for line in listed)
    assert main(["blobs", "gc", "--grace", "-1", "--state-dir", str(tmp_path)]) == 2


def test_gc_on_the_jetstream_object_store(tmp_path: Path) -> None:
    """The same collection on the distributed store: the log in a JetStream stream, the
    blobs in its Object Store bucket."""

    async def scenario() -> None:
        server = EmbeddedNats(tmp_path / "nats")
        url = await server.start()
        store = await JetStreamEventStore.open(
            url, "GC", subject_prefix="gc", blob_bucket="GC_BLOBS"
        )
        try:
            kept = await _put_js(store, "referenced")
            orphan = await _put_js(store, "never referred to")
            data = msgspec.msgpack.encode({"output": _ref(kept)})
            await store.append("run-y", [NewEvent(event_id="run-y@1", type="t", data=data)], 0)
            young = await blob_gc.collect(store, grace_s=3600)
            assert (young.removed, young.kept_young) == ([], 1)
            done = await blob_gc.collect(store, grace_s=0, now=time.time() + 1)
            assert done.removed == [orphan.digest]
            assert [b.digest for b in await store.blobs.list()] == [kept.digest]
        finally:
            await store.close()
            server.stop()

    asyncio.run(scenario())


async def _put_js(store: JetStreamEventStore, value: object) -> BlobInfo:
    data, media_type = blobs.encode_value(value)
    return await store.blobs.put(data, media_type)
