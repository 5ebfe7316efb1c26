"""Long-running loops that outlive their own bugs.

A loop that dies silently is the worst failure a service has: nothing crashes, nothing is
logged, and the work it did simply stops (an inbox no longer read, timers no longer
fired). So every Baton process runs its loops under a `Supervisor`: a loop that raises is
logged with its cause (the traceback once per distinct cause, a line for each repeat),
counted in the `baton.loop.crashes` metric and in `health()`, and restarted after a
backoff that doubles while it keeps crashing. Cancellation still ends a loop, and so
does returning: only a crash restarts it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from opentelemetry import metrics

log = logging.getLogger("baton.supervise")


class LoopHealth(NamedTuple):
    """One supervised loop as last seen: running (or backing off, or ended), how often it
    crashed, and the last cause ('' if it never crashed)."""

    running: bool
    crashes: int
    last_error: str


class Supervisor:
    """The long-running loops of one process, each restarted after a crash."""

    def __init__(
        self,
        meter: metrics.Meter | None = None,
        *,
        first_backoff_s: float = 0.05,
        max_backoff_s: float = 5.0,
        steady_s: float = 30.0,
    ) -> None:
        """A loop that ran `steady_s` before it crashed restarts after `first_backoff_s`
        again; one that keeps crashing waits twice as long each time, up to
        `max_backoff_s`."""
        meter = meter or metrics.get_meter("baton")
        self._crash_counter = meter.create_counter(
            "baton.loop.crashes", "{crash}", "crashes of supervised loops (each restarted)"
        )
        self._first_backoff_s = first_backoff_s
        self._max_backoff_s = max_backoff_s
        self._steady_s = steady_s
        self._health: dict[str, LoopHealth] = {}

    def health(self) -> dict[str, LoopHealth]:
        """Every loop this supervisor has run, by name."""
        return dict(self._health)

    def all_running(self) -> bool:
        """Whether every loop started is running now (none ended, none backing off)."""
        return all(h.running for h in self._health.values())

    async def run(self, name: str, body: Callable[[], Awaitable[None]]) -> None:
        """Run `body()` until it returns or is cancelled; after each crash log the cause,
        count it, wait the backoff, and call `body()` again."""
        backoff = self._first_backoff_s
        crashes, last_error = 0, ""
        while True:
            started = time.monotonic()
            self._health[name] = LoopHealth(True, crashes, last_error)
            try:
                await body()
            except Exception as exc:
                cause = f"{type(exc).__name__}: {exc}"
                crashes += 1
                if cause != last_error:
                    log.error("loop %s crashed (restarting): %s", name, cause, exc_info=exc)
                else:
                    log.error("loop %s crashed again, %d times now: %s", name, crashes, cause)
                last_error = cause
                self._crash_counter.add(1, {"loop": name})
            else:
                return
            finally:  # ended, cancelled, or backing off before the restart
                self._health[name] = LoopHealth(False, crashes, last_error)
            if time.monotonic() - started >= self._steady_s:
                backoff = self._first_backoff_s
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)
