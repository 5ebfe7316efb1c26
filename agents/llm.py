"""Declarative LLM agents: a spec (system prompt, model, tools, output schema) run by a
built-in tool-calling loop over the official `openai` client, so any OpenAI-compatible
endpoint works.

The loop is bounded (`max_iterations` model calls per attempt), each call's `max_tokens`
comes from what is left of the task's token budget, usage is charged to the attempt and
reported on its `TaskResult`, and timeouts and transient errors are retried by the client
within `max_retries`. Everything the model says is untrusted: tool calls go through the
gateway (contract, budget, argument schema, approval) and the final answer is validated
against the output schema before it becomes the task's output.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, cast

import jsonschema
import msgspec
import openai

from agents.errors import LlmConfigError, ToolError
from agents.gateway import Approver, Recorder, ToolGateway
from agents.sdk import HandlerNotFound, TaskContext, TaskError, load_object
from agents.telemetry import llm_call
from agents.tools import ToolRegistry
from bus.connection import Bus
from bus.protocol import Payload

ResponseFormat = Literal["json_schema", "json_object", "none"]
MAX_ITERATIONS = 50


class LlmSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What an LLM agent is: which model, told what, with which tools, answering how."""

    system_prompt: str
    model: str = ""
    """Default `$BATON_LLM_MODEL`."""
    base_url: str = ""
    """Default `$OPENAI_BASE_URL` (the client's own default if unset)."""
    api_key_env: str = "OPENAI_API_KEY"
    tools: str = ""
    """A `ToolRegistry`: 'file.py:name' (relative to the spec file) or 'module:name'."""
    output_schema: dict[str, Any] = {}
    """JSON Schema of the final answer (an object); empty: the answer is `{"text": ...}`."""
    response_format: ResponseFormat = "json_schema"
    """How to ask for structured output: OpenAI's `json_schema`, or `json_object` with a
    `schema` (llama.cpp's server), or not at all."""
    first_tool: str = ""
    """Force this tool on the first turn with a named `tool_choice` (small models)."""
    user_input: str = ""
    """A JSON pointer into the assignment's input: the part the model is shown (e.g.
    `/deps/edit/text`); empty: the whole input, as JSON."""
    first_tool_arguments: dict[str, str] = {}
    """With `first_tool`: its arguments, each a JSON pointer into the assignment's input
    (e.g. `{text = "/deps/edit/text"}`). The agent then makes that first call itself,
    through the gateway like any other, and shows the model the call and its result, so a
    small model works on the real input instead of arguments it invented."""
    first_tool_output: str = ""
    """With `first_tool_arguments`: the output key that carries the first call's result
    (a figure the tool measured, not one the model restates)."""
    max_iterations: int = 6
    max_tokens_per_call: int = 512
    request_timeout_s: float = 60.0
    max_retries: int = 2
    temperature: float = 0.0


def _location(error: msgspec.ValidationError) -> tuple[str, str]:
    text = str(error)
    missing = re.match(r"Object missing required field `(\w+)`", text)
    match = re.search(r" - at `\$\.?(.*)`$", text)
    where = match.group(1) if match else ""
    if missing:
        return f"{where}.{missing.group(1)}" if where else missing.group(1), text
    if match:
        return where or "(top)", text[: match.start()]
    return "(top)", text


def validate_spec(spec: LlmSpec) -> LlmSpec:
    """`spec` if it holds together, else `LlmConfigError` naming the bad field."""
    if not spec.system_prompt.strip():
        raise LlmConfigError("system_prompt", "must not be empty")
    if not 1 <= spec.max_iterations <= MAX_ITERATIONS:
        raise LlmConfigError("max_iterations", f"must be between 1 and {MAX_ITERATIONS}")
    if spec.max_tokens_per_call < 1:
        raise LlmConfigError("max_tokens_per_call", "must be at least 1")
    if spec.request_timeout_s <= 0:
        raise LlmConfigError("request_timeout_s", "must be positive")
    if spec.max_retries < 0:
        raise LlmConfigError("max_retries", "must be 0 or more")
    if spec.first_tool_arguments and not spec.first_tool:
        raise LlmConfigError("first_tool_arguments", "needs first_tool")
    if spec.first_tool_output and not spec.first_tool_arguments:
        raise LlmConfigError("first_tool_output", "needs first_tool_arguments")
    pointers = {f"first_tool_arguments.{k}": v for k, v in spec.first_tool_arguments.items()}
    for where, pointer in {"user_input": spec.user_input, **pointers}.items():
        if pointer and not pointer.startswith("/"):
            raise LlmConfigError(where, f"{pointer!r} is not a JSON pointer (/a/b)")
    if spec.output_schema:
        try:
            jsonschema.Draft202012Validator.check_schema(spec.output_schema)
        except jsonschema.SchemaError as exc:
            raise LlmConfigError("output_schema", f"not a JSON Schema: {exc.message}") from exc
        if spec.output_schema.get("type") != "object":
            raise LlmConfigError("output_schema.type", "the answer must be an 'object'")
    return spec


