"""No message can stop the durable inbox (issue 12, finding 1), against a real server:
a body the decoder chokes on is refused, audited and terminated; a message whose handling
keeps failing is dead-lettered after a few deliveries; a poisoned inbox does not stop a
restart; and a loop that crashes anyway is logged, counted and restarted."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest

from agents.runtime import AgentRuntime
from agents.sdk import TaskContext
from bus import subjects
from bus.codec import ENCODING_HEADER, encode
from bus.connection import Bus
from bus.protocol import ReportVerdict, TaskResult
from orchestrator.core.commands import Command, ReportResult
from orchestrator.core.events import (
    AgentLost,
    MessageDeadLettered,
    MessageRejected,
    SystemEvent,
)
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from orchestrator.service.journal import Cause
from orchestrator.service.pipeline import Decision
from orchestrator.service.reports import MAX_DELIVERIES
from orchestrator.service.service import Orchestrator
from tests.cluster import Cluster, cluster

SLOW = WorkflowSpec(
    name="one-slow-step", steps=[StepSpec(id="wait", role="worker", params={"seconds": 1.0})]
)
WORKER = [AgentSpec(role="worker", handler="agents.builtin:sleep", count=1, capacity=2)]
ONE_WORKER = Counter({"worker": 1})
DEPTH = 100_000


def deep_result(run_id: str, agent_id: str, encoding: str) -> bytes:
    """A task result like any other but for its output, arrays nested `DEPTH` deep."""
    fields = {"kind": "task.result", "run_id": run_id, "task_id": "wait", "attempt": 1,
              "lease_token": "x", "agent_id": agent_id, "elapsed_s": 0.1}  # fmt: skip
    if encoding == "json":
        head = msgspec.json.encode(fields)[:-1]
        return head + b',"output":{"a":' + b"[" * DEPTH + b"]" * DEPTH + b"}}"
    body = b"".join(encode(k) + encode(v) for k, v in fields.items())
    nested = b"\x91" * DEPTH + b"\xc0"  # an array in an array ... holding nil
    return bytes([0x80 + len(fields) + 1]) + body + encode("output") + b"\x81\xa1a" + nested


async def system_events(c: Cluster) -> list[SystemEvent]:
    stored = await c.stack.store.read_stream(journal.SYSTEM_STREAM)
    decoded = [journal.decode_any(s) for s in stored]
    return [e for e in decoded if isinstance(e, SystemEvent)]


async def until_system(
    c: Cluster, check: Callable[[list[SystemEvent]], bool], timeout: float = 30.0
) -> list[SystemEvent]:
    """Wait until the `system` stream satisfies `check` (bounded, no fixed sleeps); past
    `timeout`, fail saying what the stream held."""
    deadline = time.monotonic() + timeout
    while not check(events := await system_events(c)):
        if time.monotonic() > deadline:
            held = [(type(e).__name__, getattr(e, "subject", ""), getattr(e, "reason", ""))
                    for e in events]  # fmt: skip
            raise AssertionError(f"the system stream held {held}")
        await asyncio.sleep(0.05)
    return events


def rejected_because(events: Sequence[SystemEvent], reason: str) -> list[MessageRejected]:
    return [e for e in events if isinstance(e, MessageRejected) and reason in e.reason]


def rejected_on(events: Sequence[SystemEvent], subject: str) -> list[MessageRejected]:
    return [e for e in events if isinstance(e, MessageRejected) and e.subject == subject]


async def publish_raw(url: str, subject: str, data: bytes, headers: dict[str, str]) -> None:
    """A durable publish with exactly these bytes and headers, as any NATS client can."""
    nc = await nats.connect(url)
    try:
        await nc.jetstream().publish(subject, data, headers=headers)
    finally:
        await nc.close()


async def inbox_drained(url: str, durable: str = "orchestrator") -> None:
    """Wait until the orchestrator's inbox consumer has nothing pending or unacked."""
    nc = await nats.connect(url)
    try:
        async with asyncio.timeout(30):
            while True:
                info = await nc.jetstream().consumer_info(subjects.INBOX_STREAM, durable)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return
                await asyncio.sleep(0.05)
    finally:
        await nc.close()


def assert_loops_healthy(orchestrator: Orchestrator) -> None:
    health = orchestrator.loops.health()
    assert set(health) == {"inbox", "reports", "tick", "link", "look-again"}
    assert all(h.running and h.crashes == 0 for h in health.values()), health


