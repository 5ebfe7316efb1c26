"""The tool registry: what a tool is (name, argument schema from its type hints, risk
level, whether it needs approval) and how its arguments are checked before it runs.

A tool's arguments come from a model, so they are untrusted input: they decode strictly
into a Struct generated from the function's signature (unknown or missing fields and
wrong types are refused, naming the bad field), and only then is the function called.
Who may call what is not decided here but by the gateway (`agents.gateway`).

A tool can also be another server's (an MCP server's, `ToolRegistry.mcp`): then its schema
is the JSON Schema that server gives, the arguments are checked against it here, and the
call goes to that server only after the gateway's checks.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_type_hints

import jsonschema
import msgspec

from agents.errors import ToolArgumentsInvalid, ToolDefinitionError, ToolRefused

Risk = Literal["low", "medium", "high"]
RISKS: tuple[Risk, ...] = ("low", "medium", "high")
ToolFunction = Callable[..., Awaitable[Any]]
_NAME = re.compile(r"^[A-Za-z0-9_\-]{1,64}$")


@dataclass(frozen=True)
class Tool:
    """One registered tool and the Struct its arguments must decode into."""

    name: str
    description: str
    function: ToolFunction
    arguments: type[msgspec.Struct]
    risk: Risk
    needs_approval: bool
    remote: bool = False
    """Served on the bus by a `ToolService` (`baton.tool.call.<name>`): the function here
    only declares the arguments; the gateway sends the call over NATS."""
    schema: dict[str, Any] | None = None
    """The JSON Schema of the arguments as the tool's own server gives it (an MCP tool):
    arguments are checked against it, not against `arguments`, and the function takes
    them as keywords."""

    def parameters(self) -> dict[str, Any]:
        """The JSON Schema of the arguments object, self-contained (nested types inlined
        under `$defs`), as OpenAI's `function.parameters` wants it."""
        if self.schema is not None:
            return dict(self.schema)
        (ref,), components = msgspec.json.schema_components(
            [self.arguments], ref_template="#/$defs/{name}"
        )
        name = ref["$ref"].rsplit("/", 1)[-1]
        schema = dict(components.pop(name))
        schema.pop("title", None)
        if components:
            schema["$defs"] = components
        return schema

    def openai_spec(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters(),
            },
        }

    def decode(self, raw: str | bytes) -> msgspec.Struct | dict[str, Any]:
        """The arguments, decoded strictly from a JSON object (a dict checked against
        `schema` for a tool that has one), or `ToolArgumentsInvalid`."""
        if self.schema is not None:
            return _checked(self.name, self.schema, raw)
        try:
            return msgspec.json.decode(raw, type=self.arguments)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ToolArgumentsInvalid(self.name, f"invalid arguments: {exc}") from None

    async def run(self, arguments: msgspec.Struct | dict[str, Any]) -> Any:
        if isinstance(arguments, dict):
            return await self.function(**arguments)
        fields = {f: getattr(arguments, f) for f in arguments.__struct_fields__}
        return await self.function(**fields)


def _checked(name: str, schema: dict[str, Any], raw: str | bytes) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise ToolArgumentsInvalid(name, f"invalid arguments: {exc}") from None
    if not isinstance(value, dict):
        raise ToolArgumentsInvalid(name, "invalid arguments: expected a JSON object")
    error = jsonschema.exceptions.best_match(
        jsonschema.Draft202012Validator(schema).iter_errors(value)
    )
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(the arguments)"
        raise ToolArgumentsInvalid(name, f"invalid arguments at {where}: {error.message}")
    return value


def checked_schema(name: str, schema: object) -> dict[str, Any]:
    """A tool's argument schema given by its server, if it is a JSON Schema of an object;
    else `ToolDefinitionError` naming the tool."""
    if not isinstance(schema, dict) or schema.get("type", "object") != "object":
        raise ToolDefinitionError(f"tool {name!r}: its input schema is not an object schema")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ToolDefinitionError(f"tool {name!r}: bad input schema: {exc.message}") from None
    return schema


class ToolSource(Protocol):
    """Another server's tools (an MCP server: `agents.mcp_tools.McpServer`)."""

    async def offered(self) -> list[Tool]:
        """Its tools, each with the argument schema the server gives."""
        ...