def parse_spec(data: dict[str, Any]) -> LlmSpec:
    try:
        spec = msgspec.convert(data, LlmSpec)
    except msgspec.ValidationError as exc:
        raise LlmConfigError(*_location(exc)) from exc
    return validate_spec(spec)


def load_spec(path: str | Path) -> LlmSpec:
    """A validated spec from a TOML file, its `tools` ref made absolute."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as exc:
        raise LlmConfigError(str(path), "no such file") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise LlmConfigError(str(path), f"not valid TOML: {exc}") from exc
    try:
        spec = parse_spec(data)
    except LlmConfigError as exc:
        raise LlmConfigError(f"{path}: {exc.location}", exc.message) from exc
    target, sep, name = spec.tools.rpartition(":")
    if sep and target.endswith(".py") and not Path(target).is_absolute():
        spec = msgspec.structs.replace(spec, tools=f"{(path.parent / target).resolve()}:{name}")
    return spec


def load_registry(ref: str) -> ToolRegistry:
    """The `ToolRegistry` a spec's `tools` names (an empty one for '')."""
    if not ref:
        return ToolRegistry()
    try:
        registry = load_object(ref)
    except HandlerNotFound as exc:
        raise LlmConfigError("tools", str(exc)) from exc
    if not isinstance(registry, ToolRegistry):
        raise LlmConfigError("tools", f"{ref!r} is not a ToolRegistry")
    return registry


def model_for(spec: LlmSpec) -> str:
    """The model an agent of `spec` calls: the spec's, else `$BATON_LLM_MODEL` ('' none)."""
    return spec.model or os.environ.get("BATON_LLM_MODEL", "")


def client_for(spec: LlmSpec) -> openai.AsyncOpenAI:
    """The OpenAI client a spec asks for, endpoint and key from the spec or environment."""
    return openai.AsyncOpenAI(
        base_url=spec.base_url or os.environ.get("OPENAI_BASE_URL") or None,
        api_key=os.environ.get(spec.api_key_env) or "not-needed",
        timeout=spec.request_timeout_s,
        max_retries=spec.max_retries,
    )


def _pointed(document: Any, pointer: str) -> Any:
    """The value at an RFC 6901 JSON pointer, or `TaskError` naming what is missing."""
    value = document
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(value, dict) and token in value:
            value = value[token]
        elif isinstance(value, list) and token.isdigit() and int(token) < len(value):
            value = value[int(token)]
        else:
            raise TaskError(f"the input has nothing at {pointer}", retryable=False)
    return value


def _json(value: Any) -> str:
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return json.dumps(str(value))


