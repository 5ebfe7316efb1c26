"""Role contracts: loaded and validated with errors that name the bad value's location,
a digest that changes with any rule, and an orchestrator that refuses (and audits) an
agent whose contract it does not know, against a real nats-server and SQLite log."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from bus import subjects
from bus.codec import encode
from bus.connection import Incoming
from bus.contract_files import load_contracts
from bus.contracts import Budget, Contracts, MemoryAccess, RoleContract
from bus.errors import ContractError
from bus.protocol import Heartbeat
from orchestrator.core.contract_check import check_roles
from orchestrator.core.errors import WorkflowError
from orchestrator.core.events import AgentJoined, AgentRefused
from orchestrator.core.workflow import (
    AgentSpec,
    Chat,
    Retry,
    StepSpec,
    WorkflowSpec,
)
from orchestrator.service import journal
from orchestrator.service.workflow_files import contracts_file, load
from tests.cluster import cluster

ROLES = """
[[roles]]
name = "researcher"
description = "finds sources"
capabilities = ["search"]
tools = ["web_search"]
memory = { read = ["run", "global"], write = ["run"] }
handoff_to = ["writer"]
budget = { tokens = 2000, seconds = 30, tool_calls = 4 }
concurrency = 2

[[roles]]
name = "writer"
tools = []
"""


def write(tmp_path: Path, text: str, name: str = "roles.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_a_contracts_file_loads_every_rule(tmp_path: Path) -> None:
    contracts = load_contracts(write(tmp_path, ROLES))
    researcher = contracts.get("researcher")
    assert researcher == RoleContract(
        name="researcher",
        description="finds sources",
        capabilities=["search"],
        tools=["web_search"],
        memory=MemoryAccess(read=["run", "global"], write=["run"]),
        handoff_to=["writer"],
        budget=Budget(tokens=2000, seconds=30.0, tool_calls=4),
        concurrency=2,
    )
    assert researcher.allows_tool("web_search")
    assert not researcher.allows_tool("shell")
    assert researcher.may_read("global")
    assert not researcher.may_write("global")
    assert researcher.may_hand_off_to("writer")
    assert not researcher.may_hand_off_to("planner")
    assert contracts.get("writer").concurrency == 4
    assert len(contracts) == 2
    assert "writer" in contracts
    assert "planner" not in contracts


@pytest.mark.parametrize(
    ("text", "location", "words"),
    [
        ('[[roles]]\nname = "a"\ncolour = "red"\n', "roles[0]", "colour"),
        ('[[roles]]\nname = "a"\nconcurrency = "many"\n', "roles[0].concurrency", "int"),
        ('[[roles]]\nname = "a"\nconcurrency = 0\n', "roles[0].concurrency", "between"),
        ('[[roles]]\nname = "a b"\n', "roles[0].name", "letters"),
        ('[[roles]]\nname = "a"\nmemory = { write = ["team"] }\n', "memory.write[0]", "team"),
        ('[[roles]]\nname = "a"\nmemory = { read = ["run", "run"] }\n', "memory.read", "twice"),
        ('[[roles]]\nname = "a"\nbudget = { tokens = -1 }\n', "budget.tokens", "positive"),
        ('[[roles]]\nname = "a"\ntools = ["x", "x"]\n', "roles[0].tools[1]", "duplicate"),
        ('[[roles]]\nname = "a"\ntools = ["rm -rf"]\n', "roles[0].tools[0]", "tool name"),
        ('[[roles]]\nname = "a"\nhandoff_to = ["b"]\n', "roles[0].handoff_to[0]", "no role"),
        ('[[roles]]\nname = "a"\n[[roles]]\nname = "a"\n', "roles[1].name", "duplicate"),
        ("roles = 3\n", "roles", "array"),
        ("[[roles]]\n", "roles[0]", "name"),
        ("[[roles]\n", "roles.toml", "TOML"),
    ],
)
def test_a_bad_contract_is_refused_naming_where(
    tmp_path: Path, text: str, location: str, words: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ContractError) as info:
        load_contracts(path)
    assert str(path) in str(info.value)
    assert location in info.value.location
    assert words.lower() in str(info.value).lower()


def test_a_missing_file_is_a_contract_error(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="no such file"):
        load_contracts(tmp_path / "nope.toml")


def test_contracts_built_in_python_are_validated_too() -> None:
    with pytest.raises(ContractError, match=r"roles\[0\]\.concurrency"):
        Contracts([RoleContract(name="a", concurrency=-2)])
    assert Contracts([RoleContract(name="a")]).get("a").name == "a"
    with pytest.raises(ContractError, match="no contract for role 'b'"):
        Contracts([RoleContract(name="a")]).get("b")


def test_the_digest_follows_every_rule_and_nothing_else() -> None:
    base = RoleContract(name="r", tools=["a"], budget=Budget(tokens=10))
    same = RoleContract(name="r", tools=["a"], budget=Budget(tokens=10))
    assert base.digest == same.digest
    assert len(base.digest) == 64
    changed = [
        RoleContract(name="r", tools=["a", "b"], budget=Budget(tokens=10)),
        RoleContract(name="r", tools=["a"], budget=Budget(tokens=11)),
        RoleContract(name="r", tools=["a"], budget=Budget(tokens=10), concurrency=5),
        RoleContract(name="r", tools=["a"], budget=Budget(tokens=10), description="x"),
    ]
    assert len({c.digest for c in changed} | {base.digest}) == 5


def test_the_verdict_names_why_an_agent_is_refused() -> None:
    contracts = Contracts([RoleContract(name="r")])
    good = contracts.get("r").digest
    assert contracts.verdict("r", good) == ""
    assert "no contract for role 'x'" in contracts.verdict("x", good)
    assert "advertises no contract" in contracts.verdict("r", "")
    assert "differs" in contracts.verdict("r", "0" * 64)
    assert "capacity 5 is over the contract's concurrency 4" in contracts.verdict("r", good, 5)
    assert contracts.verdict("r", good, 4) == ""


def test_a_workflow_whose_roles_lack_contracts_is_refused() -> None:
    contracts = Contracts([RoleContract(name="worker")])
    ok = WorkflowSpec("w", [StepSpec("s", "worker")])
    assert check_roles(ok, contracts) is ok
    with pytest.raises(WorkflowError, match=r"steps\[1\]\.role.*'boss'"):
        check_roles(WorkflowSpec("w", [StepSpec("s", "worker"), StepSpec("t", "boss")]), contracts)
    with pytest.raises(WorkflowError, match=r"agents\[0\]\.role"):
        check_roles(
            WorkflowSpec("w", [StepSpec("s", "worker")], agents=[AgentSpec("boss", "m:f")]),
            contracts,
        )
    chat = Chat(["worker", "critic"], max_turns=4, selector="agent", selector_role="chair")
    talk = WorkflowSpec("w", [StepSpec("talk", chat=chat)])
    with pytest.raises(WorkflowError, match=r"steps\[0\]\.chat\.participants\[1\].*'critic'"):
        check_roles(talk, contracts)
    with pytest.raises(WorkflowError, match=r"steps\[0\]\.chat\.selector_role.*'chair'"):
        check_roles(talk, Contracts([RoleContract(name="worker"), RoleContract(name="critic")]))
    every = Contracts([RoleContract(name=r) for r in ("worker", "critic", "chair")])
    assert check_roles(talk, every) is talk, "a group chat has no role of its own"
    retried = WorkflowSpec("w", [StepSpec("s", "worker", retry=Retry(role="senior"))])
    with pytest.raises(WorkflowError, match=r"steps\[0\]\.retry\.role.*'senior'"):
        check_roles(retried, contracts)
    with pytest.raises(WorkflowError, match=r"agents\[0\]\.capacity: 5 is over"):
        check_roles(
            WorkflowSpec("w", [StepSpec("s", "worker")], agents=[AgentSpec("worker", "m:f", 1, 5)]),
            contracts,
        )


def test_the_agent_cli_refuses_a_role_without_a_contract(tmp_path: Path) -> None:
    path = write(tmp_path, ROLES)
    done = subprocess.run(
        [sys.executable, "-m", "agents", "--role", "boss", "--contracts", str(path),
         "--nats", "nats://127.0.0.1:1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "no contract for role 'boss'" in done.stderr
    over = subprocess.run(
        [sys.executable, "-m", "agents", "--role", "researcher", "--contracts", str(path),
         "--capacity", "3", "--nats", "nats://127.0.0.1:1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert over.returncode == 2
    assert "over the contract's concurrency 2" in over.stderr


WORKER = """
[[roles]]
name = "worker"
budget = { seconds = 20 }
concurrency = 2
"""


def test_the_orchestrator_refuses_and_audits_agents_it_has_no_contract_for(
    tmp_path: Path,
) -> None:
    known = write(tmp_path, WORKER)
    other = write(tmp_path, WORKER.replace("concurrency = 2", "concurrency = 3"), "other.toml")
    spec = AgentSpec(role="worker", handler="agents.builtin:noop", capacity=2)

    async def scenario() -> None:
        async with cluster(tmp_path / "state", contracts=str(known)) as c:
            good = await c.add_agents([spec])
            forged = await c.add_agents([spec], contracts=str(other), wait=False)
            bare = await c.add_agents([spec], contracts="", wait=False)
            # the right digest, but more tasks at once than the contract allows
            digest = load_contracts(known).get("worker").digest
            greedy = Heartbeat("worker-greedy", "worker", ["worker"], 50, 0, [], digest)
            await c.stack.bus.publish(subjects.heartbeat("worker-greedy"), encode(greedy))
            stored: list[AgentRefused] = []
            async with asyncio.timeout(30):
                while len(stored) < 3:
                    events = await c.stack.store.read_stream(journal.SYSTEM_STREAM)
                    stored = [
                        e for e in map(journal.decode_any, events) if isinstance(e, AgentRefused)
                    ]
                    await asyncio.sleep(0.05)
            # more heartbeats from each refused agent: the refusal is audited once per agent
            beats: Counter[str] = Counter()

            async def count(msg: Incoming) -> None:
                beats[msg.subject.rsplit(".", 1)[1]] += 1

            heard = await c.stack.bus.subscribe(subjects.HEARTBEAT_ALL, count)
            await c.stack.bus.publish(subjects.heartbeat("worker-greedy"), encode(greedy))
            async with asyncio.timeout(30):
                while beats["worker-greedy"] < 1 or min(beats[forged[0]], beats[bare[0]]) < 3:
                    await asyncio.sleep(0.05)
            await heard.unsubscribe()
            events = await c.stack.store.read_stream(journal.SYSTEM_STREAM)
            decoded = [journal.decode_any(e) for e in events]
            routable = {a.agent_id for a in c.orchestrator.agents()}
            workflow = WorkflowSpec("w", [StepSpec("s", "worker", fan_out=6)])
            run_id = await c.orchestrator.start_run(workflow)
            state = await c.orchestrator.wait(run_id, timeout=60)

        refused = {e.agent_id: e for e in decoded if isinstance(e, AgentRefused)}
        assert set(refused) == {forged[0], bare[0], "worker-greedy"}
        assert len([e for e in decoded if isinstance(e, AgentRefused)]) == 3
        assert "capacity 50 is over the contract's concurrency 2" in refused["worker-greedy"].reason
        assert "differs" in refused[forged[0]].reason
        assert "advertises no contract" in refused[bare[0]].reason
        joined = {e.agent_id for e in decoded if isinstance(e, AgentJoined)}
        assert joined == set(good)
        assert routable == set(good)
        assert state.status == "completed"
        assert {t.agent_id for t in state.tasks.values()} == set(good)

    asyncio.run(scenario())


def test_a_workflow_file_names_its_contracts_file(tmp_path: Path) -> None:
    flow = write(
        tmp_path,
        'name = "w"\ncontracts = "roles.toml"\n[[steps]]\nid = "s"\nrole = "worker"\n',
        "flow.toml",
    )
    assert load(flow).name == "w"
    assert contracts_file(flow) == str((tmp_path / "roles.toml").resolve())
    bad = write(tmp_path, 'name = "w"\ncontracts = 3\n[[steps]]\nid = "s"\nrole = "x"\n', "b.toml")
    with pytest.raises(WorkflowError, match="contracts"):
        load(bad)
    with pytest.raises(WorkflowError, match="contracts"):
        contracts_file(bad)


def test_the_contracts_seconds_budget_bounds_an_attempt(tmp_path: Path) -> None:
    roles = write(tmp_path, '[[roles]]\nname = "slow"\nbudget = { seconds = 0.5 }\n')
    spec = AgentSpec(role="slow", handler="agents.builtin:sleep", capacity=1)
    workflow = WorkflowSpec(
        "w", [StepSpec("s", "slow", params={"seconds": 20.0}, timeout_s=60, max_attempts=1)]
    )

    async def scenario() -> str:
        async with cluster(tmp_path / "state", contracts=str(roles)) as c:
            await c.add_agents([spec])
            run_id = await c.orchestrator.start_run(workflow)
            state = await c.orchestrator.wait(run_id, timeout=30)
        assert state.status == "failed"
        return state.reason

    assert "handler exceeded 0.5s" in asyncio.run(scenario())


def test_a_step_may_allow_only_the_handoffs_its_owners_contracts_allow() -> None:
    contracts = Contracts(
        [
            RoleContract(name="editor", handoff_to=["publisher"]),
            RoleContract(name="publisher"),
            RoleContract(name="boss"),
        ]
    )
    ok = WorkflowSpec("w", [StepSpec("s", "editor", handoff_to=["publisher"])])
    assert check_roles(ok, contracts) is ok
    with pytest.raises(WorkflowError, match=r"steps\[0\]\.handoff_to\[0\]: no contract for 'x'"):
        check_roles(WorkflowSpec("w", [StepSpec("s", "editor", handoff_to=["x"])]), contracts)
    with pytest.raises(WorkflowError, match=r"role 'editor' .* does not allow a handoff to 'boss'"):
        check_roles(WorkflowSpec("w", [StepSpec("s", "editor", handoff_to=["boss"])]), contracts)
    # the publisher may own the task after a handoff, so its contract must allow the rest
    both = WorkflowSpec("w", [StepSpec("s", "editor", handoff_to=["publisher", "editor"])])
    with pytest.raises(WorkflowError, match=r"handoff_to\[1\]: role 'publisher'"):
        check_roles(both, contracts)
