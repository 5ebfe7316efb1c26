"""The projection port of a JetStream log: rows in this process's memory, saved now and
then (and at close) with their checkpoint as one object per projection in the object
store `<name>_PROJECTIONS`, bound to the hash chain (the hash of the event at the
checkpoint).

A commit is atomic and fenced in memory, and durable at the next save (`SAVE_S` after
the last one, or at close): after a crash, the projector carries on from the last saved
checkpoint and folds the events after it again, so no event is applied twice and none
is skipped. A saved object whose binding no longer holds (the log at its checkpoint is
not the log it was folded from) or that does not decode is ignored, with a log line, and
the projection is folded again from the start of the log."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Mapping

import msgspec
from nats.js.object_store import ObjectStore

from eventstore._common import check_open, log
from eventstore.errors import StorageError
from eventstore.jetstream.log import NATS_ERRORS, JetStreamLog, storage_error
from eventstore.model import StoredEvent
from eventstore.projection import HeldRows, check_commit, check_projection_name

SAVE_S = 10.0
"""A projection's rows are saved at most this often (at a commit), and at close."""

EventAt = Callable[[int], Awaitable[StoredEvent | None]]


class SavedRows(msgspec.Struct, frozen=True):
    """One projection's rows as of `checkpoint`, and the hash of the event there."""

    checkpoint: int
    event_hash: str
    rows: dict[str, bytes]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SavedRows)


class JetStreamProjections:
    """`ProjectionStore` for a JetStream log (see the module's docs)."""

    def __init__(
        self,
        log_: JetStreamLog,
        replicas: int,
        is_closed: Callable[[], bool],
        event_at: EventAt,
        save_s: float = SAVE_S,
    ) -> None:
        self._log = log_
        self._replicas = replicas
        self._is_closed = is_closed
        self._event_at = event_at
        self._save_s = save_s
        self._bucket_name = f"{log_.layout.name}_PROJECTIONS"
        self._bucket: ObjectStore | None = None
        self._held = HeldRows()
        self._loading: dict[str, asyncio.Future[None]] = {}
        self._saved: dict[str, int] = {}
        """The checkpoint of each projection's last save (or load)."""
        self._saved_at: dict[str, float] = {}

    async def _objects(self) -> ObjectStore:
        if self._bucket is None:
            self._bucket = await self._log.object_store(
                self._bucket_name,
                "Baton projections: rows and checkpoint, bound to the log",
                self._replicas,
            )
        return self._bucket

    async def _ready(self, name: str) -> None:
        """Load the projection's saved rows once (concurrent callers wait for it)."""
        check_projection_name(name)
        check_open(self._is_closed())
        loading = self._loading.get(name)
        if loading is None:
            loading = asyncio.ensure_future(self._load(name))
            self._loading[name] = loading
        try:
            await asyncio.shield(loading)
        except BaseException:
            if loading.done():  # a failed load is tried again by the next caller
                self._loading.pop(name, None)
            raise

    async def _load(self, name: str) -> None:
        self._saved_at[name] = time.monotonic()
        found = await self._log.read_object(self._bucket_name, name, f"saved projection {name!r}")
        if found is None:
            return  # folded from the log
        try:
            saved = _decoder.decode(found)
        except msgspec.DecodeError as error:
            log.warning("saved projection %r ignored: it does not decode (%s)", name, error)
            return
        event = await self._event_at(saved.checkpoint) if saved.checkpoint else None
        if saved.checkpoint and (event is None or event.hash != saved.event_hash):
            log.warning(
                "saved projection %r ignored: the log at position %d is not the one it was "
                "folded from; folding it again",
                name,
                saved.checkpoint,
            )
            return
        self._held.rows[name] = dict(saved.rows)
        self._held.checkpoints[name] = saved.checkpoint
        self._saved[name] = saved.checkpoint

    async def commit(
        self,
        name: str,
        expected_checkpoint: int,
        new_checkpoint: int,
        upserts: Mapping[str, bytes],
        deletes: Collection[str] = (),
    ) -> None:
        """Change the rows and move the checkpoint at once, or nothing (see
        `ProjectionStore.commit`); saved if the last save is `SAVE_S` old."""
        check_commit(name, expected_checkpoint, new_checkpoint, upserts, deletes)
        await self._ready(name)
        self._held.apply(name, expected_checkpoint, new_checkpoint, upserts, deletes)
        if time.monotonic() - self._saved_at.get(name, 0.0) >= self._save_s:
            try:
                await self.save(name)
            except StorageError as error:  # committed all the same: saved next time
                log.warning("projection %r not saved now: %s", name, error)

    async def save(self, name: str) -> None:
        """Save the projection's rows and checkpoint now (if they moved since the last)."""
        checkpoint = self._held.checkpoint(name)
        self._saved_at[name] = time.monotonic()
        if not checkpoint or self._saved.get(name) == checkpoint:
            return
        event = await self._event_at(checkpoint)
        if event is None:
            return  # not in the log (yet): nothing to bind to
        body = _encoder.encode(SavedRows(checkpoint, event.hash, self._held.rows.get(name, {})))
        try:
            await (await self._objects()).put(name, body)
        except NATS_ERRORS as error:
            raise storage_error(f"saving projection {name!r}", error) from error
        self._saved[name] = checkpoint

    async def save_all(self) -> None:
        """Save every projection that moved (at close; a failure is logged)."""
        for name in list(self._held.checkpoints):
            try:
                await self.save(name)
            except Exception as error:  # the log is the truth: the rows can be folded again
                log.warning("projection %r not saved at close: %s", name, error)

    async def checkpoint(self, name: str) -> int:
        """The position of the last event the projection applied, 0 if none."""
        await self._ready(name)
        return self._held.checkpoint(name)

    async def get(self, name: str, key: str) -> bytes | None:
        """One row, `None` if absent."""
        await self._ready(name)
        return self._held.get(name, key)

    async def items(self, name: str, prefix: str = "") -> list[tuple[str, bytes]]:
        """The rows whose key starts with `prefix`, sorted by key."""
        await self._ready(name)
        return self._held.items(name, prefix)
