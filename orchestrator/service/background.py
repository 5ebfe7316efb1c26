"""The shell's background tasks (sends, publishes, answers, loops), kept so that `stop`
can end every one of them; a task that ends forgets itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

Spawn = Callable[[Coroutine[Any, Any, Any]], object]
"""Runs a coroutine as a background task (`Background.spawn`)."""


class Background:
    """Tasks the shell started and has not seen end."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def stop(self) -> None:
        """Cancel every task and wait until each has ended."""
        # A cancel can be swallowed (nats-py's fetch may turn one that lands as its wait
        # ends into a timeout and loop on): cancel again until every task has ended.
        while pending := [t for t in self._tasks if not t.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1.0)
