"""The LLM agent's tool-calling loop through the official `openai` client against the
deterministic fake server (tests/fake_openai.py): tool calls governed by the contract,
untrusted model output validated, budgets turned into `max_tokens`, usage charged,
transient errors retried, and the loop bounded."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from agents.errors import LlmConfigError
from agents.gateway import PolicyApprover
from agents.llm import LlmAgent, LlmSpec, load_spec, parse_spec
from agents.sdk import TaskContext, TaskError
from agents.tools import ToolRegistry
from bus.contracts import Budget, RoleContract
from bus.protocol import ToolCallRecord, Usage
from tests.fake_openai import FakeOpenAI, embed, prompt_tokens, words

ran: list[str] = []
tools = ToolRegistry()


@tools.tool()
async def lookup(topic: str) -> dict[str, str]:
    """Facts about a topic."""
    ran.append(f"lookup:{topic}")
    return {"topic": topic, "fact": f"{topic} is well studied"}


@tools.tool(risk="high")
async def delete_everything(confirm: bool) -> str:
    ran.append("delete_everything")
    return "deleted"


SCHEMA = {
    "type": "object",
    "properties": {"summary": {"type": "string"}, "confidence": {"type": "number"}},
    "required": ["summary", "confidence"],
    "additionalProperties": False,
}
CONTRACT = RoleContract(
    name="analyst", tools=["lookup"], budget=Budget(tokens=1000, tool_calls=3), concurrency=2
)


class Records:
    def __init__(self) -> None:
        self.records: list[ToolCallRecord] = []

    async def record(self, record: ToolCallRecord) -> None:
        self.records.append(record)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    ran.clear()
    with FakeOpenAI() as server:
        yield server


def agent(
    fake: FakeOpenAI, records: Records | None = None, **spec: Any
) -> tuple[LlmAgent, Records]:
    records = records or Records()
    fields: dict[str, Any] = {
        "system_prompt": "You are an analyst.",
        "model": "fake-model",
        "output_schema": SCHEMA,
        "max_retries": 2,
        "request_timeout_s": 5.0,
        **spec,
    }
    client = openai.AsyncOpenAI(
        base_url=fake.base_url,
        api_key="test",
        timeout=fields["request_timeout_s"],
        max_retries=fields["max_retries"],
    )
    return LlmAgent(LlmSpec(**fields), tools, PolicyApprover(), records, client), records


def task(contract: RoleContract | None = CONTRACT) -> TaskContext:
    return TaskContext("run1", "t1", "analyse", 1, "analyst", "a1", {"topic": "NATS"}, contract)


ANSWER = json.dumps({"summary": "NATS is well studied", "confidence": 0.9})


def test_the_fake_server_speaks_openai_chat_tools_streaming_and_embeddings(
    fake: FakeOpenAI,
) -> None:
    fake.reply("hello there world").call("lookup", {"topic": "x"}).reply("streamed reply here")

    async def scenario() -> None:
        client = openai.AsyncOpenAI(base_url=fake.base_url, api_key="k", max_retries=0)
        first = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "say hi"}]
        )
        assert first.choices[0].message.content == "hello there world"
        assert first.usage is not None
        assert (first.usage.prompt_tokens, first.usage.completion_tokens) == (3, 3)
        second = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "use a tool"}]
        )
        call = (second.choices[0].message.tool_calls or [])[0]
        assert call.type == "function"
        assert (call.function.name, json.loads(call.function.arguments)) == (
            "lookup",
            {"topic": "x"},
        )
        assert second.choices[0].finish_reason == "tool_calls"
        stream = await client.chat.completions.create(
            model="m",
            messages=[{"role": "user", "content": "stream"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        parts, usage = [], None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
            usage = chunk.usage or usage
        assert "".join(parts) == "streamed reply here"
        assert usage is not None
        assert usage.completion_tokens == 3
        vectors = await client.embeddings.create(model="e", input=["a b", "a b", "zebra"])
        a, b, z = (d.embedding for d in vectors.data)
        assert a == b == embed("a b")
        assert a != z

    asyncio.run(scenario())


def test_the_loop_calls_a_tool_then_answers_to_the_schema(fake: FakeOpenAI) -> None:
    fake.call("lookup", {"topic": "NATS"}).reply(ANSWER)
    llm, records = agent(fake)
    ctx = task()
    output = asyncio.run(llm(ctx))

    assert output == {"summary": "NATS is well studied", "confidence": 0.9}
    assert ran == ["lookup:NATS"]
    first, second = fake.requests
    assert [t["function"]["name"] for t in first["tools"]] == ["lookup"], "only allowed tools"
    assert first["messages"][0] == {"role": "system", "content": "You are an analyst."}
    assert json.loads(first["messages"][1]["content"]) == {"topic": "NATS"}
    assert first["response_format"]["json_schema"]["schema"] == SCHEMA
    assistant, tool_reply = second["messages"][2], second["messages"][3]
    assert assistant["content"] == "", "assistant messages carry '' content, never null"
    assert assistant["tool_calls"][0]["function"]["name"] == "lookup"
    assert tool_reply["role"] == "tool"
    assert tool_reply["tool_call_id"] == assistant["tool_calls"][0]["id"]
    assert json.loads(tool_reply["content"])["result"]["fact"] == "NATS is well studied"
    # usage is the sum of what the server reported for both calls
    assert ctx.usage.report() == Usage(
        input_tokens=prompt_tokens(first["messages"]) + prompt_tokens(second["messages"]),
        output_tokens=words('{"topic": "NATS"}') + words(ANSWER),
    )
    assert first["max_tokens"] == 512
    assert [r.phase for r in records.records] == ["requested", "succeeded"]


def test_a_prompt_injected_call_outside_the_contract_is_refused_and_audited(
    fake: FakeOpenAI,
) -> None:
    fake.call("delete_everything", {"confirm": True}).reply(ANSWER)
    llm, records = agent(fake)
    assert asyncio.run(llm(task()))["summary"] == "NATS is well studied"
    assert ran == [], "the tool never ran"
    refused = [r for r in records.records if r.phase == "refused"]
    assert len(refused) == 1
    assert refused[0].tool == "delete_everything"
    assert "not allowed" in refused[0].detail
    told = json.loads(fake.requests[1]["messages"][3]["content"])
    assert "not allowed by the 'analyst' contract" in told["error"]


def test_invalid_tool_arguments_never_reach_the_tool(fake: FakeOpenAI) -> None:
    fake.call("lookup", '{"topic": 42, "sudo": true}').reply(ANSWER)
    llm, records = agent(fake)
    asyncio.run(llm(task()))
    assert ran == []
    assert records.records[-1].phase == "refused"
    assert "invalid arguments" in json.loads(fake.requests[1]["messages"][3]["content"])["error"]


def test_an_answer_off_the_schema_is_sent_back_and_only_a_valid_one_accepted(
    fake: FakeOpenAI,
) -> None:
    fake.reply("not json at all").reply('{"summary": "x"}').reply(ANSWER)
    llm, _ = agent(fake)
    assert asyncio.run(llm(task()))["confidence"] == 0.9
    assert len(fake.requests) == 3
    assert "not JSON" in fake.requests[1]["messages"][-1]["content"]
    assert "'confidence' is a required property" in fake.requests[2]["messages"][-1]["content"]


def test_the_loop_is_bounded(fake: FakeOpenAI) -> None:
    for _ in range(5):
        fake.call("lookup", {"topic": "again"})
    llm, _ = agent(fake, max_iterations=3)
    contract = RoleContract(name="analyst", tools=["lookup"])
    with pytest.raises(TaskError, match="within 3 model calls") as info:
        asyncio.run(llm(task(contract)))
    assert not info.value.retryable
    assert len(fake.requests) == 3


def test_the_token_budget_sets_max_tokens_and_stops_the_loop(fake: FakeOpenAI) -> None:
    fake.call("lookup", {"topic": "NATS"}).reply(" ".join(["word"] * 40)).reply(ANSWER)
    contract = RoleContract(name="analyst", tools=["lookup"], budget=Budget(tokens=30))
    llm, _ = agent(fake)
    ctx = task(contract)
    with pytest.raises(TaskError, match="token budget of 30 per task is spent") as info:
        asyncio.run(llm(ctx))
    assert not info.value.retryable
    assert fake.requests[0]["max_tokens"] == 30
    spent = prompt_tokens(fake.requests[0]["messages"]) + words('{"topic": "NATS"}')
    assert fake.requests[1]["max_tokens"] == 30 - spent
    assert len(fake.requests) == 2, "no third call once the budget is spent"
    assert ctx.usage.total >= 30


def test_the_tool_call_budget_holds_inside_the_loop(fake: FakeOpenAI) -> None:
    for _ in range(4):
        fake.call("lookup", {"topic": "t"})
    fake.reply(ANSWER)
    llm, records = agent(fake)
    asyncio.run(llm(task()))
    assert len(ran) == 3
    assert [r.phase for r in records.records].count("refused") == 1


def test_transient_errors_and_timeouts_are_retried_within_limits(fake: FakeOpenAI) -> None:
    fake.fail(500).fail(429).reply(ANSWER)
    llm, _ = agent(fake)
    assert asyncio.run(llm(task()))["summary"]
    assert len(fake.requests) == 3

    fake.requests.clear()
    fake.stall(1.5).reply(ANSWER).reply(ANSWER)  # the stalled request's late answer, the retry's
    slow, _ = agent(fake, request_timeout_s=0.5, max_retries=1)
    assert asyncio.run(slow(task()))["confidence"] == 0.9
    assert len(fake.requests) == 2, "the timed-out call was retried once"


def test_retries_are_bounded_and_then_the_attempt_fails_retryably(fake: FakeOpenAI) -> None:
    fake.fail(503, times=3)
    llm, _ = agent(fake, max_retries=2)
    with pytest.raises(TaskError, match="after retries") as info:
        asyncio.run(llm(task()))
    assert info.value.retryable
    assert len(fake.requests) == 3
    fake.fail(400)
    again, _ = agent(fake, max_retries=2)
    with pytest.raises(TaskError, match="refused") as refused:
        asyncio.run(again(task()))
    assert not refused.value.retryable
    assert len(fake.requests) == 4, "a 400 is not retried"


def test_named_tool_choice_and_json_object_format_for_small_models(fake: FakeOpenAI) -> None:
    fake.call("lookup", {"topic": "NATS"}).reply(ANSWER)
    llm, _ = agent(fake, first_tool="lookup", response_format="json_object")
    asyncio.run(llm(task()))
    first, second = fake.requests
    assert first["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert "tool_choice" not in second
    assert first["response_format"] == {"type": "json_object", "schema": SCHEMA}


def test_the_first_tool_call_can_be_made_for_the_model_on_the_real_input(
    fake: FakeOpenAI,
) -> None:
    """With `first_tool_arguments` the agent calls the tool itself, through the gateway,
    on values taken from the assignment's input, and the model sees the call and result."""
    fake.reply(ANSWER)
    llm, _ = agent(
        fake,
        first_tool="lookup",
        first_tool_arguments={"topic": "/topic"},
        first_tool_output="looked_up",
        user_input="/topic",
    )
    ran.clear()
    measured = {"topic": "NATS", "fact": "NATS is well studied"}
    assert asyncio.run(llm(task())) == {**json.loads(ANSWER), "looked_up": measured}
    assert ran == ["lookup:NATS"], "the tool ran once, on the input's topic"
    [request] = fake.requests
    assert "tool_choice" not in request, "no model turn is spent on forcing the call"
    [call] = next(m for m in request["messages"] if m["role"] == "assistant")["tool_calls"]
    assert json.loads(call["function"]["arguments"]) == {"topic": "NATS"}
    assert [m["content"] for m in request["messages"] if m["role"] == "user"] == ["NATS"]
    [result] = [m for m in request["messages"] if m["role"] == "tool"]
    assert json.loads(result["content"]) == {
        "result": {"topic": "NATS", "fact": "NATS is well studied"}
    }


