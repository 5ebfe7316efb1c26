"""Baton processes run on uvloop when it is installed, asyncio's loop when told to."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from bus import loop


async def _loop_type() -> type[asyncio.AbstractEventLoop]:
    return type(asyncio.get_running_loop())


def test_uvloop_by_default_and_asyncio_on_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loop.LOOP_ENV, raising=False)
    assert loop.loop_name() == "uvloop"
    assert issubclass(loop.run(_loop_type()), uvloop.Loop)
    monkeypatch.setenv(loop.LOOP_ENV, "asyncio")
    assert loop.loop_name() == "asyncio"
    assert not issubclass(loop.run(_loop_type()), uvloop.Loop)


def test_an_unknown_loop_is_a_clear_error() -> None:
    with pytest.raises(loop.LoopConfigError, match="BATON_LOOP='tokio': use auto, uvloop"):
        loop.loop_name({loop.LOOP_ENV: "tokio"})
