"""The `system` stream as the shell writes it: agents joining, lost or refused, and
messages rejected. One writer per orchestrator, appending one event at a time with the
expected version, so these events never race each other."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from eventstore import EventStore, EventStoreError, StorageError
from orchestrator.core.events import MessageRejected, SystemEvent
from orchestrator.service import journal
from orchestrator.service.health import Health
from orchestrator.service.telemetry import OrchestratorTelemetry

log = logging.getLogger("baton.orchestrator")


class SystemJournal:
    """Appends to the `system` stream; a failed append is logged, never raised."""

    def __init__(
        self,
        store: EventStore,
        obs: OrchestratorTelemetry,
        wall: Callable[[], float],
        health: Health,
    ) -> None:
        self._store = store
        self._health = health
        self._obs = obs
        self._wall = wall
        self._lock = asyncio.Lock()
        self._version = 0

    async def open(self) -> None:
        """Learn the stream's version, which the next append expects."""
        self._version = await self._store.stream_version(journal.SYSTEM_STREAM)

    async def reject(self, subject: str, reason: str, size: int) -> None:
        """Audit a message refused on `subject`."""
        log.warning("rejected message on %s: %s", subject, reason)
        await self.record(MessageRejected(subject, reason, size, self._wall()), "unknown")

    async def record(self, event: SystemEvent, actor: str) -> None:
        async with self._lock:
            version = self._version + 1
            try:
                began_s = time.perf_counter()
                await self._store.append(
                    journal.SYSTEM_STREAM,
                    [journal.system_envelope(version, event, actor)],
                    self._version,
                )
                self._obs.appended("system", time.perf_counter() - began_s)
            except StorageError as exc:
                self._health.storage_failed(f"recording {type(event).__name__}", exc)
                await self._learn_version()
                return
            except EventStoreError:
                log.exception("could not record %s", type(event).__name__)
                await self._learn_version()
                return
            self._health.storage.ok()
            self._version = version

    async def _learn_version(self) -> None:
        """After a failed append: the version the next one expects, if the store says."""
        try:
            self._version = await self._store.stream_version(journal.SYSTEM_STREAM)
        except StorageError as exc:
            self._health.storage_failed("reading the system stream", exc)