@pytest.mark.parametrize("encoding", ["json", "msgpack"])
def test_a_body_the_decoder_chokes_on_is_refused_and_the_inbox_keeps_flowing(
    tmp_path: Path, encoding: str
) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            [agent_id] = await c.add_agents(WORKER)
            run_id = await c.orchestrator.start_run(SLOW)
            # on the agent's own inbox subject, for its live run: as the agent could
            inbox = subjects.inbox(run_id, agent_id)
            poison = deep_result(run_id, agent_id, encoding)
            await publish_raw(
                c.stack.nats_url, inbox, poison, {ENCODING_HEADER: encoding, "Nats-Msg-Id": "p"}
            )
            # a well-formed message after it is read (and refused: no such run) only if
            # the inbox still flows
            ghost = TaskResult("no-such-run", "wait", 1, "t", agent_id, {}, 0.1)
            await publish_raw(
                c.stack.nats_url,
                subjects.inbox("no-such-run", agent_id),
                encode(ghost),
                {"Nats-Msg-Id": "after-the-poison"},
            )
            events = await until_system(c, lambda es: bool(rejected_because(es, "no-such-run")))
            final = await c.orchestrator.wait(run_id, timeout=30)
            await inbox_drained(c.stack.nats_url)
            assert_loops_healthy(c.orchestrator)

        assert final.status == "completed"
        assert len(rejected_on(events, inbox)) == 1

    asyncio.run(scenario())


