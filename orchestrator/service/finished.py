"""Finished runs in a long-lived orchestrator: who waits for a run's end, and which
finished runs stay in memory.

A service that kept every run it ever served would grow by a run's whole state per run
(about 150 KB for 100 tasks) and never give it back. Only the newest `keep` finished runs
stay, for the callers that look at a run just after it ends; an older one is forgotten
and read again from the log when someone asks (the log is the state, after all).
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from orchestrator.core.state import RunState

KEEP_FINISHED = 32
"""Finished runs an orchestrator keeps in memory by default, newest first."""


class FinishedRuns:
    """Waiters for runs' ends, and the ids of the finished runs kept, oldest first."""

    def __init__(self, keep: int = KEEP_FINISHED) -> None:
        if keep < 0:
            raise ValueError(f"keep must be 0 or more, not {keep}")
        self._keep = keep
        self._kept: OrderedDict[str, None] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[RunState]]] = {}

    async def until(self, run_id: str) -> RunState:
        """The run's state once it has ended (as `ended` hands it over)."""
        waiter: asyncio.Future[RunState] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(run_id, []).append(waiter)
        try:
            return await waiter
        finally:
            waiting = self._waiters.get(run_id, [])
            if waiter in waiting:
                waiting.remove(waiter)
            if not waiting:
                self._waiters.pop(run_id, None)

    def ended(self, run_id: str, state: RunState) -> None:
        """The run's end is durable: wake whoever waits for it."""
        for waiter in self._waiters.pop(run_id, []):
            if not waiter.done():
                waiter.set_result(state)

    def keep(self, run_id: str) -> list[str]:
        """Keep this finished run as the newest; the ids of the runs no longer kept."""
        self._kept[run_id] = None
        self._kept.move_to_end(run_id)
        dropped = []
        while len(self._kept) > self._keep:
            dropped.append(self._kept.popitem(last=False)[0])
        return dropped

    def __len__(self) -> int:
        return len(self._kept)
