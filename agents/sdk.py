"""What an agent author writes against: a handler is an async function from a task to its
output. Raising `TaskError` reports a failure (retryable or not); anything else raised is a
retryable failure with the exception's text. A handler that has more to say than its
output (tokens used, subtasks wanted, a handoff) returns a `Reply` instead."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import msgspec

from agents.gateway import ToolGateway
from agents.memory import Memory
from agents.usage import UsageMeter
from bus.contracts import RoleContract
from bus.protocol import Payload, SubtaskRequest


class TaskContext(msgspec.Struct, frozen=True):
    """One attempt of one task, as the agent sees it, with the contract it runs under."""

    run_id: str
    task_id: str
    step: str
    attempt: int
    role: str
    agent_id: str
    input: Payload
    contract: RoleContract | None = None
    usage: UsageMeter = msgspec.field(default_factory=UsageMeter)
    memory: Memory | None = None
    """Shared memory, when the agent serves a role contract."""
    tools: ToolGateway | None = None
    """Governed tool calls, when the agent serves a role contract and has a registry."""

    @property
    def params(self) -> dict[str, Any]:
        params = self.input.get("params", {})
        return params if isinstance(params, dict) else {}

    @property
    def deps(self) -> dict[str, Any]:
        deps = self.input.get("deps", {})
        return deps if isinstance(deps, dict) else {}

    @property
    def transcript(self) -> list[dict[str, Any]]:
        """A chat turn's view of the chat so far (empty outside a chat)."""
        said = self.input.get("transcript", [])
        return said if isinstance(said, list) else []

    @property
    def context(self) -> list[dict[str, Any]]:
        """What earlier owners of a handed-off task said (empty if it was not handed off)."""
        said = self.input.get("context", [])
        return said if isinstance(said, list) else []

    @property
    def memory_refs(self) -> list[str]:
        """Refs of the shared memory earlier owners wrote before handing the task off:
        read them with `task.memory.read(task.memory_refs)`."""
        refs = self.input.get("memory_refs", [])
        return [r for r in refs if isinstance(r, str)] if isinstance(refs, list) else []

    @property
    def round(self) -> int:
        """Loop round, chat turn or subtask depth (1 for a plain task)."""
        value = self.input.get("round", 1)
        return value if isinstance(value, int) else 1


class Reply(msgspec.Struct, frozen=True):
    """A handler's answer with more than an output: the tokens it used outside the model
    calls Baton traces (reported as output tokens, added to theirs, charged to the
    run's budget), subtasks it wants done before its task completes, or the role it
    hands the task to (which must be one its step allows)."""

    output: Payload
    tokens: int = 0
    subtasks: list[SubtaskRequest] = []
    handoff_to: str = ""


def refuse_handoff(contract: RoleContract | None, to_role: str) -> None:
    """A handoff the agent's own contract does not allow fails the attempt (for good),
    before it leaves the process."""
    if to_role and contract is not None and not contract.may_hand_off_to(to_role):
        raise TaskError(
            f"role {contract.name!r} may not hand off to {to_role!r} (contract allows "
            f"{contract.handoff_to})",
            retryable=False,
        )


Handler = Callable[[TaskContext], Awaitable[Payload | Reply]]


class Offer(msgspec.Struct, frozen=True):
    """A bid in a contract-net round: lower cost wins, then shorter time, then higher
    confidence (0..1)."""

    cost: float
    time_s: float = 0.0
    confidence: float = 1.0


Bidder = Callable[[TaskContext], Awaitable[Offer | None]]
"""Prices a task put out to tender; None declines to bid."""


def load_bidder(ref: str) -> Bidder:
    """The bidder named like a handler (`module:function` or `file.py:function`)."""
    return cast(Bidder, load_handler(ref))


class TaskError(Exception):
    """A handler's way to fail an attempt on purpose, saying whether a retry could help,
    or that a person must decide (`escalate`: the task waits for `baton approve`,
    `reject` or `retry`)."""

    def __init__(self, message: str, *, retryable: bool = True, escalate: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.escalate = escalate


class HandlerNotFound(Exception):
    """A `module:function` or `path.py:function` that does not name an async handler."""


def load_handler(ref: str) -> Handler:
    """The handler named by `package.module:function` or `path/to/file.py:function`."""
    handler = load_object(ref)
    if not callable(handler):
        raise HandlerNotFound(f"{ref!r}: {handler!r} is not callable")
    if inspect.isfunction(handler) and not inspect.iscoroutinefunction(handler):
        raise HandlerNotFound(f"{ref!r}: a handler is an async function (async def)")
    return cast(Handler, handler)


def load_object(ref: str) -> object:
    """The object named by `package.module:name` or `path/to/file.py:name`."""
    target, sep, name = ref.rpartition(":")
    if not sep or not target or not name:
        raise HandlerNotFound(f"{ref!r}: expected 'module:function' or 'file.py:function'")
    try:
        if target.endswith(".py"):
            path = Path(target).resolve()
            digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
            module_name = f"baton_handlers_{path.stem}_{digest}"
            loaded = sys.modules.get(module_name)
            if loaded is not None:  # one module per file, however many names are taken
                module = loaded
            else:
                spec = importlib.util.spec_from_file_location(module_name, path)
                if spec is None or spec.loader is None:
                    raise HandlerNotFound(f"{ref!r}: cannot load {path}")
                module = importlib.util.module_from_spec(spec)
                sys.modules[spec.name] = module
                try:
                    spec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[spec.name]
                    raise
        else:
            module = importlib.import_module(target)
    except (ImportError, OSError, SyntaxError) as exc:
        raise HandlerNotFound(f"{ref!r}: {exc}") from exc
    found = getattr(module, name, None)
    if found is None:
        raise HandlerNotFound(f"{ref!r}: no {name!r} in {target}")
    return found
