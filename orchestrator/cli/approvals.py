"""`baton run --human-approval`: this terminal asks the person about each tool call of the
run that waits for a human, one question at a time, and sends the answer to the waiting
agent. The calls come from the orchestrator, which passes on only those an agent makes
for an attempt it holds (`tool_prompts`).

The question always concerns a call that still waits: a call decided elsewhere (`baton
tool approve|deny` from another terminal) is dropped, and said so, even while its question
is on the screen; a call made again by a retried attempt replaces the older one's
question. Lines are read by one reader thread for the whole run, so a question being
dropped never leaves a read behind that would swallow the answer to the next one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
from collections.abc import Callable
from typing import Protocol

from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming, Subscription
from bus.errors import BusError, RequestFailed
from bus.protocol import ToolCallRecord, ToolDecision
from orchestrator.cli.reach import me

_record: Decoder[ToolCallRecord] = Decoder(ToolCallRecord)
_decision: Decoder[ToolDecision] = Decoder(ToolDecision)


class Lines(Protocol):
    """Where the person's answers come from: the next line, or None at end of input."""

    async def get(self) -> str | None: ...


class StdinLines:
    """Standard input's lines, read by one daemon thread into a queue."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[str | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._read, name="baton-approvals", daemon=True).start()

    def _read(self) -> None:
        for line in sys.stdin:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, line)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, None)

    async def get(self) -> str | None:
        return await self._queue.get()


def _question(request: ToolCallRecord) -> str:
    return (
        f"\ntool call {request.call_id}: {request.agent_id} wants {request.tool} "
        f"({request.risk} risk) with {request.arguments}\napprove? [y/N] "
    )


class Approvals:
    """The prompt loop of one run; `close()` stops it."""

    def __init__(self, bus: Bus, run_id: str, lines: Lines, say: Callable[[str], None]) -> None:
        self._bus = bus
        self._run_id = run_id
        self._lines = lines
        self._say = say
        self._pending: dict[str, ToolCallRecord] = {}
        """Calls that wait for a decision, oldest first."""
        self._changed = asyncio.Event()
        self._subscriptions: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self._line: asyncio.Task[str | None] | None = None

    async def start(self) -> Approvals:
        self._subscriptions = [
            await self._bus.subscribe(subjects.tool_prompt(self._run_id), self._on_request),
            await self._bus.subscribe(subjects.TOOL_DECISIONS_ALL, self._on_decision),
        ]
        self._task = asyncio.create_task(self._ask_loop())
        return self

    async def close(self) -> None:
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
        for task in (self._task, self._line):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _on_request(self, msg: Incoming) -> None:
        try:
            request = _record.decode(msg.data)
        except BusError:
            return
        for call_id, older in list(self._pending.items()):
            same = (older.task_id, older.tool) == (request.task_id, request.tool)
            if same and older.attempt < request.attempt:  # its attempt was retried
                del self._pending[call_id]
                self._say(
                    f"\ntool call {call_id} no longer waits: attempt {older.attempt} of "
                    f"{older.task_id} was retried, as attempt {request.attempt}"
                )
        self._pending[request.call_id] = request
        self._changed.set()

    async def _on_decision(self, msg: Incoming) -> None:
        """A decision sent by anyone (this terminal's too, which has already dropped it)."""
        try:
            decision = _decision.decode(msg.data)
        except BusError:
            return
        if self._pending.pop(decision.call_id, None) is not None:
            verdict = "approved" if decision.approve else "denied"
            self._say(f"\ntool call {decision.call_id} {verdict} elsewhere, by {decision.by}")
            self._changed.set()

    async def _ask_loop(self) -> None:
        while True:
            if not self._pending:
                self._changed.clear()
                await self._changed.wait()
                continue
            call_id, request = next(iter(self._pending.items()))
            self._say(_question(request))
            answer = await self._answer(call_id)
            if answer is None:
                return
            if call_id not in self._pending:  # decided or retried while it was asked
                continue
            del self._pending[call_id]
            await self._send(request, answer)

    async def _answer(self, call_id: str) -> bool | None:
        """The person's answer to the question about `call_id` (True: approve), False at
        once if the call stops waiting meanwhile, None at end of input."""
        while True:
            if self._line is None:
                self._line = asyncio.create_task(self._lines.get())
            self._changed.clear()
            changed = asyncio.create_task(self._changed.wait())
            done, _ = await asyncio.wait({self._line, changed}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            if self._line in done:
                line, self._line = self._line.result(), None
                if line is None:
                    self._say(f"\nno terminal: baton tool approve|deny {call_id}")
                    return None
                return line.strip().lower() in ("y", "yes")
            if call_id not in self._pending:
                return False

    async def _send(self, request: ToolCallRecord, approve: bool) -> None:
        call_id = request.call_id
        decision = ToolDecision(call_id, approve, me(), "at baton run")
        subject = subjects.tool_decision(request.agent_id, call_id)
        try:
            await self._bus.request(subject, encode(decision), 5.0)
        except RequestFailed as exc:
            self._say(f"decision on {call_id} not delivered: {exc}")


def _print(text: str) -> None:
    print(text, end="" if text.endswith("] ") else "\n", flush=True)


async def watch(
    bus: Bus, run_id: str, lines: Lines | None = None, say: Callable[[str], None] = _print
) -> Approvals:
    """Start asking about the run's tool calls that wait for a human (until `close()`)."""
    return await Approvals(bus, run_id, lines or StdinLines(), say).start()
