"""Handlers every Baton install has, for benchmarks, tests and trying things out."""

from __future__ import annotations

import asyncio

from agents.sdk import TaskContext, TaskError
from bus.protocol import Payload


async def noop(task: TaskContext) -> Payload:
    """Does nothing and says which task it was: the unit of the dispatch benchmarks."""
    return {"task": task.task_id}


async def echo(task: TaskContext) -> Payload:
    """Returns its whole input, to see exactly what an agent receives."""
    return {"echo": task.input}


async def sleep(task: TaskContext) -> Payload:
    """Waits `params.seconds` (default 0.1): stands in for slow, I/O-bound work."""
    seconds = float(task.params.get("seconds", 0.1))
    await asyncio.sleep(seconds)
    return {"task": task.task_id, "slept_s": seconds}


async def fail(task: TaskContext) -> Payload:
    """Always fails; `params.retryable` (default true) says whether a retry could help."""
    raise TaskError(
        f"{task.task_id} fails on purpose", retryable=bool(task.params.get("retryable", True))
    )