def _fail_deciding(c: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in deciding, that only a poisoned report triggers."""
    pipeline = c.orchestrator._pipeline
    decide = pipeline.decide

    def failing(
        run: str,
        items: Sequence[tuple[Command, Cause]],
        verdicts: list[ReportVerdict] | None = None,
    ) -> Decision | None:
        for command, _ in items:
            if isinstance(command, ReportResult) and command.result.output.get("poison"):
                raise RuntimeError("boom")
        return decide(run, items, verdicts)

    monkeypatch.setattr(pipeline, "decide", failing)


def _fail_blob_check(c: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check that an output's blob references name stored blobs is handling too: the
    blob store failing, for a poisoned report's."""
    reports = c.orchestrator._reports
    unstored = reports.unstored
    assert unstored is not None

    async def failing(payloads: list[Any]) -> str:
        if any("poison" in p for p in payloads):
            raise OSError("the blob store is failing")
        return await unstored(payloads)

    monkeypatch.setattr(reports, "unstored", failing)


@pytest.mark.parametrize(
    ("sabotage", "output", "reason"),
    [
        (_fail_deciding, {"poison": 1}, "RuntimeError: boom"),
        (
            _fail_blob_check,
            {"poison": {"$blob": "sha256:" + "0" * 64, "size": 1}},
            "OSError: the blob store is failing",
        ),
    ],
    ids=["deciding", "blob check"],
)
def test_a_message_whose_handling_keeps_failing_is_dead_lettered(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sabotage: Callable[[Cluster, pytest.MonkeyPatch], None],
    output: dict[str, Any],
    reason: str,
) -> None:
    """Redelivered with a backoff, then dead-lettered; the rest of its batch is decided."""

    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            [agent_id] = await c.add_agents(WORKER)
            run_id = await c.orchestrator.start_run(SLOW)
            await c.until(run_id, lambda s: s.tasks["wait"].status == "running")
            sabotage(c, monkeypatch)
            inbox = subjects.inbox(run_id, agent_id)
            poisoned = encode(TaskResult(run_id, "wait", 1, "x", agent_id, output, 0.1))
            stale = encode(TaskResult(run_id, "wait", 0, "x", agent_id, {}, 0.1))
            # published together, so they are likely fetched and decided as one batch:
            # the stale one is still decided (rejected) however they come
            await publish_raw(c.stack.nats_url, inbox, poisoned, {"Nats-Msg-Id": "poisoned"})
            await publish_raw(c.stack.nats_url, inbox, stale, {"Nats-Msg-Id": "stale"})
            events = await until_system(
                c, lambda es: any(isinstance(e, MessageDeadLettered) for e in es)
            )
            final = await c.orchestrator.wait(run_id, timeout=30)
            await inbox_drained(c.stack.nats_url)
            assert_loops_healthy(c.orchestrator)

        [dead] = [e for e in events if isinstance(e, MessageDeadLettered)]
        assert (dead.subject, dead.deliveries, dead.data) == (inbox, MAX_DELIVERIES, poisoned)
        assert reason in dead.reason
        assert final.status == "completed"
        assert final.rejected == 1, "the stale report of the same batch was still decided"

    asyncio.run(scenario())


def test_an_orchestrator_starts_and_serves_with_poison_waiting_in_its_inbox(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            [agent_id] = await c.add_agents(WORKER)
            await c.orchestrator.stop()  # down; the inbox keeps what agents send meanwhile
            inbox = subjects.inbox("old-run", agent_id)
            for encoding in ("json", "msgpack"):
                poison = deep_result("old-run", agent_id, encoding)
                headers = {ENCODING_HEADER: encoding, "Nats-Msg-Id": encoding}
                await publish_raw(c.stack.nats_url, inbox, poison, headers)
            restarted = Orchestrator(c.stack.bus, c.stack.store, agent_ttl=1.0, tick_s=0.05)
            await restarted.start()
            try:
                await restarted.wait_for_agents(ONE_WORKER, timeout=30)
                run_id = await restarted.start_run(SLOW)
                final = await restarted.wait(run_id, timeout=30)
                events = await until_system(
                    c,
                    lambda es: len(rejected_on(es, inbox)) == 2,
                )
                await inbox_drained(c.stack.nats_url)
                assert_loops_healthy(restarted)
            finally:
                await restarted.stop()
        assert final.status == "completed"
        assert len(events) >= 2

    asyncio.run(scenario())


def test_a_crashed_orchestrator_loop_is_logged_counted_and_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> list[SystemEvent]:
        async with cluster(tmp_path) as c:
            [agent_id] = await c.add_agents(WORKER)
            registry = c.orchestrator._registry
            lapsed = registry.lapsed
            crashes: list[None] = []

            def crash_once(now: float) -> list[tuple[str, float]]:
                if not crashes:
                    crashes.append(None)
                    raise RuntimeError("tick bug")
                return lapsed(now)

            monkeypatch.setattr(registry, "lapsed", crash_once)
            async with asyncio.timeout(10):
                while c.orchestrator.loops.health()["tick"].crashes < 1:
                    await asyncio.sleep(0.02)
            c.kill(agent_id)  # noticed only by the tick loop, so only if it runs again
            events = await until_system(
                c, lambda es: any(isinstance(e, AgentLost) for e in es), timeout=15
            )
            health = c.orchestrator.loops.health()
            assert health["tick"].running
            assert health["tick"].crashes == 1
            assert health["tick"].last_error == "RuntimeError: tick bug"
            return events

    with caplog.at_level(logging.ERROR, logger="baton.supervise"):
        events = asyncio.run(scenario())
    assert any(isinstance(e, AgentLost) for e in events)
    [logged] = [r for r in caplog.records if "tick bug" in r.getMessage()]
    assert logged.exc_info is not None, "the crash is logged with its traceback"


def test_an_agents_heartbeat_loop_survives_a_crash(tmp_path: Path) -> None:
    async def handler(ctx: TaskContext) -> dict[str, Any]:
        return {"done": ctx.task_id}

    async def scenario() -> None:
        async with cluster(tmp_path) as c:
            bus = await Bus.connect(c.stack.nats_url, name="agent-in-process")
            publish = bus.publish
            failures: list[None] = []

            async def flaky(subject: str, payload: bytes, trace: Any = None) -> None:
                if subject.startswith("baton.registry.heartbeat.") and not failures:
                    failures.append(None)
                    raise RuntimeError("heartbeat bug")  # not a BusError: a bug
                await publish(subject, payload, trace)

            bus.publish = flaky  # type: ignore[method-assign]
            runtime = AgentRuntime(
                bus, agent_id="inproc-1", role="worker", handler=handler, heartbeat_s=0.05
            )
            serving = asyncio.create_task(runtime.run())
            try:
                await c.orchestrator.wait_for_agents(ONE_WORKER, timeout=15)
                run_id = await c.orchestrator.start_run(SLOW)
                final = await c.orchestrator.wait(run_id, timeout=30)
                assert final.status == "completed"
                beat = runtime.loops.health()["heartbeat"]
                assert beat.running
                assert beat.crashes == 1
            finally:
                runtime.stop()
                with contextlib.suppress(asyncio.CancelledError):
                    await serving
                await bus.close()

    asyncio.run(scenario())
