"""The log index (`index.LogIndex`) saved beside the log, so that opening a store reads
only the events appended since it was saved instead of the whole log: a one-shot
command (`baton audit`, `status`, `replay`) on a log of a million events, a console or a
`baton serve` that starts again.

One object, `index`, in the object store `<name>_INDEX` (the log's replicas), bound to
the hash chain: it holds the index of the log's prefix up to `tail` and the hash of the
event there. At open it is used only if the log still has that event with that hash, and
the index is then caught up from `tail + 1` by reading the log; an object that is
missing, unreadable, does not decode or no longer fits the log is ignored (one line) and
the log is read from the start, as without it. A store saves it after an open that read
`SAVE_EVENTS` or more events, every `SAVE_S` while it has learned that many more, and at
close; several stores on one log may each save it: each saves an exact prefix.

The index is derived data, like the saved projections: a process that may write to
`<name>_INDEX` could make queries miss events or an append think an event id is new.
Give that bucket's subjects the same protection as the log's (docs/security.md)."""

from __future__ import annotations

import asyncio
import contextlib
from array import array
from collections.abc import Awaitable, Callable
from typing import Final

import msgspec
from nats.js.object_store import ObjectStore

from eventstore._common import log
from eventstore.jetstream.index import LogIndex
from eventstore.jetstream.log import NATS_ERRORS, JetStreamLog, storage_error
from eventstore.model import StoredEvent

SAVE_EVENTS: Final = 10_000
"""Save the index when it has learned at least this many events since the last save."""
SAVE_S: Final = 60.0
"""... checked this often while the store is open (and at close)."""
OBJECT: Final = "index"

EventAt = Callable[[int], Awaitable[StoredEvent | None]]


class SavedIndex(msgspec.Struct, frozen=True, array_like=True):
    """A `LogIndex` as saved: its position lists as the bytes of arrays of int64."""

    tail: int
    tail_hash: str
    ids: dict[str, int]
    positions: dict[str, bytes]
    correlations: dict[str, bytes]
    actors: dict[str, bytes]
    types: dict[str, bytes]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(SavedIndex)


def _packed(lookup: dict[str, array[int]] | dict[str, list[int]]) -> dict[str, bytes]:
    return {k: (v if isinstance(v, array) else array("q", v)).tobytes() for k, v in lookup.items()}


def _unpacked(lookup: dict[str, bytes]) -> dict[str, array[int]]:
    found: dict[str, array[int]] = {}
    for key, data in lookup.items():
        positions = array("q")
        positions.frombytes(data)
        found[key] = positions
    return found


def encode(index: LogIndex) -> bytes:
    """The index as saved (read in one go: no await, so it is one consistent prefix)."""
    return _encoder.encode(
        SavedIndex(
            index.tail,
            index.tail_hash,
            index.ids,
            _packed(index.positions),
            _packed(index.correlations),
            _packed(index.actors),
            _packed(index.types),
        )
    )


def adopt(index: LogIndex, saved: SavedIndex) -> None:
    """Make `index` the saved one (it must know nothing yet)."""
    index.tail = saved.tail
    index.tail_hash = saved.tail_hash
    index.ids = dict(saved.ids)
    index.positions = {k: v.tolist() for k, v in _unpacked(saved.positions).items()}
    index.correlations = _unpacked(saved.correlations)
    index.actors = _unpacked(saved.actors)
    index.types = _unpacked(saved.types)


class IndexSaves:
    """Loads the saved index at open and saves it now and then (see the module's docs)."""

    def __init__(
        self, log_: JetStreamLog, index: LogIndex, replicas: int, event_at: EventAt
    ) -> None:
        self._log = log_
        self._index = index
        self._replicas = replicas
        self._event_at = event_at
        self._bucket_name = f"{log_.layout.name}_INDEX"
        self._bucket: ObjectStore | None = None
        self._saved_tail = 0
        self._saving: asyncio.Task[None] | None = None

    async def _objects(self) -> ObjectStore:
        if self._bucket is None:
            self._bucket = await self._log.object_store(
                self._bucket_name, "Baton: the event log's index, bound to the log", self._replicas
            )
        return self._bucket

    async def load(self) -> None:
        """Adopt the saved index if it fits the log (then `refresh` reads only what came
        after it); anything else is logged and leaves the index empty."""
        name = self._bucket_name
        found = await self._log.read_object(name, OBJECT, f"saved index {name}")
        if found is None:
            return  # the whole log is read
        try:
            saved = _decoder.decode(found)
        except msgspec.DecodeError as error:
            log.warning("saved index %s ignored: it does not decode (%s)", name, error)
            return
        event = await self._event_at(saved.tail) if saved.tail else None
        if event is None or event.hash != saved.tail_hash or len(saved.ids) != saved.tail:
            log.warning(
                "saved index %s ignored: the log at position %d is not the one it indexed; "
                "reading the whole log",
                name,
                saved.tail,
            )
            return
        adopt(self._index, saved)
        self._saved_tail = saved.tail

    def due(self) -> bool:
        return self._index.tail - self._saved_tail >= SAVE_EVENTS

    async def save(self) -> None:
        """Save the index now if it learned `SAVE_EVENTS` since the last save."""
        if not self.due():
            return
        tail, body = self._index.tail, encode(self._index)
        try:
            await (await self._objects()).put(OBJECT, body)
        except NATS_ERRORS as error:
            raise storage_error(f"saving the index {self._bucket_name}", error) from error
        self._saved_tail = tail

    def start(self) -> None:
        """Save now and then while the store is open (`SAVE_S`)."""
        self._saving = asyncio.ensure_future(self._keep())

    async def _keep(self) -> None:
        while True:
            await asyncio.sleep(SAVE_S)
            try:
                await self.save()
            except Exception as error:  # the log is the truth: the index is read again
                log.warning("index not saved now (%s): tried again in %.0fs", error, SAVE_S)

    async def close(self) -> None:
        """Stop saving now and then; save what moved (a failure is logged)."""
        if self._saving is not None:
            self._saving.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._saving
        try:
            await self.save()
        except Exception as error:
            log.warning("index not saved at close: %s", error)
