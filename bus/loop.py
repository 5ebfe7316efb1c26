"""The event loop every Baton process runs on: uvloop where it is installed (Linux and
macOS), asyncio's own loop otherwise or when `BATON_LOOP=asyncio` says so.

Coordination is message latency: on uvloop a NATS request/reply between two Python
processes takes about a third less time, and every hop of a chain of tasks pays it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

LOOP_ENV = "BATON_LOOP"
T = TypeVar("T")


class LoopConfigError(ValueError):
    """`BATON_LOOP` names a loop Baton does not know."""


def loop_name(env: dict[str, str] | None = None) -> str:
    """'uvloop' or 'asyncio': what `run` will use."""
    choice = (os.environ if env is None else env).get(LOOP_ENV, "auto").strip().lower()
    if choice not in {"auto", "uvloop", "asyncio"}:
        raise LoopConfigError(f"{LOOP_ENV}={choice!r}: use auto, uvloop or asyncio")
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise LoopConfigError(f"{LOOP_ENV}=uvloop but uvloop is not installed") from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `loop_name()` picks."""
    if loop_name() == "uvloop":
        import uvloop

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(main)
    return asyncio.run(main)
