"""What this store knows of the log: a prefix of it up to `tail`, with every event id's
position and every stream's positions.

JetStream deduplicates `Nats-Msg-Id` only within its duplicate window, so idempotency is
the store's own: the index is built by reading the log at open and kept current by
catching up before deciding. It is held in memory (a few dozen bytes per event).
"""

from __future__ import annotations

import asyncio

from eventstore.chain import GENESIS
from eventstore.errors import StorageError
from eventstore.jetstream.log import JetStreamLog
from eventstore.model import StoredEvent


class LogIndex:
    """The known prefix of `log`: its `tail` position and hash, `ids` (event id to
    position) and `positions` (stream to its events' positions, in version order)."""

    def __init__(self, log: JetStreamLog) -> None:
        self._log = log
        self._refresh_lock = asyncio.Lock()
        self.tail = 0
        self.tail_hash = GENESIS
        self.ids: dict[str, int] = {}
        self.positions: dict[str, list[int]] = {}

    def learn(self, event: StoredEvent) -> None:
        """Add the event that follows the tail."""
        if event.position != self.tail + 1:
            raise StorageError(
                f"JetStream stream {self._log.layout.name} has a gap: position {event.position} "
                f"follows {self.tail}"
            )
        self.tail = event.position
        self.tail_hash = event.hash
        self.ids[event.event_id] = event.position
        self.positions.setdefault(event.stream, []).append(event.position)

    async def refresh(self) -> None:
        """Catch the index up with the log."""
        async with self._refresh_lock:
            async for event in self._log.scan(self.tail + 1):
                self.learn(event)

    def clear(self) -> None:
        """Forget the ids and positions (the store is closed)."""
        self.ids = {}
        self.positions = {}
