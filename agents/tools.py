"""The tool registry: what a tool is (name, argument schema from its type hints, risk
level, whether it needs approval) and how its arguments are checked before it runs.

A tool's arguments come from a model, so they are untrusted input: they decode strictly
into a Struct generated from the function's signature (unknown or missing fields and
wrong types are refused, naming the bad field), and only then is the function called.
Who may call what is not decided here but by the gateway (`agents.gateway`).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_type_hints

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

    def parameters(self) -> dict[str, Any]:
        """The JSON Schema of the arguments object, self-contained (nested types inlined
        under `$defs`), as OpenAI's `function.parameters` wants it."""
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

    def decode(self, raw: str | bytes) -> msgspec.Struct:
        """The arguments, decoded strictly from a JSON object, or `ToolArgumentsInvalid`."""
        try:
            return msgspec.json.decode(raw, type=self.arguments)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise ToolArgumentsInvalid(self.name, f"invalid arguments: {exc}") from None

    async def run(self, arguments: msgspec.Struct) -> Any:
        fields = {f: getattr(arguments, f) for f in arguments.__struct_fields__}
        return await self.function(**fields)


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
        if not _NAME.match(name):
            raise ToolDefinitionError(f"{name!r}: 1-64 letters, digits, '-' or '_'")
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
