"""What the orchestrator takes in from agents, from two sources, handed on in batches.

Agents send an outcome as a request on core NATS, and into the durable JetStream inbox
when nobody answers it (see `agents.outbox`). The intake queues both kinds as they come
and hands the service everything that is waiting in one batch, so one decision and one
append serve many reports. Inbox messages are acknowledged once their events are
durable; `Reports` remembers which reports are already in the log, so a report that
arrives both ways is acknowledged without being decided again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from typing import NamedTuple

from bus.connection import InboxConsumer, Incoming
from bus.errors import BusError
from bus.protocol import ReportVerdict, TaskFailure, TaskResult

log = logging.getLogger("baton.orchestrator.intake")

CLOSE_WAIT_S = 1.5
"""How long closing waits for the inbox fetch in progress (it ends within 1 s)."""
FETCH_PAUSE_S = 0.25
"""Between two fetches of the durable inbox that failed."""
QUEUED_AT_MOST = 4
"""The durable inbox is not pulled while this many fetch batches wait in the queue: a
pulled message is kept alive while it waits (`bus.inbox`), so pulling far ahead of the
decisions would only cost keeping it."""
FULL_PAUSE_S = 0.02
"""Between two looks at a queue too full to pull more."""
OUTAGE_SAID_S = 20.0
"""A failing inbox fetch is said at once only after this long; shorter (a leader
failover of the inbox, a reconnect) it leaves one line when fetches work again."""


class Delivery(NamedTuple):
    """One message from an agent, and whether it is the durable (ackable) copy."""

    incoming: Incoming
    durable: bool


def report_id(report: TaskResult | TaskFailure, sender: str) -> str:
    """Identity of one report, the same for both copies: run, task, attempt, kind, and who
    sent it under which lease, so a forged or mistaken copy never masks the real one."""
    kind = "result" if isinstance(report, TaskResult) else "failure"
    return f"{report.run_id}:{report.task_id}:{report.attempt}:{kind}:{sender}:{report.lease_token}"


class Recorded:
    """Ids of reports whose events are durable, the newest `limit` of them, and none of a
    run that was forgotten (its reports are refused before they are looked up here).
    Forgetting an old one costs a decision and no state: the core finds its second copy a
    duplicate (or, if its attempt was retried since, a stale report, which it records as
    rejected)."""

    def __init__(self, limit: int = 50_000) -> None:
        self._ids: OrderedDict[str, tuple[str, ReportVerdict | None]] = OrderedDict()
        """Report id → its run and what was made of it, oldest first."""
        self._limit = limit
        self._of_run: dict[str, set[str]] = {}

    def __contains__(self, report: object) -> bool:
        return report in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def verdict(self, report: str) -> ReportVerdict | None:
        """What was made of a recorded report (None: not known, or not said)."""
        known = self._ids.get(report)
        return known[1] if known is not None else None

    def update(
        self, run_id: str, ids: list[str], verdicts: list[ReportVerdict | None] | None = None
    ) -> None:
        """Note the reports `ids` of `run_id` as durable, each with its verdict."""
        of_run = self._of_run.setdefault(run_id, set())
        for n, rid in enumerate(ids):
            self._ids[rid] = (run_id, verdicts[n] if verdicts is not None else None)
            of_run.add(rid)
        while len(self._ids) > self._limit:
            rid, (run, _) = self._ids.popitem(last=False)
            self._of_run[run].discard(rid)
            if not self._of_run[run]:
                del self._of_run[run]

    def forget(self, run_id: str) -> None:
        """Drop the ids of a run the orchestrator no longer serves."""
        for rid in self._of_run.pop(run_id, ()):
            self._ids.pop(rid, None)


class Intake:
    """A queue fed by the durable inbox consumer and by the fast report subscription."""

    def __init__(self, consumer: InboxConsumer, fetch_batch: int) -> None:
        self._consumer = consumer
        self._fetch_batch = fetch_batch
        self._queue: asyncio.Queue[Delivery] = asyncio.Queue()
        self._closed = False
        self._pulling = asyncio.Event()

    async def close(self) -> None:
        """Stop pulling and hand back what this orchestrator took but did not handle: the
        fetch in progress ends (within its 1 s), what it and the queue still hold is
        nak'ed for redelivery at once (else the next orchestrator would wait out the
        inbox's ack wait for it), and the consumer is unbound, so the server delivers
        nothing more to a pull of this one."""
        self._closed = True
        if self._pulling.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    while self._pulling.is_set():
                        await asyncio.sleep(0.01)
        while not self._queue.empty():
            delivery = self._queue.get_nowait()
            if delivery.durable:
                await _hand_back(delivery.incoming)
        await self._consumer.close()

    async def offer_fast(self, incoming: Incoming) -> None:
        """Subscription handler for the fast copies."""
        self._queue.put_nowait(Delivery(incoming, False))

    async def fetch_durable(self) -> None:
        """Pull the durable inbox until closed, queueing what comes, and keep alive what
        is pulled and not answered yet (see `bus.inbox`). A message that does not decode
        is queued like any other (to be refused), so no message can stop it."""
        self._pulling.set()
        failing_since: float | None = None
        said = False
        try:
            while not self._closed:
                await self._consumer.keep_alive()
                if self._queue.qsize() >= QUEUED_AT_MOST * self._fetch_batch:
                    await asyncio.sleep(FULL_PAUSE_S)  # what it pulls waits: its holder lives
                    continue
                try:
                    batch = await self._consumer.fetch(self._fetch_batch, timeout=1.0)
                except BusError as exc:
                    failing_since = failing_since or time.monotonic()
                    if not said and time.monotonic() - failing_since >= OUTAGE_SAID_S:
                        said = True
                        log.warning("%s, for %gs; retrying", exc, OUTAGE_SAID_S)
                    await asyncio.sleep(FETCH_PAUSE_S)
                    continue
                if failing_since is not None:
                    log.warning(
                        "durable inbox: leader failover or reconnect, fetches paused %.2fs, "
                        "resumed", time.monotonic() - failing_since,
                    )  # fmt: skip
                    failing_since, said = None, False
                for incoming in batch:
                    if self._closed:
                        await _hand_back(incoming)
                    else:
                        self._queue.put_nowait(Delivery(incoming, True))
        finally:
            self._pulling.clear()

    async def next_batch(self) -> list[Delivery]:
        """Everything queued, waiting for at least one delivery."""
        batch = [await self._queue.get()]
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch


async def _hand_back(incoming: Incoming) -> None:
    with contextlib.suppress(Exception):  # the bus gone: the ack wait redelivers it
        await incoming.nak(0)
