"""What this store knows of the log: a prefix of it up to `tail`, with every event id's
position, and the positions of every stream's, correlation id's, actor's and type's
events.

JetStream deduplicates `Nats-Msg-Id` only within its duplicate window, so idempotency is
the store's own: the index is built by reading the log at open and kept current by
catching up before deciding. Queries use it too: a query by run, actor or type reads only
the positions it names instead of the whole log. It is held in memory (a few dozen bytes
per event; each lookup list costs 8 bytes per event).
"""

from __future__ import annotations

import asyncio
from array import array

from eventstore.chain import GENESIS
from eventstore.errors import StorageError
from eventstore.jetstream.log import JetStreamLog
from eventstore.model import StoredEvent


def _note(lookup: dict[str, array[int]], key: str, position: int) -> None:
    found = lookup.get(key)
    if found is None:
        lookup[key] = array("q", (position,))
    else:
        found.append(position)


class LogIndex:
    """The known prefix of `log`: its `tail` position and hash, `ids` (event id to
    position), `positions` (stream to its events' positions, in version order) and the
    ascending positions of each correlation id's, actor's and type's events."""

    def __init__(self, log: JetStreamLog) -> None:
        self._log = log
        self._refresh_lock = asyncio.Lock()
        self.tail = 0
        self.tail_hash = GENESIS
        self.ids: dict[str, int] = {}
        self.positions: dict[str, list[int]] = {}
        self.correlations: dict[str, array[int]] = {}
        self.actors: dict[str, array[int]] = {}
        self.types: dict[str, array[int]] = {}

    def learn(self, event: StoredEvent) -> None:
        """Add the event that follows the tail. An event already learned is ignored: a
        catch-up (a query's) may read a batch this store appended before its writer does."""
        if event.position <= self.tail and self.ids.get(event.event_id) == event.position:
            return
        if event.position != self.tail + 1:
            raise StorageError(
                f"JetStream stream {self._log.layout.name} has a gap: position {event.position} "
                f"follows {self.tail}"
            )
        self.tail = event.position
        self.tail_hash = event.hash
        self.ids[event.event_id] = event.position
        self.positions.setdefault(event.stream, []).append(event.position)
        _note(self.correlations, event.correlation_id, event.position)
        _note(self.actors, event.actor, event.position)
        _note(self.types, event.type, event.position)

    async def refresh(self) -> None:
        """Catch the index up with the log."""
        async with self._refresh_lock:
            async for event in self._log.scan(self.tail + 1):
                self.learn(event)

    def clear(self) -> None:
        """Forget the ids and positions (the store is closed)."""
        self.ids = {}
        self.positions = {}
        self.correlations = {}
        self.actors = {}
        self.types = {}
