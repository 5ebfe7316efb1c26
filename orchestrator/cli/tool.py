"""`baton tool approve|deny <call-id>` and `baton tool pending`: a human's side of a
governed tool call that needs approval.

The decision goes straight to the agent holding the call (request/reply on the call's
decision subject, which names that agent: `--agent`, else the agent the log records as
waiting on the call), which records it as an event before it acts on it; `pending` lists,
from the event log, the calls that wait for a decision. (`baton run --human-approval`
asks on its own terminal: `approvals`.)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from bus import loop, subjects
from bus.codec import Decoder, encode
from bus.config import Config
from bus.errors import BusError, RequestFailed
from bus.protocol import ErrorReply, ToolCallRecord, ToolDecision, ToolDecisionAck
from eventstore import EventQuery, EventStoreError
from orchestrator.cli import configured
from orchestrator.cli.observe import connect
from orchestrator.cli.reach import Reach, me, reach
from orchestrator.core.errors import OrchestratorError
from orchestrator.service import agentlog
from orchestrator.service.bootstrap import (
    DEFAULT_CONFIG,
    open_store,
    state_dir,
    store_exists,
    store_name,
    store_path,
)

_ack: Decoder[ToolDecisionAck | ErrorReply] = Decoder(ToolDecisionAck | ErrorReply)


def parser(prog: str = "baton tool") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Approve, deny or list tool calls.")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action in ("approve", "deny"):
        decide = sub.add_parser(action, help=f"{action} a tool call that waits for a human")
        decide.add_argument("call_id", help="the call id (see baton tool pending)")
        decide.add_argument("--reason", default="", help="recorded with the decision")
        decide.add_argument("--agent", default="",
                            help="the agent waiting on the call (default: the one the state "
                                 "directory's log records; see baton tool pending)")  # fmt: skip
        decide.add_argument("--by", default="",
                            help="your name (default: who the embedded server's credentials "
                                 "name, else human:<login name>)")  # fmt: skip
        decide.add_argument(
            "--nats",
            default=None,
            help="NATS URLs (default: $BATON_NATS_URL, else baton.toml's nats, else the "
            "state directory's server)",
        )
    pending = sub.add_parser("pending", help="tool calls waiting for a decision")
    pending.add_argument("--run", help="only this run")
    pending.add_argument("--json", action="store_true", help="JSON lines")
    for command in sub.choices.values():
        command.add_argument("--state-dir", help="state directory (default $BATON_STATE_DIR)")
        configured.add_flags(command)
    return p


async def decide(
    where: Reach, agent_id: str, decision: ToolDecision, timeout: float = 5.0
) -> ToolDecisionAck:
    """Send a decision to the agent holding the call; `RequestFailed` if it is not waiting."""
    bus = await connect(where, "baton-tool", timeout)
    try:
        subject = subjects.tool_decision(agent_id, decision.call_id)
        reply = await bus.request(subject, encode(decision), timeout)
    finally:
        await bus.close()
    answer = _ack.decode(reply)
    if isinstance(answer, ErrorReply):
        raise RequestFailed(f"{answer.error}: {answer.detail}")
    return answer


async def _tool_calls(directory: Path, config: Config) -> list[ToolCallRecord]:
    """Every tool call record in the log, oldest first."""
    store = await open_store(directory, config)
    try:
        stored = await store.query(EventQuery(type_glob="tool.call"))
    finally:
        await store.close()
    return agentlog.tool_calls(stored)


async def waiting(
    directory: Path, run_id: str | None = None, config: Config = DEFAULT_CONFIG
) -> list[ToolCallRecord]:
    """Calls recorded as awaiting approval with no decision recorded yet, oldest first."""
    records = await _tool_calls(directory, config)
    decided = {r.call_id for r in records if r.phase in ("approved", "denied")}
    return [
        r
        for r in records
        if r.phase == "awaiting"
        and r.call_id not in decided
        and (run_id is None or r.run_id == run_id)
    ]


async def _caller(directory: Path, call_id: str, config: Config) -> str:
    """The one agent the log records as having asked for approval of `call_id` (waiting
    still, or decided: it then says it takes no second decision), else ''."""
    if not store_exists(directory, config):
        return ""
    records = await _tool_calls(directory, config)
    agents = {r.agent_id for r in records if r.call_id == call_id and r.phase == "awaiting"}
    return agents.pop() if len(agents) == 1 else ""


async def _main(args: argparse.Namespace) -> int:
    directory = state_dir(args.state_dir)
    config: Config = args.config
    if args.action == "pending":
        if not store_exists(directory, config):
            print(f"baton tool: error: no event store at {store_path(directory, config)}",
                  file=sys.stderr)  # fmt: skip
            return 2
        calls = await waiting(directory, args.run, config)
        if not calls:
            print("no tool call waits for a decision", file=sys.stderr)
        for r in calls:
            if args.json:
                print(json.dumps({"call_id": r.call_id, "run_id": r.run_id, "task_id": r.task_id,
                                  "agent_id": r.agent_id, "tool": r.tool, "risk": r.risk,
                                  "arguments": r.arguments}))  # fmt: skip
            else:
                print(f"{r.call_id}  {r.run_id}  {r.task_id:<16} {r.agent_id:<22} "
                      f"{r.tool} ({r.risk}) {r.arguments}")  # fmt: skip
        return 0
    where = reach(args.nats, directory)
    if where is None:
        print(f"baton tool: error: nothing is running for {directory} (see --state-dir), "
              "and no --nats or $BATON_NATS_URL was given", file=sys.stderr)  # fmt: skip
        return 2
    subjects.token(args.call_id)
    agent_id = args.agent or await _caller(directory, args.call_id, config)
    if not agent_id:
        print(f"baton tool: no agent is waiting on tool call {args.call_id} as far as "
              f"{store_name(directory, config)} says (it names no single agent asking for it: "
              "name it with --agent)", file=sys.stderr)  # fmt: skip
        return 1
    by = args.by or where.identity or me()  # the agent records it as who decided
    decision = ToolDecision(args.call_id, args.action == "approve", by, args.reason)
    try:
        ack = await decide(where, subjects.token(agent_id), decision)
    except RequestFailed:
        print(f"baton tool: no agent is waiting on tool call {args.call_id}", file=sys.stderr)
        return 1
    if not ack.taken:
        print(f"baton tool: {args.call_id}: {ack.detail}", file=sys.stderr)
        return 1
    print(f"tool call {args.call_id} {'approved' if decision.approve else 'denied'}")
    return 0


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        configured.configure(args)
        return loop.run(_main(args))
    except (BusError, EventStoreError, OrchestratorError) as exc:
        print(f"baton tool: error: {exc}", file=sys.stderr)
        return 2
