"""MCP servers' tools as governed Baton tools.

The ecosystem serves tools over MCP; Baton lets an agent use them without giving up its
governance. `McpServer` names a server (a command Baton starts and talks to over stdio, or
a streamable-HTTP URL); `ToolRegistry.mcp(server)` declares it, and `resolve()` asks it for
its tools: each becomes a `Tool` whose argument schema is the JSON Schema the server gives.
A call still goes through the gateway first (contract, budget, argument check, approval,
the `tool.call` records), so a tool outside the role's contract never reaches the server.

Each call opens its own session with the server (for stdio: a new server process), so a
server that dies fails that call alone with `McpServerError`, never a later one, and
nothing hangs past `timeout_s`. The official `mcp` SDK is imported only here, and only
when a server is used (the `interop` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from agents.errors import AgentError, ToolDefinitionError
from agents.tools import Risk, Tool, check_name, checked_schema

if TYPE_CHECKING:
    from mcp import Client


class McpServerError(AgentError):
    """An MCP server that could not be started or reached, broke off, answered with
    something that is not MCP, or did not answer within its timeout; names the server."""

    def __init__(self, server: str, reason: str) -> None:
        super().__init__(f"MCP server {server}: {reason}")
        self.server = server
        self.reason = reason


class McpToolError(AgentError):
    """The MCP tool ran and reported an error (`isError`); carries its text."""


_NO_ARGUMENTS = msgspec.defstruct("McpArguments", [], forbid_unknown_fields=True, frozen=True)


@dataclass(frozen=True)
class McpServer:
    """An MCP server whose tools an agent may call (as its contract allows): `command`
    (with `args`, `env`, `cwd`) started over stdio, or `url` for streamable HTTP.
    `tools` keeps only those names (default: all it offers); `prefix` is put before each
    name (the name the contract lists); `risk` and `needs_approval` apply to each."""

    command: str = ""
    args: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    url: str = ""
    tools: Sequence[str] | None = None
    prefix: str = ""
    risk: Risk = "low"
    needs_approval: bool = False
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if bool(self.command) == bool(self.url):
            raise ToolDefinitionError("an MCP server is either a command (stdio) or a url")
        if not self.timeout_s > 0:
            raise ToolDefinitionError("an MCP server's timeout_s must be positive")

    @property
    def label(self) -> str:
        return self.url or " ".join([self.command, *self.args])

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[Client]:
        try:
            from mcp import Client, StdioServerParameters
        except ImportError as exc:
            raise McpServerError(self.label, "needs the `interop` extra (mcp)") from exc
        target: StdioServerParameters | str
        if self.url:
            target = self.url
        else:
            target = StdioServerParameters(
                command=self.command, args=list(self.args), env=self.env, cwd=self.cwd or None
            )
        async with Client(target, read_timeout_seconds=self.timeout_s) as client:
            yield client

    async def offered(self) -> list[Tool]:
        """The server's tools as Baton tools (those named in `tools`, all if None)."""
        try:
            async with asyncio.timeout(self.timeout_s), self._session() as client:
                listed = (await client.list_tools()).tools
        except (McpServerError, ToolDefinitionError):
            raise
        except Exception as exc:
            raise McpServerError(self.label, _why(exc)) from exc
        offered = {t.name: t for t in listed}
        wanted = list(offered) if self.tools is None else list(self.tools)
        missing = [n for n in wanted if n not in offered]
        if missing:
            raise McpServerError(self.label, f"offers no tool {', '.join(missing)}")
        return [
            self._tool(n, offered[n].description or "", offered[n].input_schema) for n in wanted
        ]

    def _tool(self, remote_name: str, description: str, schema: object) -> Tool:
        name = check_name(self.prefix + remote_name)

        async def call(**arguments: Any) -> Any:
            return await self.call(remote_name, arguments)

        return Tool(
            name=name,
            description=description,
            function=call,
            arguments=_NO_ARGUMENTS,
            risk=self.risk,
            needs_approval=self.needs_approval,
            schema=checked_schema(name, schema),
        )

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
        """Call one tool on the server: its structured result if it gives one, else the
        text of its content; `McpToolError` if the tool reports an error."""
        try:
            async with asyncio.timeout(self.timeout_s), self._session() as client:
                result = await client.call_tool(name, arguments)
        except McpServerError:
            raise
        except Exception as exc:
            raise McpServerError(self.label, _why(exc)) from exc
        text = "\n".join(getattr(c, "text", "") for c in result.content if c.type == "text")
        if result.is_error:
            raise McpToolError(f"{name}: {text or 'the tool reported an error'}")
        if result.structured_content is not None:
            return result.structured_content
        return text


def _why(exc: BaseException) -> str:
    """What went wrong, from an exception or an anyio exception group of them."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _why(exc.exceptions[0])
    return f"{type(exc).__name__}: {exc}"
