"""Tools served on the bus: a `ToolService` answers `baton.tool.call.<tool>` requests for
the tools of a registry, so a tool with credentials or side effects can live in its own
process (scaled out in a queue group) instead of inside every agent.

Callers reach it only through their gateway (contract, budget, schema, approval, all
recorded); on a governed server, only roles whose contract lists a tool may publish to its
subject at all. The service validates the arguments again: it trusts no caller.
"""

from __future__ import annotations

import logging

from agents.errors import ToolArgumentsInvalid
from agents.tools import ToolRegistry
from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Handler, Incoming, Subscription
from bus.errors import BusError
from bus.protocol import ErrorReply, ToolInvocation, ToolOutcome

log = logging.getLogger("baton.toolservice")
_invocation: Decoder[ToolInvocation] = Decoder(ToolInvocation)
QUEUE = "baton-tools"


class ToolService:
    """Serves every tool of `registry` on its subject until `stop()`."""

    def __init__(self, bus: Bus, registry: ToolRegistry) -> None:
        self._bus = bus
        self._registry = registry
        self._subscriptions: list[Subscription] = []

    async def start(self) -> None:
        for tool in self._registry.tools():
            handler = self._handler(tool.name)
            subject = subjects.tool_call(tool.name)
            self._subscriptions.append(await self._bus.subscribe(subject, handler, QUEUE))

    async def stop(self) -> None:
        subscriptions, self._subscriptions = self._subscriptions, []
        for subscription in subscriptions:
            await subscription.unsubscribe()

    def _handler(self, name: str) -> Handler:
        tool = self._registry.get(name)

        async def on_call(msg: Incoming) -> None:
            try:
                invocation = _invocation.decode(msg.data)
            except BusError as exc:
                await msg.reply(encode(ErrorReply(type(exc).__name__, str(exc))))
                return
            try:
                result = await tool.run(tool.decode(invocation.arguments))
                outcome = ToolOutcome(invocation.call_id, True, result)
            except ToolArgumentsInvalid as exc:
                outcome = ToolOutcome(invocation.call_id, False, error=str(exc))
            except Exception as exc:
                log.warning("tool %s failed: %s", name, exc)
                outcome = ToolOutcome(
                    invocation.call_id, False, error=f"{type(exc).__name__}: {exc}"
                )
            try:
                payload = encode(outcome)
            except TypeError as exc:
                payload = encode(ToolOutcome(invocation.call_id, False, error=f"result: {exc}"))
            await msg.reply(payload)

        return on_call
