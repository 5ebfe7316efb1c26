"""Projections: read models folded from the log, whose checkpoint is committed in the same
transaction as their output.

A `Projection` is a name and a deterministic `apply(event, view)`: it reads current rows
through the view and stages upserts and deletes on it, nothing else. One that folds many
events into one row may also have `flush(view)`, called once after each batch's last
`apply`, to stage the rows the batch changed once rather than after every event. The `Projector`
follows `store.subscribe(checkpoint + 1)`, applies a batch of events, then hands the
staged rows *and* the batch's last position to `ProjectionStore.commit` in one atomic
step. A crash between two batches therefore leaves either both the output and the
checkpoint of a batch or neither, and a restarted projector resumes at the event after
the stored checkpoint: no event applied twice, none skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Collection, Mapping
from typing import Protocol

from eventstore.errors import CheckpointConflictError, InvalidEventError, StorageError
from eventstore.model import StoredEvent
from eventstore.store import EventStore, ProjectionStore

__all__ = ["Projection", "ProjectionStore", "ProjectionView", "Projector"]


class HeldRows:
    """Projections' rows and checkpoints held in dicts: the memory store's port, and the
    JetStream store's between its saves. `apply` is the fenced commit both make."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, bytes]] = {}
        self.checkpoints: dict[str, int] = {}

    def apply(
        self,
        name: str,
        expected_checkpoint: int,
        new_checkpoint: int,
        upserts: Mapping[str, bytes],
        deletes: Collection[str],
    ) -> None:
        """Change the rows and move the checkpoint, or raise `CheckpointConflictError`
        (changing nothing) if the checkpoint is not `expected_checkpoint`."""
        actual = self.checkpoints.get(name, 0)
        if actual != expected_checkpoint:
            raise CheckpointConflictError(name, expected_checkpoint, actual)
        rows = self.rows.setdefault(name, {})
        rows.update(upserts)
        for key in deletes:
            rows.pop(key, None)
        self.checkpoints[name] = new_checkpoint

    def checkpoint(self, name: str) -> int:
        return self.checkpoints.get(name, 0)

    def get(self, name: str, key: str) -> bytes | None:
        return self.rows.get(name, {}).get(key)

    def items(self, name: str, prefix: str) -> list[tuple[str, bytes]]:
        rows = self.rows.get(name, {})
        return sorted((k, v) for k, v in rows.items() if k.startswith(prefix))


class ProjectionView:
    """What `apply` sees: committed rows overlaid with the changes staged in this batch."""

    def __init__(self, port: ProjectionStore, name: str) -> None:
        self._port = port
        self._name = name
        self._staged: dict[str, bytes | None] = {}  # None: deleted in this batch
        self._cache: dict[str, bytes | None] = {}

    async def get(self, key: str) -> bytes | None:
        """The row's current value, including this batch's changes; `None` if absent."""
        if key in self._staged:
            return self._staged[key]
        if key not in self._cache:
            self._cache[key] = await self._port.get(self._name, key)
        return self._cache[key]

    def put(self, key: str, value: bytes) -> None:
        """Stage an upsert."""
        if not isinstance(key, str) or not isinstance(value, bytes):
            raise InvalidEventError("projection rows are str keys with bytes values")
        self._staged[key] = value

    def delete(self, key: str) -> None:
        """Stage a delete."""
        self._staged[key] = None

    def changes(self) -> tuple[dict[str, bytes], list[str]]:
        upserts = {k: v for k, v in self._staged.items() if v is not None}
        deletes = [k for k, v in self._staged.items() if v is None]
        return upserts, deletes

    def committed(self) -> None:
        """The staged changes are stored now: they become the cached committed values."""
        self._cache.update(self._staged)
        self._staged = {}


class Projection(Protocol):
    """A read model: `apply` must depend only on the event and the view's values."""

    @property
    def name(self) -> str: ...

    async def apply(self, event: StoredEvent, view: ProjectionView) -> None:
        """Stage this event's effect on the rows through `view.put` / `view.delete`."""
        ...


