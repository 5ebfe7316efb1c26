"""The research example's handlers (and a no-op), each first writing down the attempt it
was given, so fault tests can check which assignments reached agents (and when) against
the log.

Each agent process appends JSON lines to `$BATON_TEST_RECEIPTS/<pid>.jsonl`.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from agents import TaskContext, load_handler
from agents.sdk import Handler, Reply

_EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "research" / "agents.py"


def _receipt(task: TaskContext) -> None:
    folder = Path(os.environ["BATON_TEST_RECEIPTS"])
    line = {
        "run_id": task.run_id,
        "task_id": task.task_id,
        "attempt": task.attempt,
        "agent_id": task.agent_id,
        "at": time.time(),
    }
    with (folder / f"{os.getpid()}.jsonl").open("a") as out:
        out.write(json.dumps(line) + "\n")


def _recording(name: str) -> Handler:
    inner = load_handler(f"{_EXAMPLE}:{name}")

    async def handler(task: TaskContext) -> dict[str, Any] | Reply:
        _receipt(task)
        return await inner(task)

    return handler


plan = _recording("plan")
research = _recording("research")
write = _recording("write")


async def noop(task: TaskContext) -> dict[str, Any]:
    _receipt(task)
    return {"task": task.task_id}


async def slow(task: TaskContext) -> dict[str, Any]:
    """Writes its receipt, then takes `params.seconds` (default 0.3): work in flight."""
    _receipt(task)
    await asyncio.sleep(float(task.params.get("seconds", 0.3)))
    return {"task": task.task_id, "pid": os.getpid()}


async def lingering(task: TaskContext) -> dict[str, Any]:
    """Works `params.seconds` (default 60); the first time it is cancelled (its own
    timeout, or the orchestrator's cancel) it cleans up for `params.cleanup_s` (default
    60) before it gives in, and only a second cancel cuts that short: an attempt its
    agent still holds after it timed out, unless the orchestrator tells it to drop it."""
    _receipt(task)
    try:
        await asyncio.sleep(float(task.params.get("seconds", 60.0)))
    except asyncio.CancelledError:
        await asyncio.sleep(float(task.params.get("cleanup_s", 60.0)))
        raise
    return {"task": task.task_id}


async def gated(task: TaskContext) -> dict[str, Any]:
    """The tasks listed in `params.gated` wait (up to 60 s) until the file `params.gate`
    exists, so a test decides when those attempts end; every other task returns at once."""
    if task.task_id in task.params.get("gated", []):
        gate = Path(str(task.params["gate"]))
        deadline = time.monotonic() + 60.0
        while not gate.exists() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    return {"task": task.task_id}
