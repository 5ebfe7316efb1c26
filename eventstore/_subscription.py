"""The catch-up subscription both backends share: read history in chunks, then wait for
the writer's "committed" signal and read again, so the hand-over has no gap and no repeat.

Positions are handed out under the write lock and committed atomically, so the committed
log is always the contiguous range 1..N; reading "from the next position" after each
signal therefore sees every event exactly once. The waiter is cleared *before* each read,
so a commit that lands after the read's snapshot always leaves it set.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

from eventstore.errors import StorageError
from eventstore.model import StoredEvent

__all__ = ["Notifier", "catch_up"]

SUBSCRIPTION_CHUNK = 1_000


class Notifier:
    """Wakes every waiting subscriber, on whatever event loop it runs; callable from any
    thread (the SQLite writer thread calls it after each COMMIT)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[asyncio.Event, asyncio.AbstractEventLoop] = {}

    def register(self) -> asyncio.Event:
        waiter = asyncio.Event()
        with self._lock:
            self._waiters[waiter] = asyncio.get_running_loop()
        return waiter

    def unregister(self, waiter: asyncio.Event) -> None:
        with self._lock:
            self._waiters.pop(waiter, None)

    def notify(self) -> None:
        with self._lock:
            waiters = list(self._waiters.items())
        for waiter, loop in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody waits
                loop.call_soon_threadsafe(waiter.set)


async def catch_up(
    read: Callable[[int, int], Awaitable[list[StoredEvent]]],
    notifier: Notifier,
    from_position: int,
    is_closed: Callable[[], bool],
    poll_seconds: float | None = None,
) -> AsyncIterator[StoredEvent]:
    """Yield every event from `from_position` on, then follow new commits until the
    store closes. `read(position, limit)` reads committed events in global order;
    `poll_seconds` bounds the wait for writers the notifier cannot see (other processes).
    """
    position = max(1, from_position)
    waiter = notifier.register()
    try:
        while not is_closed():
            waiter.clear()
            try:
                batch = await read(position, SUBSCRIPTION_CHUNK)
            except StorageError:
                if is_closed():
                    return
                raise
            if batch:
                for event in batch:
                    yield event
                position = batch[-1].position + 1
                continue
            if poll_seconds is None:
                await waiter.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(waiter.wait(), poll_seconds)
    finally:
        notifier.unregister(waiter)
