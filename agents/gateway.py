"""The tool gateway: the one way an agent's code (or its model) calls a tool.

Every call is checked, in this order, before anything runs: the tool is in the caller's
role contract, the task's tool-call budget is not spent, the tool exists, its arguments
decode against its schema, and, when the tool needs approval, a policy or a human
approves it. The request, the decision and the outcome are each recorded (durably,
through the orchestrator's inbox) before the next step happens, so a call that was
refused never ran and a call that ran is always in the log (DESIGN §7.7).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any, Literal, Protocol

import msgspec

from agents.errors import ToolDenied, ToolFailed, ToolRefused
from agents.outbox import note_inbox_write
from agents.telemetry import tool_call
from agents.tools import RISKS, Risk, Tool, ToolRegistry
from bus import subjects
from bus.codec import Decoder, encode
from bus.connection import Bus, Incoming
from bus.contracts import RoleContract
from bus.errors import BusError, NoResponders
from bus.protocol import (
    ErrorReply,
    ToolCallRecord,
    ToolDecision,
    ToolDecisionAck,
    ToolInvocation,
    ToolOutcome,
    ToolPhase,
)

log = logging.getLogger("baton.tools")
_ARGUMENTS_SHOWN = 2048
_decision: Decoder[ToolDecision] = Decoder(ToolDecision)
_outcome: Decoder[ToolOutcome | ErrorReply] = Decoder(ToolOutcome | ErrorReply)


class Recorder(Protocol):
    """Where the gateway's records go; returns once the record is durable."""

    async def record(self, record: ToolCallRecord) -> None: ...


class BusRecorder:
    """Records into the orchestrator's durable inbox, deduplicated per call and phase."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def record(self, record: ToolCallRecord) -> None:
        note_inbox_write(record.call_id)
        await self._bus.publish_durable(
            subjects.inbox(record.run_id, record.agent_id),
            encode(record),
            msg_id=f"{record.run_id}:{record.task_id}:{record.attempt}:tool:"
            f"{record.call_id}:{record.phase}",
        )


class Verdict:
    """An approver's answer."""

    __slots__ = ("approve", "by", "reason")

    def __init__(self, approve: bool, by: str, reason: str = "") -> None:
        self.approve = approve
        self.by = by
        self.reason = reason


class Approver(Protocol):
    """Decides on a call to a tool that needs approval."""

    async def decide(self, request: ToolCallRecord, tool: Tool) -> Verdict: ...


class PolicyApprover:
    """Approves tools up to a risk level without asking anyone; denies the rest."""

    def __init__(self, max_risk: Risk = "medium") -> None:
        if max_risk not in RISKS:
            raise ValueError(f"max_risk must be one of {RISKS}")
        self.max_risk = max_risk

    async def decide(self, request: ToolCallRecord, tool: Tool) -> Verdict:
        by = f"policy:risk<={self.max_risk}"
        if RISKS.index(tool.risk) <= RISKS.index(self.max_risk):
            return Verdict(True, by)
        return Verdict(False, by, f"risk {tool.risk} is over {self.max_risk}")


class HumanApprover:
    """Waits for `baton tool approve|deny <call-id>` on the call's decision subject (which
    names this agent: no other agent can read it); asks for approval on its own approval
    subject, which the orchestrator checks against the run's assignments and passes on to
    `baton run`'s prompt. Nobody answering within `timeout_s` is a denial."""

    def __init__(self, bus: Bus, timeout_s: float = 300.0) -> None:
        self._bus = bus
        self.timeout_s = timeout_s

    async def decide(self, request: ToolCallRecord, tool: Tool) -> Verdict:
        answer: asyncio.Future[Verdict] = asyncio.get_running_loop().create_future()

        async def on_decision(msg: Incoming) -> None:
            try:
                decision = _decision.decode(msg.data)
            except BusError as exc:
                await msg.reply(encode(ToolDecisionAck(request.call_id, False, str(exc))))
                return
            taken = decision.call_id == request.call_id and not answer.done()
            if taken:
                answer.set_result(Verdict(decision.approve, decision.by, decision.reason))
            detail = "" if taken else "not waiting for this decision"
            await msg.reply(encode(ToolDecisionAck(request.call_id, taken, detail)))

        subscription = await self._bus.subscribe(
            subjects.tool_decision(request.agent_id, request.call_id), on_decision
        )
        try:
            await self._bus.publish(
                subjects.tool_approval(request.run_id, request.agent_id), encode(request)
            )
            async with asyncio.timeout(self.timeout_s):
                return await answer
        except TimeoutError:
            return Verdict(False, "timeout", f"no decision within {self.timeout_s}s")
        finally:
            await subscription.unsubscribe()


