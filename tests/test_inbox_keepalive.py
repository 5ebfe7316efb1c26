"""The durable inbox's ack wait, on a real server: a message pulled by an orchestrator
that died comes back to another within seconds; one an orchestrator is still working on
is kept alive, but not for ever; the intake pulls no further ahead than it decides."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from bus import inbox, subjects
from bus.connection import Bus
from bus.server import EmbeddedNats
from orchestrator.service import intake as intake_module
from orchestrator.service.intake import Intake

DURABLE = "keepalive-test"


@asynccontextmanager
async def two_orchestrators(tmp_path: Path, messages: int = 1) -> AsyncIterator[tuple[Bus, Bus]]:
    """Two connections binding one inbox consumer, and `messages` agent reports in it."""
    server = EmbeddedNats(tmp_path)
    url = await server.start()
    first = await Bus.connect(url, name="first")
    second = await Bus.connect(url, name="second")
    try:
        await first.ensure_inbox()
        for n in range(messages):
            await first.publish_durable(f"baton.inbox.run-1.agent-1.{n}", b"\x80", f"m{n}")
        yield first, second
    finally:
        await first.close()
        await second.close()
        server.stop()


async def _pulled_by(consumer: inbox.InboxConsumer, deadline: float) -> float | None:
    """When (`time.monotonic()`) `consumer` pulls a message, None if none came by
    `deadline`."""
    while (left := deadline - time.monotonic()) > 0:
        if await consumer.fetch(1, timeout=min(0.5, left)):
            return time.monotonic()
    return None


def test_a_message_pulled_by_an_orchestrator_that_died_comes_back_within_the_ack_wait(
    tmp_path: Path,
) -> None:
    """Redelivered once the ack wait runs out, and that is seconds: a run waits no longer
    for the reports its killed orchestrator had pulled."""

    async def scenario() -> tuple[float | None, float | None]:
        async with two_orchestrators(tmp_path) as (first, second):
            dead = await first.inbox_consumer(DURABLE)
            assert len(await dead.fetch(1, timeout=2.0)) == 1
            pulled = time.monotonic()
            await first.close()  # gone without an answer, and with no keep-alive
            alive = await second.inbox_consumer(DURABLE)
            early = await _pulled_by(alive, pulled + inbox.ACK_WAIT_S - 1.0)
            late = await _pulled_by(alive, pulled + inbox.ACK_WAIT_S + 4.0)
            return early, late and late - pulled

    early, waited = asyncio.run(scenario())
    assert early is None, "redelivered before the ack wait ran out"
    assert waited is not None, f"not redelivered within {inbox.ACK_WAIT_S + 4:g}s of its pull"
    assert waited <= 10.0, f"a dead orchestrator's message waited {waited:.1f}s"


def test_a_message_its_orchestrator_works_on_is_kept_alive_but_not_for_ever(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(inbox, "KEEP_AT_MOST_S", 2 * inbox.ACK_WAIT_S)

    async def scenario() -> tuple[float | None, float | None, int]:
        async with two_orchestrators(tmp_path) as (first, second):
            holder = await first.inbox_consumer(DURABLE)
            assert len(await holder.fetch(1, timeout=2.0)) == 1
            assert holder.held == 1

            async def keep() -> None:
                while True:
                    await holder.keep_alive()
                    await asyncio.sleep(0.1)

            pulled = time.monotonic()
            keeping = asyncio.create_task(keep())
            other = await second.inbox_consumer(DURABLE)
            while_kept = await _pulled_by(other, pulled + inbox.KEEP_AT_MOST_S - 1)
            let_go = await _pulled_by(other, pulled + inbox.KEEP_AT_MOST_S + inbox.ACK_WAIT_S + 4)
            keeping.cancel()
            return while_kept, let_go, holder.held

    while_kept, let_go, held = asyncio.run(scenario())
    assert while_kept is None, "redelivered while its orchestrator kept it alive"
    assert let_go is not None, "never redelivered after its keeping ended"
    assert held == 0, "still held after KEEP_AT_MOST_S"


def test_an_answered_message_is_no_longer_kept(tmp_path: Path) -> None:
    async def scenario() -> list[int]:
        async with two_orchestrators(tmp_path, messages=3) as (first, _):
            consumer = await first.inbox_consumer(DURABLE)
            pulled = await consumer.fetch(3, timeout=2.0)
            held = [consumer.held]
            await pulled[0].ack()
            await pulled[1].nak(0.5)
            await pulled[2].term()
            return [*held, consumer.held]

    assert asyncio.run(scenario()) == [3, 0]


def test_an_inbox_consumer_an_older_baton_made_gets_the_short_ack_wait(tmp_path: Path) -> None:
    async def scenario() -> float:
        async with two_orchestrators(tmp_path) as (first, _):
            js = first._nc.jetstream()
            older = ConsumerConfig(
                durable_name=DURABLE,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=30,
                max_ack_pending=50_000,
            )
            await js.add_consumer(subjects.INBOX_STREAM, config=older)
            await first.inbox_consumer(DURABLE)
            info = await js.consumer_info(subjects.INBOX_STREAM, DURABLE)
            return float(info.config.ack_wait or 0)

    assert asyncio.run(scenario()) == inbox.ACK_WAIT_S


def test_the_intake_pulls_no_further_ahead_than_its_queue_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing takes from the queue: the intake stops pulling once it holds its bound,
    and the rest stays in the inbox, for any orchestrator to pull."""
    monkeypatch.setattr(intake_module, "QUEUED_AT_MOST", 2)

    async def scenario() -> tuple[int, int]:
        async with two_orchestrators(tmp_path, messages=10) as (first, _):
            consumer = await first.inbox_consumer(DURABLE)
            queue = Intake(consumer, fetch_batch=2)
            pulling = asyncio.create_task(queue.fetch_durable())
            await asyncio.sleep(1.5)
            js = first._nc.jetstream()
            info = await js.consumer_info(subjects.INBOX_STREAM, DURABLE)
            seen = int(info.num_pending or 0), consumer.held
            await queue.close()
            await pulling
            return seen

    waiting, held = asyncio.run(scenario())
    assert waiting == 6, "pulled past the bound of 2 batches of 2"
    assert held == 4
