"""MCP servers' tools as governed Baton tools.

The ecosystem serves tools over MCP; Baton lets an agent use them without giving up its
governance. `McpServer` names a server (a command Baton starts and talks to over stdio, or
a streamable-HTTP URL); `ToolRegistry.mcp(server)` declares it, and `resolve()` asks it for
its tools: each becomes a `Tool` whose argument schema is the JSON Schema the server gives.
A call still goes through the gateway first (contract, budget, argument check, approval,
the `tool.call` records), so a tool outside the role's contract never reaches the server.

One session with the server is kept open between calls (a stdio server is started once,
when its tools are listed, not per call), and calls go through it one at a time. A call
the session cannot answer (the server died, broke off, or said nothing within
`timeout_s`) fails with `McpServerError` and ends the session; the next call starts a new
one. Nothing waits past `timeout_s`. The official `mcp` SDK is imported only here, and only
when a server is used (the `interop` extra).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import msgspec

from agents.errors import AgentError, ToolDefinitionError
from agents.tools import Risk, Tool, check_name, checked_schema

if TYPE_CHECKING:
    from mcp import Client

log = logging.getLogger("baton.mcp")
T = TypeVar("T")


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
    _connection: _Connection = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_connection", _Connection(self))
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
        listed = (await self._connection.request(lambda client: client.list_tools())).tools
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
        result = await self._connection.request(lambda client: client.call_tool(name, arguments))
        text = "\n".join(getattr(c, "text", "") for c in result.content if c.type == "text")
        if result.is_error:
            raise McpToolError(f"{name}: {text or 'the tool reported an error'}")
        if result.structured_content is not None:
            return result.structured_content
        return text


class _Connection:
    """The one open session with a server, owned by one task (the SDK's client holds anyio
    scopes, which must be left in the task that entered them); requests reach it through a
    queue and are answered one at a time. A request that fails ends the session, and every
    request still queued fails with it; the next request opens a new one."""

    def __init__(self, server: McpServer) -> None:
        self._server = server
        self._queue: asyncio.Queue[_Request[Any]] = asyncio.Queue()
        self._owner: asyncio.Task[None] | None = None

    async def request(self, send: Callable[[Client], Awaitable[T]]) -> T:
        if self._owner is None or self._owner.done():
            self._queue = asyncio.Queue()
            self._owner = asyncio.create_task(self._serve(self._queue))
        answer: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Request(send, answer))
        try:
            async with asyncio.timeout(self._server.timeout_s):
                return await answer
        except TimeoutError:
            self._owner.cancel()  # a session that says nothing is ended, its process too
            self._owner = None  # the next request opens another while this one winds down
            raise McpServerError(self._server.label, "no answer in time") from None

    async def _serve(self, queue: asyncio.Queue[_Request[Any]]) -> None:
        why = "the session ended"
        try:
            async with self._server._session() as client:
                while True:
                    asked = await queue.get()
                    if asked.answer.done():
                        continue  # its caller stopped waiting
                    try:
                        value = await asked.send(client)
                    except Exception as exc:
                        if self._queue is queue:  # the next request opens another session
                            self._owner = None
                        if not asked.answer.done():
                            asked.answer.set_exception(
                                McpServerError(self._server.label, _why(exc))
                            )
                        raise
                    if not asked.answer.done():
                        asked.answer.set_result(value)
        except Exception as exc:
            why = _why(exc)
            log.info("MCP server %s: session ended: %s", self._server.label, why)
        finally:
            if self._queue is queue:
                self._owner = None
            while not queue.empty():
                left = queue.get_nowait().answer
                if not left.done():
                    left.set_exception(McpServerError(self._server.label, why))


@dataclass(frozen=True)
class _Request(Generic[T]):
    """One request to the session, and where its answer goes."""

    send: Callable[[Client], Awaitable[T]]
    answer: asyncio.Future[T]


def _why(exc: BaseException) -> str:
    """What went wrong, from an exception or an anyio exception group of them."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        return _why(exc.exceptions[0])
    return f"{type(exc).__name__}: {exc}"
