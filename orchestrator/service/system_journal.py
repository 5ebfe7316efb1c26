"""The `system` stream as the shell writes it: agents joining, lost or refused, messages
rejected or dead-lettered. One writer per orchestrator, appending one event at a time
with the expected version, so its events never race each other (those of another
orchestrator sharing the log may: an append that finds the stream moved on is made again).

Bad input must not become an amplifier: one event per bad message would let anyone who
can publish fill the log as fast as they can send. So the audit of bad input (rejected
messages, refused agents) is rate-limited per sender and over all senders: token buckets
let a burst through one by one, and past it the messages are counted, and recorded as
one `MessagesSuppressed` per sender every `summary_s`, by `flush` (which the tick calls).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from eventstore import ConcurrencyError, EventStore, EventStoreError, StorageError
from orchestrator.core.events import (
    AgentRefused,
    MessageDeadLettered,
    MessageRejected,
    MessagesSuppressed,
    SystemEvent,
)
from orchestrator.service import journal
from orchestrator.service.bounded import Lru
from orchestrator.service.health import Health
from orchestrator.service.telemetry import OrchestratorTelemetry

log = logging.getLogger("baton.orchestrator")

CONFLICT_TRIES = 3
"""How often an append to the `system` stream is made again on another orchestrator's."""
MAX_REASON = 1000
"""Characters of a rejection's reason kept in its record."""
DEAD_LETTER_BYTES = 64 * 1024
"""Of a dead-lettered message, this much is kept in its record."""
OTHERS = "*"
"""The sender of the counts of senders no longer tracked (there were too many)."""
_SENDER_AT = {"inbox": 3, "report": 3, "bids": 3, "memory": 2, "registry": 3}
"""For subjects `baton.<kind>...` that name their sender: where the sender's token is."""


@dataclass(frozen=True)
class AuditLimits:
    """How much bad input from one sender is audited one message at a time."""

    burst: int = 20
    """Events recorded one by one at once, at most, per sender."""
    per_s: float = 1.0
    """Events per second per sender after the burst."""
    summary_s: float = 2.0
    """How often the counts of a sender over its rate are recorded."""
    senders: int = 10_000
    """Senders tracked at once (others' counts are merged under `OTHERS`)."""
    all_burst: int = 200
    """Events recorded one by one at once, at most, over all senders (many senders, or
    one cycling through many names, are bounded too)."""
    all_per_s: float = 20.0
    """Events per second over all senders after that burst."""


AUDIT_LIMITS = AuditLimits()


def sender_of(subject: str) -> str:
    """Who sent a message on `subject`, as far as the subject says (the agent id of an
    agent's own subject: the server lets only that agent publish there), else the
    subject itself."""
    parts = subject.split(".")
    at = _SENDER_AT.get(parts[1]) if len(parts) == 4 and parts[0] == "baton" else None
    return parts[at] if at is not None and parts[at] else subject


@dataclass
class _Budget:
    """One sender's token bucket and what it sent over it since the last summary."""

    tokens: float
    refilled: float
    rejected: int = 0
    refused: int = 0
    size: int = 0
    reason: str = ""
    since: float = 0.0
    """Wall time of the first message counted since the last summary."""
    counting: float = 0.0
    """Monotonic time of the same."""

    def take(self, now: float, burst: int, per_s: float) -> bool:
        """Refill for the time since the last take, then take one token if there is one."""
        self.tokens = min(float(burst), self.tokens + (now - self.refilled) * per_s)
        self.refilled = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    @property
    def counted(self) -> bool:
        return bool(self.rejected or self.refused)

    def merge(self, other: _Budget) -> None:
        if not self.counted or other.since < self.since:
            self.since, self.counting = other.since, other.counting
        self.rejected += other.rejected
        self.refused += other.refused
        self.size += other.size
        self.reason = other.reason or self.reason


