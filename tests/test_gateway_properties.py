"""DESIGN §7.7 as a state machine over the tool gateway: a tool call outside the caller's
contract never executes.

Hypothesis draws a role contract (some registered tools, a tool it names that nobody
registered, a tool-call budget), then a sequence of calls: tools in and out of the
contract, unregistered and malformed names, valid, ill-typed, unknown-field and broken
JSON arguments, approvers that approve or deny, tools that fail. After each call the
tools that really ran (their bodies append to a list) are compared with an oracle of this
module's own: the contract as a plain set, the budget as a plain count, each tool's
approval need and argument shape written down here, never asked of the gateway. Every
call's records must start with `requested` and end in the phase its fate says.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from agents.errors import ToolArgumentsInvalid, ToolDenied, ToolError, ToolFailed, ToolRefused
from agents.gateway import ToolGateway, Verdict
from agents.tools import Tool, ToolRegistry
from bus.contracts import Budget, RoleContract
from bus.protocol import ToolCallRecord

ran: list[str] = []
registry = ToolRegistry()


@registry.tool()
async def lookup(query: str, limit: int = 1) -> str:
    ran.append("lookup")
    return query * limit


@registry.tool(risk="high", needs_approval=True)
async def transfer(to: str, amount: int) -> str:
    ran.append("transfer")
    return f"{amount} to {to}"


@registry.tool()
async def crash() -> None:
    ran.append("crash")
    raise RuntimeError("boom")


# The oracle's own table: what each name needs, written here, not read from the registry.
NEEDS_APPROVAL = {"lookup": False, "transfer": True, "crash": False}
REGISTERED = set(NEEDS_APPROVAL)
VALID_ARGUMENTS = {
    "lookup": ['{"query": "q"}', '{"query": "q", "limit": 2}'],
    "transfer": ['{"to": "bob", "amount": 3}'],
    "crash": ["{}"],
}
INVALID_ARGUMENTS = ['{"query": 3}', '{"to": "bob"}', '{"shell": "rm -rf /"}', "not json", "[1]"]
NAMES = [*REGISTERED, "ghost", "web search", "", "../../etc", "x" * 80]


class ScriptedApprover:
    """Approves or denies as the rule drew, and notes what it was asked."""

    def __init__(self) -> None:
        self.next = True
        self.asked: list[str] = []

    async def decide(self, request: ToolCallRecord, tool: Tool) -> Verdict:
        self.asked.append(request.tool)
        return Verdict(self.next, "script", "" if self.next else "no")


class Records:
    def __init__(self) -> None:
        self.records: list[ToolCallRecord] = []

    async def record(self, record: ToolCallRecord) -> None:
        self.records.append(record)


class GatewayMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.records = Records()
        self.approver = ScriptedApprover()
        self.allowed: set[str] = set()
        self.budget = 0
        self.counted = 0
        """Calls that passed the contract, budget, name and argument checks (the budget
        counts them, approved or not)."""
        self.executed: list[str] = []
        self.gateway: ToolGateway | None = None
        ran.clear()

    @initialize(
        tools=st.lists(st.sampled_from([*REGISTERED, "ghost"]), unique=True),
        budget=st.integers(0, 4),
    )
    def contract(self, tools: list[str], budget: int) -> None:
        self.allowed, self.budget = set(tools), budget
        contract = RoleContract(name="role", tools=tools, budget=Budget(tool_calls=budget))
        self.gateway = ToolGateway(
            registry, contract, self.approver, self.records,
            run_id="run", task_id="t", attempt=1, agent_id="a",
        )  # fmt: skip

    @rule(
        name=st.sampled_from(NAMES),
        valid=st.booleans(),
        approve=st.booleans(),
        data=st.data(),
    )
    def call(self, name: str, valid: bool, approve: bool, data: st.DataObject) -> None:
        assert self.gateway is not None
        good = VALID_ARGUMENTS.get(name, ["{}"])
        arguments = data.draw(st.sampled_from(good if valid else INVALID_ARGUMENTS))
        args_ok = name in VALID_ARGUMENTS and arguments in good
        self.approver.next = approve
        before_records, before_ran, before_asked = (
            len(self.records.records), len(ran), len(self.approver.asked),
        )  # fmt: skip

        in_contract = name in self.allowed
        under_budget = not self.budget or self.counted < self.budget
        checked = in_contract and under_budget and name in REGISTERED and args_ok
        should_run = checked and (approve or not NEEDS_APPROVAL[name])

        raised: ToolError | None = None
        try:
            self.loop.run_until_complete(self.gateway.call(name, arguments))
        except ToolError as exc:
            raised = exc
        calls = ran[before_ran:]
        records = self.records.records[before_records:]
        phases = [r.phase for r in records]
        assert {r.call_id for r in records} == {records[0].call_id}, "one call id per call"

        assert phases[0] == "requested", "a call is recorded before anything else happens"
        if not checked:
            assert calls == [], f"{name!r} ran though a check refuses it"
            assert isinstance(raised, ToolRefused)
            assert phases == ["requested", "refused"]
            assert len(self.approver.asked) == before_asked, "asked approval for a refused call"
            if in_contract and under_budget and name in REGISTERED:
                assert isinstance(raised, ToolArgumentsInvalid)
            return
        self.counted += 1
        if NEEDS_APPROVAL[name]:
            assert self.approver.asked[before_asked:] == [name]
            assert phases[1:3] == ["awaiting", "approved" if approve else "denied"]
        if not should_run:
            assert calls == []
            assert isinstance(raised, ToolDenied)
            assert len(phases) == 3
            return
        assert calls == [name], "a call every check allows runs exactly once"
        self.executed.append(name)
        if name == "crash":
            assert isinstance(raised, ToolFailed)
            assert phases[-1] == "failed"
        else:
            assert raised is None
            assert phases[-1] == "succeeded"

    @invariant()
    def nothing_outside_the_contract_ever_ran(self) -> None:
        assert set(ran) <= self.allowed
        assert ran == self.executed
        assert not self.budget or len(ran) <= self.budget

    def teardown(self) -> None:
        self.loop.close()


TestGateway = GatewayMachine.TestCase
TestGateway.settings = settings(max_examples=300, stateful_step_count=20, deadline=None)


def test_the_machine_reaches_every_fate() -> None:
    """The oracle is not vacuous: a fixed walk meets a refusal of each kind, a denial,
    an approval, a failure and a success."""
    m = GatewayMachine()
    m.contract(tools=["lookup", "transfer", "crash", "ghost"], budget=4)
    seen: list[Any] = []

    def step(name: str, valid: bool, approve: bool, arguments: str) -> None:
        class Data:
            def draw(self, strategy: Any) -> str:
                return arguments

        m.call(name, valid, approve, Data())
        seen.append(m.records.records[-1].phase)
        m.nothing_outside_the_contract_ever_ran()

    step("ghost", True, True, "{}")
    step("nobody", True, True, "{}")
    step("lookup", False, True, "not json")
    step("lookup", True, True, '{"query": "q"}')
    step("transfer", True, False, '{"to": "bob", "amount": 3}')
    step("transfer", True, True, '{"to": "bob", "amount": 3}')
    step("crash", True, True, "{}")
    step("lookup", True, True, '{"query": "q"}')  # the budget of 4 is spent
    m.teardown()
    assert seen == ["refused", "refused", "refused", "succeeded", "denied", "succeeded",
                    "failed", "refused"]  # fmt: skip
    assert ran == ["lookup", "transfer", "crash"]
