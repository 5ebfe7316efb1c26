"""Large values by reference, the orchestrator's side: it serves agents' blob uploads and
downloads (`baton.blob.<agent_id>.put|get`) from the store's blob port (`store.blobs`).

Who may do what, from the subject a request came on (which on the embedded server only
that agent may publish to), never from a claim in the payload:

- **put**: an agent that has work in the run (`works_in`) may upload a blob for it, in
  order, chunk by chunk; the whole is hashed as it arrives and stored only if it hashes
  to the digest it came with (else `BlobMismatch`, nothing stored). Uploads are bounded:
  `max_bytes` each, `MAX_OPEN_UPLOADS` open per agent, `MAX_HELD_BYTES` in all,
  forgotten after `UPLOAD_IDLE_S` without a chunk.
- **get**: an agent that has work in the run may read a blob the run's log refers to
  (its input, a dependency's output, a chat's transcript...), and the blobs that such a
  blob refers to in turn. Nothing else: not another run's blobs, not a digest it guessed.

Sharing the runs (several orchestrators on one JetStream log), only the owner of the
request's run answers, as for reports (`elsewhere`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import msgspec

from bus import blobs, subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming, Subscription
from bus.errors import BusError, MalformedMessage
from bus.protocol import (
    BLOB_CHUNK_BYTES,
    BLOB_THRESHOLD,
    Assignment,
    BlobChunk,
    BlobGet,
    BlobPut,
    BlobPutAck,
    BlobRef,
    ErrorReply,
    Payload,
)
from eventstore import (
    BlobMismatchError,
    BlobNotFoundError,
    EventQuery,
    EventStore,
    EventStoreError,
    InvalidEventError,
)
from orchestrator.service.bounded import Lru

log = logging.getLogger("baton.blobs")

MAX_BLOB_BYTES: Final = 256 * 1024 * 1024
"""The largest blob an agent may upload, by default (`Orchestrator(max_blob_bytes=)`)."""
MAX_OPEN_UPLOADS: Final = 4
"""Uploads one agent may have open at once."""
MAX_HELD_BYTES: Final = 1024 * 1024 * 1024
"""The bytes all open uploads may come to, together (their declared sizes)."""
UPLOAD_IDLE_S: Final = 60.0
"""An upload with no chunk for this long is forgotten (the agent must start it again)."""
CACHE_BYTES: Final = 64 * 1024 * 1024
"""Blobs kept in memory for the chunks of their downloads (the newest first)."""
GRANTS: Final = 100_000
"""(agent, run, digest) reads allowed, remembered: the newest this many."""

_put: Decoder[BlobPut] = Decoder(BlobPut)
_get: Decoder[BlobGet] = Decoder(BlobGet)


def _decode_put(msg: Incoming) -> BlobPut:
    """A `blob.put`; sent as JSON, its `data` is base64 text (JSON has no bytes), which
    the strict msgpack decoder would refuse as a string."""
    if msg.encoding != "json":
        return _put.decode(msg.data)
    try:
        return msgspec.convert(msgspec.msgpack.decode(msg.data), BlobPut)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise MalformedMessage(str(exc)) from exc


class BlobRequestRefused(Exception):
    """A blob request refused; the class's name is the `error` of its reply (one of
    `bus.protocol.BLOB_ERRORS`)."""


class BlobMismatch(BlobRequestRefused):
    """Uploaded content that does not hash to its digest (or a stored blob that no
    longer does): nothing stored, nothing served."""


class BlobNotFound(BlobRequestRefused):
    """No blob with this digest is stored."""


class BlobRefused(BlobRequestRefused):
    """Not the sender's: no task in the run, or the run refers to no such blob."""


class BlobTooLarge(BlobRequestRefused):
    """Over the largest blob, or too many uploads open."""


class BlobUploadBroken(BlobRequestRefused):
    """A chunk that does not continue its upload: start it again."""


class BlobUnavailable(BlobRequestRefused):
    """The blob store failed: try again."""


class BadBlobRequest(BlobRequestRefused):
    """A request naming a digest that is not `sha256:<hex>`, or a bad media type."""


@dataclass
class _Upload:
    run_id: str
    digest: str
    size: int
    media_type: str
    touched: float
    data: bytearray = field(default_factory=bytearray)
    hasher: hashlib._Hash = field(default_factory=hashlib.sha256)