class SystemJournal:
    """Appends to the `system` stream; a failed append is logged, never raised."""

    def __init__(
        self,
        store: EventStore,
        obs: OrchestratorTelemetry,
        wall: Callable[[], float],
        health: Health,
        clock: Callable[[], float] = time.monotonic,
        limits: AuditLimits | None = None,
    ) -> None:
        self._store = store
        self._health = health
        self._obs = obs
        self._wall = wall
        self._clock = clock
        self.limits = limits or AUDIT_LIMITS
        self._budgets: Lru[str, _Budget] = Lru(self.limits.senders)
        self._others = _Budget(0.0, 0.0)
        self._all = _Budget(float(self.limits.all_burst), clock())
        self._lock = asyncio.Lock()
        self._version = 0

    async def open(self) -> None:
        """Learn the stream's version, which the next append expects."""
        self._version = await self._store.stream_version(journal.SYSTEM_STREAM)

    def senders_tracked(self) -> int:
        """How many senders' audit budgets are kept (at most `limits.senders`)."""
        return len(self._budgets)

    async def reject(self, subject: str, reason: str, size: int, sender: str = "") -> None:
        """Audit a message refused on `subject` (within `sender`'s audit rate; the sender
        is read from the subject unless given)."""
        reason = reason[:MAX_REASON]  # it quotes the message, which may be huge
        if self._admit(sender or sender_of(subject), reason, size, refused=False):
            log.warning("rejected message on %s: %s", subject, reason)
            await self.record(MessageRejected(subject, reason, size, self._wall()), "unknown")

    async def refuse(self, event: AgentRefused) -> None:
        """Audit an agent refused (within its audit rate)."""
        if self._admit(event.agent_id, event.reason, 0, refused=True):
            log.warning("refused agent %s: %s", event.agent_id, event.reason)
            await self.record(event, event.agent_id)

    async def dead_letter(self, subject: str, reason: str, deliveries: int, data: bytes) -> bool:
        """Record a message given up on; True once the record is durable."""
        log.error("dead letter from %s after %d deliveries: %s", subject, deliveries, reason)
        event = MessageDeadLettered(
            subject, reason, deliveries, len(data), data[:DEAD_LETTER_BYTES], self._wall()
        )
        return await self.record(event, "unknown")

    def _admit(self, sender: str, reason: str, size: int, *, refused: bool) -> bool:
        """Take a token of `sender`'s bucket and of the bucket of all senders; without
        both, count the message in `sender`'s budget."""
        now, limits = self._clock(), self.limits
        budget = self._budgets.get(sender)
        if budget is None:
            budget = _Budget(float(limits.burst), now)
            for _, forgotten in self._budgets.set(sender, budget):
                if forgotten.counted:
                    self._others.merge(forgotten)
        else:
            self._budgets.set(sender, budget)  # the most recent again
        if budget.take(now, limits.burst, limits.per_s) and self._all.take(
            now, limits.all_burst, limits.all_per_s
        ):
            return True
        if not budget.counted:
            budget.since, budget.counting = self._wall(), now
        budget.refused += int(refused)
        budget.rejected += int(not refused)
        budget.size += size
        budget.reason = reason
        return False

    async def flush(self, everything: bool = False) -> None:
        """Record the counts of each sender over its rate whose last summary is
        `summary_s` old (of every such sender when `everything`)."""
        now = self._clock()
        due = [
            (sender, budget)
            for sender, budget in [*self._budgets.items(), (OTHERS, self._others)]
            if budget.counted and (everything or now - budget.counting >= self.limits.summary_s)
        ]
        for sender, budget in due:
            summary = MessagesSuppressed(
                sender, budget.rejected, budget.refused, budget.size, budget.reason,
                budget.since, self._wall(),
            )  # fmt: skip
            budget.rejected = budget.refused = budget.size = 0
            log.warning(
                "%d bad messages and %d refused joins from %s over its audit rate (last: %s)",
                summary.rejected, summary.refused, sender, summary.reason,
            )  # fmt: skip
            await self.record(summary, "unknown")

    async def record(self, event: SystemEvent, actor: str) -> bool:
        """Append `event`; True once it is durable (a failure is logged). Another
        orchestrator sharing the log may have appended meanwhile: then the append is made
        again on the stream's new version (a few times)."""
        async with self._lock:
            for _ in range(CONFLICT_TRIES - 1):
                try:
                    return await self._append(event, actor)
                except ConcurrencyError:
                    await self._learn_version()
            try:
                return await self._append(event, actor)
            except ConcurrencyError:
                log.warning(
                    "could not record %s: the system stream kept moving", type(event).__name__
                )
                await self._learn_version()
                return False

    async def _append(self, event: SystemEvent, actor: str) -> bool:
        """One try of `record` (`ConcurrencyError` raised, any other failure logged)."""
        version = self._version + 1
        try:
            began_s = time.perf_counter()
            await self._store.append(
                journal.SYSTEM_STREAM,
                [journal.system_envelope(version, event, actor)],
                self._version,
            )
            self._obs.appended("system", time.perf_counter() - began_s)
        except ConcurrencyError:
            raise
        except StorageError as exc:
            self._health.storage_failed(f"recording {type(event).__name__}", exc)
            await self._learn_version()
            return False
        except EventStoreError:
            log.exception("could not record %s", type(event).__name__)
            await self._learn_version()
            return False
        self._health.storage.ok()
        self._version = version
        return True

    async def _learn_version(self) -> None:
        """After a failed append: the version the next one expects, if the store says."""
        try:
            self._version = await self._store.stream_version(journal.SYSTEM_STREAM)
        except StorageError as exc:
            self._health.storage_failed("reading the system stream", exc)
        except EventStoreError:
            log.exception("could not read the system stream's version")