class ToolGateway:
    """One task attempt's governed access to the tools its role contract allows."""

    def __init__(
        self,
        registry: ToolRegistry,
        contract: RoleContract,
        approver: Approver,
        recorder: Recorder,
        *,
        run_id: str,
        task_id: str,
        attempt: int,
        agent_id: str,
        new_id: Callable[[], str] = lambda: secrets.token_hex(8),
        bus: Bus | None = None,
        remote_timeout_s: float = 60.0,
    ) -> None:
        self.registry = registry
        self.contract = contract
        self._approver = approver
        self._recorder = recorder
        self._where = (run_id, task_id, attempt, agent_id)
        self._new_id = new_id
        self._bus = bus
        self.remote_timeout_s = remote_timeout_s
        self.calls_made = 0

    def offered(self) -> list[dict[str, Any]]:
        """OpenAI tool specs of the tools this caller may use."""
        return self.registry.openai_specs(self.contract.tools)

    async def _record(self, call_id: str, tool: str, phase: ToolPhase, **extra: str) -> None:
        run_id, task_id, attempt, agent_id = self._where
        record = ToolCallRecord(run_id, task_id, attempt, agent_id, call_id, tool, phase, **extra)
        await self._recorder.record(record)

    async def call(
        self, name: str, arguments: str | bytes | dict[str, Any], call_id: str = ""
    ) -> Any:
        """Run the tool if every check passes; else the typed refusal, after recording it.
        `arguments` is the JSON object text a model produced, or a dict from Python code."""
        call_id = subjects.token(call_id) if call_id else self._new_id()
        if isinstance(arguments, dict):
            arguments = msgspec.json.encode(arguments)
        text = arguments if isinstance(arguments, str) else arguments.decode(errors="replace")
        shown = text[:_ARGUMENTS_SHOWN]
        tool_name = name if _plain(name) else "(invalid name)"
        await self._record(call_id, tool_name, "requested", arguments=shown)
        try:
            tool, parsed = self._check(name, arguments)
        except ToolRefused as exc:
            await self._record(call_id, tool_name, "refused", detail=exc.reason)
            with tool_call(tool_name, decision="refused", reason=exc.reason, call_id=call_id):
                raise
        self.calls_made += 1
        if tool.needs_approval:
            run_id, task_id, attempt, agent_id = self._where
            request = ToolCallRecord(
                run_id, task_id, attempt, agent_id, call_id, tool.name, "awaiting",
                risk=tool.risk, arguments=shown,
            )  # fmt: skip
            await self._recorder.record(request)
            verdict = await self._approver.decide(request, tool)
            phase: ToolPhase = "approved" if verdict.approve else "denied"
            await self._record(call_id, tool.name, phase, by=verdict.by, detail=verdict.reason)
            if not verdict.approve:
                denied = f"denied by {verdict.by}: {verdict.reason}"
                with tool_call(tool.name, decision="denied", reason=denied, call_id=call_id):
                    raise ToolDenied(tool.name, denied)
        decision = "approved" if tool.needs_approval else "allowed"
        try:
            with tool_call(tool.name, decision=decision, call_id=call_id):
                if tool.remote:
                    result = await self._remote(tool, call_id, parsed)
                else:
                    result = await tool.run(parsed)
        except Exception as exc:
            await self._record(call_id, tool.name, "failed", detail=f"{type(exc).__name__}: {exc}")
            raise ToolFailed(tool.name, f"{type(exc).__name__}: {exc}") from exc
        await self._record(call_id, tool.name, "succeeded", detail=repr(result)[:_ARGUMENTS_SHOWN])
        return result

    async def _remote(self, tool: Tool, call_id: str, parsed: msgspec.Struct) -> Any:
        if self._bus is None:
            raise RuntimeError(f"tool {tool.name!r} is served on the bus, and no bus was given")
        run_id, task_id, attempt, agent_id = self._where
        invocation = ToolInvocation(
            run_id, task_id, attempt, agent_id, call_id, msgspec.json.encode(parsed).decode()
        )
        reply = await self._request(subjects.tool_call(tool.name), encode(invocation))
        outcome = _outcome.decode(reply)
        if isinstance(outcome, ErrorReply):
            raise RuntimeError(f"{outcome.error}: {outcome.detail}")
        if not outcome.ok:
            raise RuntimeError(outcome.error)
        return outcome.result

    async def _request(self, subject: str, data: bytes) -> bytes:
        """Request within `remote_timeout_s`; while nobody serves the tool (a service
        restarting or scaling), ask again with a short backoff rather than fail at once."""
        assert self._bus is not None
        deadline = time.monotonic() + self.remote_timeout_s
        pause = 0.05
        while True:
            left = deadline - time.monotonic()
            try:
                return await self._bus.request(subject, data, max(left, 0.001))
            except NoResponders:
                if left <= pause:
                    raise
                await asyncio.sleep(pause)
                pause = min(2 * pause, 1.0)

    def _check(self, name: str, arguments: str | bytes) -> tuple[Tool, Any]:
        if not self.contract.allows_tool(name):
            raise ToolRefused(name, f"not allowed by the {self.contract.name!r} contract")
        limit = self.contract.budget.tool_calls
        if limit and self.calls_made >= limit:
            raise ToolRefused(name, f"tool-call budget of {limit} per task is spent")
        tool = self.registry.get(name)
        return tool, tool.decode(arguments)