def check_name(name: str) -> str:
    """A tool name: 1-64 letters, digits, '-' or '_' (it is a NATS subject token)."""
    if not _NAME.match(name):
        raise ToolDefinitionError(f"{name!r}: 1-64 letters, digits, '-' or '_'")
    return name


def _arguments_struct(name: str, function: ToolFunction) -> type[msgspec.Struct]:
    try:
        hints = get_type_hints(function)
    except Exception as exc:
        raise ToolDefinitionError(f"tool {name!r}: cannot read type hints: {exc}") from exc
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for param in inspect.signature(function).parameters.values():
        if param.kind not in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY):
            raise ToolDefinitionError(f"tool {name!r}: *args/**kwargs cannot be described")
        if param.name not in hints:
            raise ToolDefinitionError(f"tool {name!r}: parameter {param.name!r} has no type hint")
        if param.default is param.empty:
            fields.append((param.name, hints[param.name]))
        else:
            fields.append((param.name, hints[param.name], param.default))
    struct_name = "".join(part.capitalize() for part in re.split(r"[_\-]", name)) + "Arguments"
    return msgspec.defstruct(struct_name, fields, forbid_unknown_fields=True, frozen=True)


class ToolRegistry:
    """Tools by name; `@registry.tool(...)` registers an async function."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self._servers: list[ToolSource] = []

    def mcp(self, server: ToolSource) -> ToolSource:
        """Declare an MCP server whose tools join this registry (no I/O here: `await
        resolve()` asks the server for its tools and their schemas; the agent does that
        as it starts). Needs the `interop` extra."""
        self._servers.append(server)
        return server

    async def resolve(self) -> None:
        """Register the tools of every declared MCP server (`McpServerError` if one
        cannot be reached or gives a tool that cannot be governed)."""
        servers, self._servers = self._servers, []
        for server in servers:
            for tool in await server.offered():
                if tool.name in self._tools:
                    raise ToolDefinitionError(f"tool {tool.name!r} is already registered")
                self._tools[tool.name] = tool

    def add(
        self,
        function: ToolFunction,
        *,
        name: str = "",
        description: str = "",
        risk: Risk = "low",
        needs_approval: bool = False,
        remote: bool = False,
    ) -> Tool:
        name = name or function.__name__
        check_name(name)
        if name in self._tools:
            raise ToolDefinitionError(f"tool {name!r} is already registered")
        if not inspect.iscoroutinefunction(function):
            raise ToolDefinitionError(f"tool {name!r}: must be an async function")
        if risk not in RISKS:
            raise ToolDefinitionError(f"tool {name!r}: risk must be one of {RISKS}")
        tool = Tool(
            name=name,
            description=description or inspect.getdoc(function) or "",
            function=function,
            arguments=_arguments_struct(name, function),
            risk=risk,
            needs_approval=needs_approval,
            remote=remote,
        )
        self._tools[name] = tool
        return tool

    def tool(
        self,
        *,
        name: str = "",
        description: str = "",
        risk: Risk = "low",
        needs_approval: bool = False,
        remote: bool = False,
    ) -> Callable[[ToolFunction], ToolFunction]:
        """`@registry.tool(risk=..., needs_approval=..., remote=...)`: register an async
        function as a tool; the function is returned unchanged."""

        def register(fn: ToolFunction) -> ToolFunction:
            self.add(
                fn,
                name=name,
                description=description,
                risk=risk,
                needs_approval=needs_approval,
                remote=remote,
            )
            return fn

        return register

    def tools(self) -> list[Tool]:
        return [self._tools[n] for n in sorted(self._tools)]

    def get(self, name: str) -> Tool:
        try:
            return self._tools[name]
        except KeyError:
            raise ToolRefused(name, "no such tool") from None

    def __contains__(self, name: object) -> bool:
        return name in self._tools

    def names(self) -> list[str]:
        return sorted(self._tools)

    def openai_specs(self, names: Iterable[str]) -> list[dict[str, Any]]:
        """The OpenAI `tools` list for the registered tools among `names`."""
        return [self._tools[n].openai_spec() for n in names if n in self._tools]
