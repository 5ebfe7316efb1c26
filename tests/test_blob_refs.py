"""Large values by reference, without a bus: which maps are references, the swap of large
values for references and back (a property over arbitrary payloads), and the rules the
orchestrator's blob service keeps for uploads and reads (a real in-memory event store)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import blobs
from bus.connection import Bus
from bus.protocol import BLOB_CHUNK_BYTES, BlobGet, BlobPut, BlobRef
from eventstore import MemoryEventStore, NewEvent, digest_of
from orchestrator.service import blobs as blob_service_module
from orchestrator.service.blobs import (
    UPLOAD_IDLE_S,
    BadBlobRequest,
    BlobMismatch,
    BlobRefused,
    BlobService,
    BlobTooLarge,
    BlobUploadBroken,
)


class Blobs:
    """A dict of blobs standing in for the bus, counting puts."""

    def __init__(self) -> None:
        self.held: dict[str, bytes] = {}
        self.puts = 0

    async def put(self, data: bytes, media_type: str) -> BlobRef:
        self.puts += 1
        digest = blobs.digest_of(data)
        self.held[digest] = data
        return BlobRef(digest, len(data), media_type)

    async def get(self, ref: BlobRef) -> bytes:
        return blobs.check(ref, self.held[ref.digest])


def test_a_reference_is_exactly_a_map_of_its_three_keys() -> None:
    digest = digest_of(b"x")
    assert blobs.as_ref({"$blob": digest, "size": 1, "media_type": "text/plain"}) is not None
    for not_one in (
        {"$blob": digest, "size": 1},
        {"$blob": digest, "size": 1, "media_type": "t", "extra": 1},
        {"$blob": "sha256:short", "size": 1, "media_type": "t"},
        {"$blob": digest, "size": -1, "media_type": "t"},
        {"$blob": digest, "size": "1", "media_type": "t"},
        [digest, 1, "t"],
    ):
        assert blobs.as_ref(not_one) is None, not_one


def test_large_values_leave_as_references_and_come_back_whole() -> None:
    async def scenario() -> None:
        store = Blobs()
        payload: dict[str, Any] = {
            "small": "stays",
            "text": "é" * 400,
            "raw": b"\x00" * 1000,
            "many": [{"turn": n, "text": "x" * 20} for n in range(40)],
            "nested": {"deep": ["y" * 700, 1, None]},
        }
        sent = await blobs.externalize(payload, store.put, threshold=600)
        assert sent["small"] == "stays"
        for key, media_type in (
            ("text", blobs.TEXT),
            ("raw", blobs.BINARY),
            ("many", blobs.MSGPACK),
        ):
            ref = blobs.as_ref(sent[key])
            assert ref is not None, f"{key} stayed inline"
            assert ref.media_type == media_type, key
        assert blobs.as_ref(sent["nested"]["deep"][0]) is not None
        assert len(msgspec.msgpack.encode(sent)) < 1000
        assert await blobs.internalize(sent, store.get) == payload
        # a small payload is not touched at all
        small = {"a": 1}
        assert await blobs.externalize(small, store.put) is small
        assert await blobs.internalize(small, store.get) is small

    asyncio.run(scenario())


def test_a_large_list_of_large_values_nests_references() -> None:
    async def scenario() -> None:
        store = Blobs()
        payload = {"pages": ["p" * 250 for _ in range(10)] + ["q" * 10 for _ in range(30)]}
        sent = await blobs.externalize(payload, store.put, threshold=200)
        outer = blobs.as_ref(sent["pages"])
        assert outer is not None
        inner = blobs.refs_in(msgspec.msgpack.decode(store.held[outer.digest]))
        assert inner, "the list's blob refers to its own large values"
        assert await blobs.internalize(sent, store.get) == payload

    asyncio.run(scenario())


def test_a_blob_whose_bytes_do_not_match_is_refused() -> None:
    ref = BlobRef(digest_of(b"right"), 5, blobs.TEXT)
    with pytest.raises(blobs.BlobMismatch):
        blobs.check(ref, b"wrong")
    with pytest.raises(blobs.BlobMismatch):
        blobs.check(BlobRef(ref.digest, 6, blobs.TEXT), b"right")


values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text() | st.binary(),
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner, max_size=6)
    ),
    max_leaves=30,
)


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.text(max_size=5), values, max_size=6), st.integers(20, 300))
def test_any_payload_comes_back_as_it_left(payload: dict[str, Any], threshold: int) -> None:
    async def scenario() -> None:
        store = Blobs()
        sent = await blobs.externalize(payload, store.put, threshold=threshold)
        back = await blobs.internalize(sent, store.get)
        # msgpack has no tuples; what left as a list comes back as a list
        assert back == payload

    asyncio.run(scenario())


# -- the orchestrator's service --------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def service(
    works: bool = True, max_bytes: int = 10 * BLOB_CHUNK_BYTES
) -> tuple[BlobService, MemoryEventStore, Clock]:
    store = MemoryEventStore()
    clock = Clock()
    held = BlobService(
        store,
        cast(Bus, None),  # only `start` and `stop` use the bus
        works_in=lambda run_id, agent: works and run_id == "run-1" and agent in ("a1", "a2"),
        max_bytes=max_bytes,
        clock=clock,
    )
    return held, store, clock


def chunks(data: bytes, upload_id: str = "u1", digest: str = "") -> list[BlobPut]:
    digest = digest or digest_of(data)
    offsets = range(0, max(len(data), 1), BLOB_CHUNK_BYTES)
    return [
        BlobPut("run-1", upload_id, o, data[o : o + BLOB_CHUNK_BYTES], len(data), digest, "x/y")
        for o in offsets
    ]


def test_an_upload_in_chunks_is_stored_once_whole_and_read_back_by_who_may() -> None:
    async def scenario() -> None:
        blob_service, store, _ = service()
        data = bytes(range(256)) * (BLOB_CHUNK_BYTES // 100)  # three chunks, the last short
        parts = chunks(data)
        assert len(parts) == 3
        first = await blob_service.put(parts[0], "a1")
        assert (first.received, first.ref) == (BLOB_CHUNK_BYTES, None)
        again = await blob_service.put(parts[0], "a1")  # sent twice: acknowledged again
        assert again.received == BLOB_CHUNK_BYTES
        await blob_service.put(parts[1], "a1")
        done = await blob_service.put(parts[2], "a1")
        assert done.ref == BlobRef(digest_of(data), len(data), "x/y")
        assert await store.blobs.get(digest_of(data)) == data
        # not referred to by the run yet: not readable, even by its uploader
        with pytest.raises(BlobRefused):
            await blob_service.get(BlobGet("run-1", digest_of(data)), "a1")
        event = msgspec.msgpack.encode({"output": blobs.ref_value(done.ref)})
        await store.append("run-run-1", [NewEvent(event_id="e1", type="t", data=event,
                                                  correlation_id="run-1")], 0)  # fmt: skip
        read = b""
        while len(read) < len(data):
            chunk = await blob_service.get(BlobGet("run-1", digest_of(data), len(read)), "a1")
            assert (chunk.size, chunk.media_type) == (len(data), "x/y")
            read += chunk.data
        assert read == data
        with pytest.raises(BlobRefused):  # another run's agent, another run
            await blob_service.get(BlobGet("run-2", digest_of(data)), "a1")
        with pytest.raises(BadBlobRequest):
            await blob_service.get(BlobGet("run-1", "sha256:nope"), "a1")

    asyncio.run(scenario())


def test_uploads_that_do_not_hold_together_are_refused_and_store_nothing() -> None:
    async def scenario() -> None:
        blob_service, store, clock = service(max_bytes=3 * BLOB_CHUNK_BYTES)
        data = b"z" * (2 * BLOB_CHUNK_BYTES)
        forged = chunks(data, digest=digest_of(b"something else"))
        await blob_service.put(forged[0], "a1")
        with pytest.raises(BlobMismatch):
            await blob_service.put(forged[1], "a1")
        assert await store.blobs.list() == []
        parts = chunks(data, upload_id="u2")
        with pytest.raises(BlobUploadBroken):  # a middle chunk with no start
            await blob_service.put(parts[1], "a1")
        await blob_service.put(parts[0], "a1")
        with pytest.raises(BlobUploadBroken):  # another agent cannot continue it
            await blob_service.put(parts[1], "a2")
        clock.now += UPLOAD_IDLE_S + 1  # forgotten after a minute without a chunk
        with pytest.raises(BlobUploadBroken):
            await blob_service.put(parts[1], "a1")
        big = chunks(b"b" * (4 * BLOB_CHUNK_BYTES), upload_id="u3")
        with pytest.raises(BlobTooLarge):
            await blob_service.put(big[0], "a1")
        for n in range(4):
            await blob_service.put(chunks(data, upload_id=f"open{n}")[0], "a1")
        with pytest.raises(BlobTooLarge):  # at most four open at once
            await blob_service.put(chunks(data, upload_id="open4")[0], "a1")
        assert await store.blobs.list() == []

    asyncio.run(scenario())


def test_only_an_agent_with_work_in_the_run_may_upload() -> None:
    async def scenario() -> None:
        blob_service, store, _ = service(works=False)
        with pytest.raises(BlobRefused):
            await blob_service.put(chunks(b"data")[0], "a1")
        assert await store.blobs.list() == []

    asyncio.run(scenario())


def test_the_open_uploads_are_bounded_in_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(blob_service_module, "MAX_HELD_BYTES", 3 * BLOB_CHUNK_BYTES)

    async def scenario() -> None:
        blob_service, _, _ = service()
        data = b"h" * (2 * BLOB_CHUNK_BYTES)
        await blob_service.put(chunks(data, upload_id="first")[0], "a1")
        with pytest.raises(BlobTooLarge, match="try later"):  # another's, over the total
            await blob_service.put(chunks(data, upload_id="second")[0], "a2")
        await blob_service.put(chunks(data, upload_id="first")[1], "a1")  # done: room again
        await blob_service.put(chunks(data, upload_id="second")[0], "a2")

    asyncio.run(scenario())