def test_a_first_tool_argument_missing_from_the_input_fails_the_task(fake: FakeOpenAI) -> None:
    llm, _ = agent(fake, first_tool="lookup", first_tool_arguments={"topic": "/deps/x/text"})
    with pytest.raises(TaskError, match="nothing at /deps/x/text") as info:
        asyncio.run(llm(task()))
    assert not info.value.retryable
    assert fake.requests == []


def test_an_llm_agent_needs_a_contract(fake: FakeOpenAI) -> None:
    llm, _ = agent(fake)
    with pytest.raises(TaskError, match="role contract"):
        asyncio.run(llm(task(contract=None)))


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({}, "system_prompt"),
        ({"system_prompt": " "}, "system_prompt"),
        ({"system_prompt": "x", "max_iterations": 0}, "max_iterations"),
        ({"system_prompt": "x", "temperature": "hot"}, "temperature"),
        ({"system_prompt": "x", "output_schema": {"type": 3}}, "output_schema"),
        ({"system_prompt": "x", "output_schema": {"type": "string"}}, "output_schema.type"),
        ({"system_prompt": "x", "response_format": "xml"}, "response_format"),
        ({"system_prompt": "x", "colour": "red"}, "(top)"),
        ({"system_prompt": "x", "first_tool_arguments": {"a": "/x"}}, "first_tool_arguments"),
        (
            {"system_prompt": "x", "first_tool": "t", "first_tool_arguments": {"a": "x"}},
            "first_tool_arguments.a",
        ),
        ({"system_prompt": "x", "first_tool": "t", "first_tool_output": "k"}, "first_tool_output"),
        ({"system_prompt": "x", "user_input": "deps"}, "user_input"),
    ],
)
def test_a_bad_llm_spec_is_refused_naming_where(data: dict[str, Any], where: str) -> None:
    with pytest.raises(LlmConfigError) as info:
        parse_spec(data)
    assert info.value.location == where


def test_a_spec_file_resolves_its_tools_next_to_it(tmp_path: Path) -> None:
    (tmp_path / "agent.toml").write_text('system_prompt = "hi"\ntools = "tools.py:registry"\n')
    spec = load_spec(tmp_path / "agent.toml")
    assert spec.tools == f"{(tmp_path / 'tools.py').resolve()}:registry"
    (tmp_path / "bad.toml").write_text("system_prompt = \n")
    with pytest.raises(LlmConfigError, match="not valid TOML"):
        load_spec(tmp_path / "bad.toml")
    with pytest.raises(LlmConfigError, match="model"):
        LlmAgent(LlmSpec("hi"), tools, PolicyApprover(), Records())