class Projector:
    """Runs one projection: follows the log from its checkpoint and commits each batch's
    output together with the batch's last position."""

    def __init__(
        self,
        store: EventStore,
        port: ProjectionStore,
        projection: Projection,
        *,
        batch_size: int = 500,
        pace_s: float = 0.0,
    ) -> None:
        """`pace_s`: after a batch smaller than `batch_size` (it caught up with the log),
        wait this long before the next one, so the events appended meanwhile are
        committed together (one commit per pause, not one per append, while the log is
        busy); 0 commits each as it comes."""
        if batch_size < 1:
            raise InvalidEventError("batch_size must be >= 1")
        if not pace_s >= 0:
            raise InvalidEventError("pace_s must be >= 0")
        self._store = store
        self._port = port
        self._projection = projection
        self._batch_size = batch_size
        self._pace_s = pace_s
        self.position = 0
        """The checkpoint this projector last read or committed."""

    async def run(self, *, until_position: int | None = None) -> int:
        """Apply events in batches until `until_position` is committed (forever if
        `None`, until the store closes or the task is cancelled); returns the checkpoint.
        """
        name = self._projection.name
        self.position = await self._port.checkpoint(name)
        if until_position is not None and self.position >= until_position:
            return self.position
        queue: asyncio.Queue[StoredEvent | None] = asyncio.Queue(maxsize=2 * self._batch_size)
        pump = asyncio.get_running_loop().create_task(self._pump(queue, self.position + 1))
        view = ProjectionView(self._port, name)
        try:
            while True:
                event = await queue.get()
                if event is None:
                    break
                batch = [event]
                while len(batch) < self._batch_size and not queue.empty():
                    item = queue.get_nowait()
                    if item is None:
                        queue.put_nowait(None)  # seen again after this batch
                        break
                    batch.append(item)
                if until_position is not None:
                    batch = [e for e in batch if e.position <= until_position]
                if batch:
                    await self._commit(view, batch)
                if until_position is not None and self.position >= until_position:
                    break
                if self._pace_s and len(batch) < self._batch_size:
                    await asyncio.sleep(self._pace_s)
        finally:
            pump.cancel()
            # The subscription's own failure (not our cancelling it) reaches the caller.
            with contextlib.suppress(asyncio.CancelledError):
                await pump
        return self.position

    async def _pump(self, queue: asyncio.Queue[StoredEvent | None], start: int) -> None:
        # `None` tells the runner the subscription ended (the store closed, or it failed:
        # then awaiting this task raises the failure). A cancelled pump has no reader.
        try:
            async for event in self._store.subscribe(start):
                await queue.put(event)
        except Exception:
            await queue.put(None)
            raise
        await queue.put(None)

    async def _commit(self, view: ProjectionView, batch: list[StoredEvent]) -> None:
        for event in batch:
            if event.position != self.position + 1:
                raise StorageError(
                    f"projection {self._projection.name!r}: expected position "
                    f"{self.position + 1}, the log gave {event.position}"
                )
            await self._projection.apply(event, view)
            self.position = event.position
        flush = getattr(self._projection, "flush", None)
        if flush is not None:
            await flush(view)
        upserts, deletes = view.changes()
        expected = batch[0].position - 1
        try:
            await self._port.commit(
                self._projection.name, expected, self.position, upserts, deletes
            )
        except BaseException:
            self.position = expected
            raise
        view.committed()


def check_projection_name(name: object) -> str:
    """Return `name` if it is a valid projection name, else raise `InvalidEventError`."""
    if not isinstance(name, str) or not name or not name.isprintable():
        raise InvalidEventError(f"projection name must be a printable string, got {name!r}")
    return name


def check_commit(
    name: str,
    expected_checkpoint: int,
    new_checkpoint: int,
    upserts: Mapping[str, bytes],
    deletes: Collection[str],
) -> None:
    """Refuse a malformed projection commit before it reaches storage."""
    check_projection_name(name)
    for label, value in (("expected", expected_checkpoint), ("new", new_checkpoint)):
        if type(value) is not int or value < 0:
            raise InvalidEventError(f"{label} checkpoint must be an integer >= 0: {value!r}")
    if new_checkpoint <= expected_checkpoint:
        raise InvalidEventError("a commit must move the checkpoint forward")
    for key, row in upserts.items():
        if not isinstance(key, str) or not isinstance(row, bytes):
            raise InvalidEventError("projection rows are str keys with bytes values")
    for key in deletes:
        if not isinstance(key, str):
            raise InvalidEventError("projection keys are str")
        if key in upserts:
            raise InvalidEventError(f"key {key!r} is both upserted and deleted")
