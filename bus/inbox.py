"""The orchestrator's side of the durable inbox: batches pulled from one durable consumer
that every orchestrator of the bus binds, and the messages it holds kept alive.

A message pulled and not yet acknowledged, refused or handed back is redelivered when
the consumer's ack wait runs out. That wait is what a message pulled by an orchestrator
that then died (SIGKILL, a lost machine) costs: its run waits that long before another
orchestrator, or the same one restarted, gets it. So the wait is short (`ACK_WAIT_S`),
and a live orchestrator tells the server it is still working on each message it holds
longer than `KEEP_AFTER_S` (JetStream's "in progress"), up to `KEEP_AT_MOST_S`: a
message held longer than that is left to be redelivered, as if its holder were gone.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from bus.errors import BusError
from bus.incoming import Incoming

ACK_WAIT_S = 5.0
"""How long a pulled message stays with the orchestrator that pulled it, unanswered."""
KEEP_AFTER_S = 2.0
"""A message held this long (since it was pulled, or last kept) is said in progress."""
LOOK_EVERY_S = 0.5
"""How often the held messages are looked over (the intake asks far more often)."""
KEEP_AT_MOST_S = 120.0
"""A message held this long is no longer kept alive: something lost it."""


class Held(Incoming):
    """A pulled inbox message: forgotten by its consumer once answered."""

    __slots__ = ("_consumer", "kept", "pulled")

    def __init__(self, msg: Msg, consumer: InboxConsumer, now: float) -> None:
        super().__init__(msg)
        self._consumer = consumer
        self.pulled = now
        self.kept = now

    async def ack(self) -> None:
        self._consumer.settled(self)
        await super().ack()

    async def nak(self, delay: float) -> None:
        self._consumer.settled(self)
        await super().nak(delay)

    async def term(self) -> None:
        self._consumer.settled(self)
        await super().term()


class InboxConsumer:
    """Batches of durable inbox messages; a message is redelivered until acked or termed."""

    def __init__(self, sub: Any) -> None:
        self._sub = sub
        self._held: dict[int, Held] = {}
        self._looked = 0.0

    @property
    def held(self) -> int:
        """How many pulled messages are not answered yet."""
        return len(self._held)

    async def close(self) -> None:
        """Unbind: a pull still waiting on the server gets nothing more (the durable
        consumer stays, for the next orchestrator)."""
        with contextlib.suppress(Exception):
            await self._sub.unsubscribe()

    async def fetch(self, batch: int, timeout: float) -> list[Held]:
        """Up to `batch` messages, returning as soon as any are there; [] after `timeout`."""
        try:
            msgs = await self._sub.fetch(batch, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except nats.errors.Error as exc:
            raise BusError(f"inbox fetch failed: {exc}") from exc
        now = time.monotonic()
        pulled = [Held(m, self, now) for m in msgs]
        self._held.update((id(m), m) for m in pulled)
        return pulled

    def settled(self, message: Held) -> None:
        """`message` was answered: no longer this consumer's to keep."""
        self._held.pop(id(message), None)

    async def keep_alive(self) -> None:
        """Say "in progress" for each message held `KEEP_AFTER_S` since it was pulled or
        last kept; let go of those held `KEEP_AT_MOST_S`. A message that cannot be said
        in progress (the server away) is redelivered after the ack wait, which costs a
        second decision of it and nothing else. Looks at most every `LOOK_EVERY_S`."""
        now = time.monotonic()
        if now - self._looked < LOOK_EVERY_S:
            return
        self._looked = now
        for key, message in list(self._held.items()):
            if now - message.pulled >= KEEP_AT_MOST_S:
                del self._held[key]
            elif now - message.kept >= KEEP_AFTER_S:
                message.kept = now
                with contextlib.suppress(Exception):
                    await message.in_progress()