def _plain(name: str) -> bool:
    try:
        subjects.token(name)
    except BusError:
        return False
    return len(name) <= 64


class ApprovalPolicy(msgspec.Struct, frozen=True):
    """Who approves the calls that need it, parsed from `policy[:<max risk>]`,
    `human[:<timeout seconds>]` or `deny` (`baton agent --approval`)."""

    kind: Literal["policy", "human", "deny"]
    max_risk: Risk = "medium"
    timeout_s: float = 300.0

    @classmethod
    def parse(cls, text: str) -> ApprovalPolicy:
        kind, _, arg = text.partition(":")
        if kind == "policy":
            risk = arg or "medium"
            if risk not in RISKS:
                raise ValueError(f"approval {text!r}: risk must be one of {', '.join(RISKS)}")
            return cls("policy", max_risk=risk)
        if kind == "human":
            try:
                timeout = float(arg) if arg else 300.0
            except ValueError:
                raise ValueError(f"approval {text!r}: timeout must be a number") from None
            if not timeout > 0:
                raise ValueError(f"approval {text!r}: timeout must be positive")
            return cls("human", timeout_s=timeout)
        if kind == "deny" and not arg:
            return cls("deny")
        raise ValueError(f"approval {text!r}: expected policy[:risk], human[:seconds] or deny")

    def approver(self, bus: Bus) -> Approver:
        if self.kind == "policy":
            return PolicyApprover(self.max_risk)
        if self.kind == "human":
            return HumanApprover(bus, self.timeout_s)
        return DenyAll()


class DenyAll:
    """Denies every call that needs approval (nobody is there to give it)."""

    async def decide(self, request: ToolCallRecord, tool: Tool) -> Verdict:
        return Verdict(False, "policy:deny", "this agent runs with approval 'deny'")