class _Cache:
    """Blobs read lately, up to `limit` bytes in all, least recently used out first."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._held = 0
        self._blobs: OrderedDict[str, tuple[bytes, str]] = OrderedDict()

    def get(self, digest: str) -> tuple[bytes, str] | None:
        found = self._blobs.get(digest)
        if found is not None:
            self._blobs.move_to_end(digest)
        return found

    def put(self, digest: str, data: bytes, media_type: str) -> None:
        if len(data) > self._limit or digest in self._blobs:
            return
        self._blobs[digest] = (data, media_type)
        self._held += len(data)
        while self._held > self._limit:
            _, (gone, _) = self._blobs.popitem(last=False)
            self._held -= len(gone)


class BlobService:
    """Answers agents' blob puts and gets (see the module's docs)."""

    def __init__(
        self,
        store: EventStore,
        bus: Bus,
        *,
        works_in: Callable[[str, str], bool],
        max_bytes: int = MAX_BLOB_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._bus = bus
        self._works_in = works_in
        self.max_bytes = max_bytes
        self._clock = clock
        self._uploads: dict[tuple[str, str], _Upload] = {}
        self._cache = _Cache(CACHE_BYTES)
        self._grants: Lru[tuple[str, str, str], bool] = Lru(GRANTS)
        self._subscriptions: list[Subscription] = []
        self.elsewhere: Callable[[str], bool] | None = None
        """Sharing the runs: whether a run is another orchestrator's (it answers)."""

    async def start(self) -> None:
        self._subscriptions = [
            await self._bus.subscribe(subjects.BLOB_PUT_ALL, self._on_put),
            await self._bus.subscribe(subjects.BLOB_GET_ALL, self._on_get),
        ]

    async def stop(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        self._uploads.clear()

    def forget_run(self, run_id: str) -> None:
        """A run this orchestrator no longer serves: its open uploads go."""
        for key in [k for k, up in self._uploads.items() if up.run_id == run_id]:
            del self._uploads[key]

    # -- the bus ---------------------------------------------------------------------

    async def _on_put(self, msg: Incoming) -> None:
        try:
            agent = subjects.blob_sender(msg.subject)
            request = _decode_put(msg)
            if self.elsewhere is not None and self.elsewhere(request.run_id):
                return
            answer: BlobPutAck | ErrorReply = await self.put(request, agent)
        except (BlobRequestRefused, BusError) as exc:
            answer = ErrorReply(type(exc).__name__, str(exc))
        await msg.reply(encode(answer))

    async def _on_get(self, msg: Incoming) -> None:
        try:
            agent = subjects.blob_sender(msg.subject)
            request = _get.decode(msg.data)
            if self.elsewhere is not None and self.elsewhere(request.run_id):
                return
            answer: BlobChunk | ErrorReply = await self.get(request, agent)
        except (BlobRequestRefused, BusError) as exc:
            answer = ErrorReply(type(exc).__name__, str(exc))
        await msg.reply(encode(answer))

    async def unstored(self, payloads: list[Payload]) -> str:
        """Why a result's payloads (its output, its subtasks' params) refer to a blob no
        one could read: not stored, or stored with another size; '' if every blob they
        refer to is there."""
        for ref in blobs.refs_in(payloads):
            try:
                info = await self._store.blobs.info(ref.digest)
            except EventStoreError as exc:
                return f"blob {ref.digest} cannot be looked up: {exc}"
            if info is None:
                return f"it refers to blob {ref.digest}, which was never stored"
            if info.size != ref.size:
                return f"it says blob {ref.digest} has {ref.size} bytes, not {info.size}"
        return ""

    # -- uploads ---------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        for key in [k for k, up in self._uploads.items() if now - up.touched > UPLOAD_IDLE_S]:
            del self._uploads[key]

    def _upload(self, request: BlobPut, agent: str, now: float) -> _Upload:
        """The upload `request` continues (or starts, at offset 0)."""
        key = (agent, request.upload_id)
        upload = self._uploads.get(key)
        if upload is None:
            if request.offset != 0:
                raise BlobUploadBroken(f"no open upload {request.upload_id!r}")
            if request.size > self.max_bytes:
                raise BlobTooLarge(f"{request.size} bytes is over the {self.max_bytes}-byte limit")
            if sum(a == agent for a, _ in self._uploads) >= MAX_OPEN_UPLOADS:
                raise BlobTooLarge(f"{MAX_OPEN_UPLOADS} uploads open already")
            held = sum(up.size for up in self._uploads.values())
            if held + request.size > MAX_HELD_BYTES:
                raise BlobTooLarge(f"the open uploads come to {held} bytes already: try later")
            upload = _Upload(request.run_id, request.digest, request.size, request.media_type, now)
            self._uploads[key] = upload
        elif (upload.run_id, upload.digest, upload.size, upload.media_type) != (
            request.run_id,
            request.digest,
            request.size,
            request.media_type,
        ):
            raise BlobUploadBroken("a chunk that names another blob than its upload")
        return upload

    async def put(self, request: BlobPut, agent: str) -> BlobPutAck:
        """Take one chunk of an agent's upload; store the blob once it is whole."""
        if not blobs.is_digest(request.digest):
            raise BadBlobRequest(f"not a digest: {request.digest!r}")
        if not self._works_in(request.run_id, agent):
            raise BlobRefused(f"{agent} has no task in run {request.run_id!r}")
        now = self._clock()
        self._expire(now)
        upload = self._upload(request, agent, now)
        held = len(upload.data)
        end = request.offset + len(request.data)
        if end <= held and request.offset < held:  # a chunk sent again: already held
            return BlobPutAck(held)
        if request.offset != held or len(request.data) > BLOB_CHUNK_BYTES or end > upload.size:
            raise BlobUploadBroken(
                f"a chunk at {request.offset} of {len(request.data)} bytes does not continue "
                f"the {held} bytes held of {upload.size}",
            )
        upload.data += request.data
        upload.hasher.update(request.data)
        upload.touched = now
        if end < upload.size:
            return BlobPutAck(end)
        del self._uploads[(agent, request.upload_id)]
        actual = "sha256:" + upload.hasher.hexdigest()
        if actual != upload.digest:
            log.warning("blob upload by %s refused: %s is not %s", agent, actual, upload.digest)
            raise BlobMismatch(f"the content hashes to {actual}, not {upload.digest}")
        data = bytes(upload.data)
        try:
            info = await self._store.blobs.put(data, upload.media_type, digest=upload.digest)
        except BlobMismatchError as exc:
            raise BlobMismatch(str(exc)) from exc
        except InvalidEventError as exc:
            raise BadBlobRequest(str(exc)) from exc
        except EventStoreError as exc:
            raise BlobUnavailable(str(exc)) from exc
        self._cache.put(info.digest, data, upload.media_type)
        return BlobPutAck(info.size, BlobRef(info.digest, info.size, upload.media_type))

    # -- assignments -----------------------------------------------------------------

    async def by_reference(self, agent_id: str, assignment: Assignment) -> Assignment:
        """`assignment` with the large parts of its input stored as blobs and replaced by
        their references, which `agent_id` (and only an agent the run's log refers them
        to) may then read. For an input assembled from many values that are each under the
        threshold but together too large for one message (a join over many outputs, a long
        handoff context). The same input gives the same blobs, so a re-send stores nothing
        new; the log keeps the values themselves, in the events that produced them."""

        async def put(data: bytes, media_type: str) -> BlobRef:
            info = await self._store.blobs.put(data, media_type)
            self._cache.put(info.digest, data, media_type)
            self._grants.set((agent_id, assignment.run_id, info.digest), True)
            return BlobRef(info.digest, info.size, media_type)

        shrunk = await blobs.externalize(assignment.input, put, BLOB_THRESHOLD)
        return msgspec.structs.replace(assignment, input=shrunk)

    # -- downloads -------------------------------------------------------------------

    async def _may_read(self, agent: str, run_id: str, digest: str) -> bool:
        if self._grants.get((agent, run_id, digest)):
            return self._works_in(run_id, agent)
        if not self._works_in(run_id, agent):
            return False
        found = await self._store.query(EventQuery(correlation_id=run_id, text=digest, limit=1))
        if found:
            self._grants.set((agent, run_id, digest), True)
        return bool(found)

    async def _read(self, digest: str) -> tuple[bytes, str]:
        cached = self._cache.get(digest)
        if cached is not None:
            return cached
        try:
            info = await self._store.blobs.info(digest)
            if info is None:
                raise BlobNotFound(f"no blob {digest}")
            data = await self._store.blobs.get(digest)
        except BlobNotFoundError as exc:
            raise BlobNotFound(str(exc)) from exc
        except BlobMismatchError as exc:
            raise BlobMismatch(f"the stored blob is damaged: {exc}") from exc
        except EventStoreError as exc:
            raise BlobUnavailable(str(exc)) from exc
        self._cache.put(digest, data, info.media_type)
        return data, info.media_type

    async def get(self, request: BlobGet, agent: str) -> BlobChunk:
        """A range of a blob the agent may read."""
        digest = request.digest
        if not blobs.is_digest(digest):
            raise BadBlobRequest(f"not a digest: {digest!r}")
        if not await self._may_read(agent, request.run_id, digest):
            raise BlobRefused(f"run {request.run_id!r} refers to no blob {digest} for {agent}")
        data, media_type = await self._read(digest)
        if request.offset == 0 and media_type == blobs.MSGPACK and blobs.may_hold_refs(data):
            # what this blob refers to is the run's too (a large list of large values)
            with contextlib.suppress(BusError):
                for ref in blobs.refs_in(blobs.decode_value(data, media_type)):
                    self._grants.set((agent, request.run_id, ref.digest), True)
        length = min(request.length or BLOB_CHUNK_BYTES, BLOB_CHUNK_BYTES)
        part = data[request.offset : request.offset + length]
        return BlobChunk(digest, request.offset, len(data), media_type, part)
