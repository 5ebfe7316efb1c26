"""The cost of a run, end to end: Baton's LLM agent (a real `baton agent` process on the
fake OpenAI server) announces its model in its heartbeats, the orchestrator records it
with the agent's join on a real nats-server, the agent's usage is charged, and `baton ui`
(a real process, its prices from the state directory's baton.toml) shows the run's
tokens and their cost per agent, role and model over HTTP."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import subprocess
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

pytest.importorskip(
    "starlette", reason="the console's tests need the ui extra (pip install '.[ui]')"
)

from bus.model_capability import model_capability
from eventstore import EventQuery
from orchestrator.core.events import AgentJoined
from orchestrator.core.workflow import AgentSpec, StepSpec, WorkflowSpec
from orchestrator.service import journal
from tests.cluster import baton, cluster
from tests.console_login import console_login
from tests.fake_openai import FakeOpenAI, prompt_tokens, words

MODEL = "fake-model"
ROLES = """
[[roles]]
name = "analyst"
budget = { tokens = 5000, seconds = 60 }
concurrency = 1
"""
SPEC = """
system_prompt = "You are an analyst. Answer in JSON."

[output_schema]
type = "object"
required = ["summary"]
properties.summary.type = "string"
"""
ANSWER = json.dumps({"summary": "NATS is well studied"})
PRICES = f"""
[prices."{MODEL}"]
input = 2.5
output = 10
currency = "USD"

[prices."another-model"]
input = 1
output = 1
currency = "EUR"
"""


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("OPENAI_API_KEY", "test")
        monkeypatch.setenv("BATON_LLM_MODEL", MODEL)
        yield server


def _console(state_dir: Path) -> tuple[subprocess.Popen[str], int, str]:
    """`baton ui` on the state directory: the process, its port and a session cookie."""
    process = subprocess.Popen(
        baton("ui", "--port", "0", "--state-dir", str(state_dir)),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    _, port, cookie = console_login(process)
    return process, port, cookie


def _get(port: int, path: str, cookie: str) -> str:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", path, headers={"Cookie": cookie})
        reply = connection.getresponse()
        assert reply.status == 200, reply.status
        return reply.read().decode()
    finally:
        connection.close()


def test_the_run_page_shows_an_llm_agents_model_tokens_and_cost(
    tmp_path: Path, fake: FakeOpenAI
) -> None:
    (tmp_path / "roles.toml").write_text(ROLES)
    (tmp_path / "agent.toml").write_text(SPEC)
    fake.reply(ANSWER)
    state_dir = tmp_path / "state"

    async def scenario() -> tuple[str, str, list[AgentJoined]]:
        async with cluster(state_dir, contracts=str(tmp_path / "roles.toml")) as c:
            (agent_id,) = await c.add_agents(
                [AgentSpec("analyst", str(tmp_path / "agent.toml"), capacity=1)]
            )
            workflow = WorkflowSpec("priced", [StepSpec("analyse", "analyst", timeout_s=60)])
            run_id = await c.orchestrator.start_run(workflow, {"topic": "NATS"})
            state = await c.orchestrator.wait(run_id, timeout=60)
            assert state.status == "completed", state
            stored = await c.stack.store.query(
                EventQuery(stream=journal.SYSTEM_STREAM, type_glob="agent.joined")
            )
            joins = [e for e in map(journal.decode_any, stored) if isinstance(e, AgentJoined)]
        return run_id, agent_id, joins

    run_id, agent_id, joins = asyncio.run(scenario())
    assert [j.capabilities for j in joins if j.agent_id == agent_id] == [
        ["analyst", model_capability(MODEL)]
    ], "the agent announced its configured model, recorded with its join"

    (state_dir / "baton.toml").write_text(PRICES)
    console, port, cookie = _console(state_dir)
    try:
        page = _get(port, f"/runs/{run_id}", cookie)
    finally:
        console.terminate()
        console.wait(30)

    (request,) = fake.requests
    tokens_in, tokens_out = prompt_tokens(request["messages"]), words(ANSWER)
    cost = (Decimal(tokens_in) * Decimal("2.5") + Decimal(tokens_out) * 10) / 1_000_000
    usage = re.search(r'<table class="usage">.*?</table>', page, re.S)
    assert usage, page
    row = re.search(rf'<tr data-agent="{agent_id}" data-model="{MODEL}">(.*?)</tr>', usage[0])
    assert row, usage[0]
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row[1])
    assert cells == [
        agent_id, "analyst", MODEL, "1", str(tokens_in), str(tokens_out),
        str(tokens_in + tokens_out), f"{format(cost.normalize(), 'f')} USD",
    ]  # fmt: skip
    assert "EUR" not in usage[0], "a price no usage ran on is not shown"


@pytest.mark.parametrize(
    ("toml", "env", "said"),
    [
        ('[prices.m]\ninput = -1\noutput = 1\ncurrency = "USD"\n', "",
         "baton.toml: prices: model 'm' input: -1.0 is not a price"),
        ("", '{"m": {"input": 1, "output": 1}}',
         "$BATON_PRICES: model 'm': Object missing required field `currency`"),
    ],
)  # fmt: skip
def test_a_bad_price_stops_baton_ui_with_exit_2_and_says_which(
    tmp_path: Path, toml: str, env: str, said: str
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    if toml:
        (state_dir / "baton.toml").write_text(toml)
    environ = {k: v for k, v in os.environ.items() if k != "BATON_PRICES"}
    if env:
        environ["BATON_PRICES"] = env
    done = subprocess.run(
        baton("ui", "--port", "0", "--state-dir", str(state_dir)),
        capture_output=True, text=True, timeout=60, env=environ,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert said in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in state_dir.iterdir()) == (["baton.toml"] if toml else [])