class LlmAgent:
    """A handler (`async (TaskContext) -> Payload`) that runs the tool-calling loop."""

    def __init__(
        self,
        spec: LlmSpec,
        registry: ToolRegistry,
        approver: Approver,
        recorder: Recorder,
        client: openai.AsyncOpenAI | None = None,
        bus: Bus | None = None,
    ) -> None:
        self.spec = validate_spec(spec)
        self.model = model_for(spec)
        if not self.model:
            raise LlmConfigError("model", "no model: set it in the spec or $BATON_LLM_MODEL")
        self.registry = registry
        self._approver = approver
        self._recorder = recorder
        self._bus = bus
        self._client = client or client_for(spec)
        self._validator = (
            jsonschema.Draft202012Validator(spec.output_schema) if spec.output_schema else None
        )

    async def __call__(self, task: TaskContext) -> Payload:
        if task.contract is None:
            raise TaskError("an LLM agent runs only under a role contract", retryable=False)
        gateway = ToolGateway(
            self.registry,
            task.contract,
            self._approver,
            self._recorder,
            run_id=task.run_id,
            task_id=task.task_id,
            attempt=task.attempt,
            agent_id=task.agent_id,
            bus=self._bus,
        )
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": self.spec.system_prompt},
            {"role": "user", "content": self._shown(task)},
        ]
        tools = gateway.offered()
        forced = bool(self.spec.first_tool and self.spec.first_tool_arguments)
        measured: Any = None
        if forced:
            arguments = {
                name: _pointed(task.input, pointer)
                for name, pointer in self.spec.first_tool_arguments.items()
            }
            [measured] = await self._run_calls(
                gateway, messages, "", [("call_0", self.spec.first_tool, _json(arguments))]
            )
        for iteration in range(self.spec.max_iterations):
            message = await self._complete(
                task, messages, tools, first=iteration == 0 and not forced
            )
            calls = [
                (c.id, c.function.name, c.function.arguments)
                for c in message.tool_calls or []
                if c.type == "function"
            ]
            if calls:
                await self._run_calls(gateway, messages, message.content or "", calls)
                continue
            answer = message.content or ""
            output, problem = self._output(answer)
            if output is not None:
                if forced and self.spec.first_tool_output:
                    output = {**output, self.spec.first_tool_output: measured}
                return output
            messages.append({"role": "assistant", "content": answer})
            messages.append({"role": "user", "content": f"{problem} Answer again, JSON only."})
        raise TaskError(
            f"no valid answer within {self.spec.max_iterations} model calls", retryable=False
        )

    def _shown(self, task: TaskContext) -> str:
        if not self.spec.user_input:
            return _json(task.input)
        shown = _pointed(task.input, self.spec.user_input)
        return shown if isinstance(shown, str) else _json(shown)

    @staticmethod
    async def _run_calls(
        gateway: ToolGateway,
        messages: list[dict[str, Any]],
        content: str,
        calls: list[tuple[str, str, str]],
    ) -> list[Any]:
        """Make the tool calls (id, name, JSON arguments) through the gateway, add them
        and their results to the conversation, and return the results (None if refused)."""
        messages.append(
            {
                "role": "assistant",
                "content": content,
                "tool_calls": [
                    {"id": i, "type": "function", "function": {"name": n, "arguments": a}}
                    for i, n, a in calls
                ],
            }
        )
        results: list[Any] = []
        for call_id, name, arguments in calls:
            try:
                result = await gateway.call(name, arguments)
                reply = _json({"result": result})
            except ToolError as exc:
                result, reply = None, _json({"error": str(exc)})
            results.append(result)
            messages.append({"role": "tool", "tool_call_id": call_id, "content": reply})
        return results

    def _output(self, answer: str) -> tuple[Payload | None, str]:
        if self._validator is None:
            return {"text": answer}, ""
        try:
            value = json.loads(answer)
        except ValueError as exc:
            return None, f"Your answer is not JSON ({exc})."
        errors = sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            where = "/".join(str(p) for p in errors[0].path) or "(top)"
            return None, f"Your answer does not match the schema at {where}: {errors[0].message}."
        return cast(Payload, value), ""

    def _max_tokens(self, task: TaskContext) -> int:
        assert task.contract is not None
        limit = task.contract.budget.tokens
        if not limit:
            return self.spec.max_tokens_per_call
        remaining = limit - task.usage.total
        if remaining <= 0:
            raise TaskError(f"token budget of {limit} per task is spent", retryable=False)
        return min(self.spec.max_tokens_per_call, remaining)

    async def _complete(
        self,
        task: TaskContext,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]],
        *,
        first: bool,
    ) -> Any:
        extra: dict[str, Any] = {}
        if tools:
            extra["tools"] = tools
            if first and self.spec.first_tool:
                extra["tool_choice"] = {
                    "type": "function",
                    "function": {"name": self.spec.first_tool},
                }
        schema = self.spec.output_schema
        if schema and self.spec.response_format == "json_schema":
            extra["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "answer", "schema": schema},
            }
        elif schema and self.spec.response_format == "json_object":
            extra["response_format"] = {"type": "json_object", "schema": schema}
        max_tokens = self._max_tokens(task)
        with llm_call(
            system="openai", model=self.model, meter=task.usage, max_tokens=max_tokens
        ) as call:
            try:
                response = await self._client.chat.completions.create(
                    model=self.model,
                    messages=cast(Any, messages),
                    max_tokens=max_tokens,
                    temperature=self.spec.temperature,
                    **extra,
                )
            except (
                openai.APITimeoutError,
                openai.APIConnectionError,
                openai.RateLimitError,
                openai.InternalServerError,
            ) as exc:
                raise TaskError(f"model call failed after retries: {exc}", retryable=True) from exc
            except openai.APIError as exc:
                raise TaskError(f"model call refused: {exc}", retryable=False) from exc
            if response.usage is not None:
                call.record(
                    input_tokens=response.usage.prompt_tokens,
                    output_tokens=response.usage.completion_tokens,
                    response_model=response.model or "",
                    finish_reason=response.choices[0].finish_reason if response.choices else "",
                )
        if not response.choices:
            raise TaskError("model returned no choices", retryable=True)
        return response.choices[0].message
