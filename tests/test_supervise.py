"""The supervisor every long-running loop runs under: a crash is logged with its cause,
counted, and the loop restarted with a growing backoff; cancelling or returning ends it."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from bus import supervise
from bus.supervise import LoopHealth, Supervisor


def test_a_crashing_loop_is_logged_counted_and_restarted(caplog: pytest.LogCaptureFixture) -> None:
    reader = InMemoryMetricReader()
    supervisor = Supervisor(
        MeterProvider(metric_readers=[reader]).get_meter("test"), first_backoff_s=0.001
    )
    calls: list[int] = []

    async def body() -> None:
        calls.append(len(calls))
        if len(calls) <= 3:
            raise RuntimeError("boom")
        await asyncio.sleep(3600)  # then it runs, as a healthy loop does

    async def scenario() -> dict[str, LoopHealth]:
        task = asyncio.create_task(supervisor.run("worker", body))
        async with asyncio.timeout(5):
            while len(calls) < 4:
                await asyncio.sleep(0.001)
        health = supervisor.health()
        assert supervisor.all_running()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return health

    with caplog.at_level(logging.ERROR, logger="baton.supervise"):
        health = asyncio.run(scenario())
    assert health == {"worker": LoopHealth(True, 3, "RuntimeError: boom")}
    assert not supervisor.all_running(), "a cancelled loop is not running"
    tracebacks = [r for r in caplog.records if r.exc_info]
    assert len(tracebacks) == 1, "the traceback of one cause is logged once"
    assert len(caplog.records) == 3
    assert all("boom" in r.getMessage() for r in caplog.records)
    metrics = reader.get_metrics_data()
    assert metrics is not None
    [point] = [
        p
        for rm in metrics.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
        if m.name == "baton.loop.crashes"
        for p in m.data.data_points
        if isinstance(p, NumberDataPoint)
    ]
    assert point.value == 3
    assert dict(point.attributes or {}) == {"loop": "worker"}


def test_the_backoff_doubles_while_a_loop_keeps_crashing_and_is_capped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:  # what the supervisor waits, without waiting
        waits.append(seconds)
        if len(waits) == 6:
            raise asyncio.CancelledError

    monkeypatch.setattr(supervise, "asyncio", SimpleNamespace(sleep=sleep))
    supervisor = Supervisor(first_backoff_s=0.01, max_backoff_s=0.04)

    async def body() -> None:
        raise ValueError("again")

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(supervisor.run("flaky", body))
    assert waits == [0.01, 0.02, 0.04, 0.04, 0.04, 0.04]  # doubling, then capped
    assert supervisor.health()["flaky"] == LoopHealth(False, 6, "ValueError: again")


def test_a_loop_that_returns_ends_and_is_not_restarted() -> None:
    supervisor = Supervisor()
    calls: list[None] = []

    async def body() -> None:
        calls.append(None)

    asyncio.run(supervisor.run("once", body))
    assert calls == [None]
    assert supervisor.health() == {"once": LoopHealth(False, 0, "")}
