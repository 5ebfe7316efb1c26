"""`baton conformance --role R --nats URL`: drive an agent (in any language) through the
wire protocol's cases and say, case by case, whether it passes and why (the kit itself
is `orchestrator.service.conformance`). Exits 0 only if no case failed."""

from __future__ import annotations

import argparse
import json
import sys

from bus.connection import Bus
from bus.contract_files import load_contracts
from orchestrator.service.conformance import CASES, CaseResult, Kit, Settings

EXIT_FAILED = 1


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "conformance",
        help="check an agent against the wire protocol, case by case",
        description="Plays the orchestrator's side of docs/protocol.md against one agent "
        "on a bus where no orchestrator serves. Start the agent first, with a handler that "
        "waits params.seconds (baton agent --handler agents.builtin:sleep). Drain, the last "
        "case, stops the agent. Exits 0 only if no case failed, 1 if one did.",
    )
    p.add_argument("--role", required=True, help="the role the agent serves")
    p.add_argument(
        "--nats",
        default=None,
        help="NATS URL, with a login that may act as the orchestrator (default: "
        "$BATON_NATS_URL, else baton.toml's nats)",
    )
    p.add_argument(
        "--agent",
        default="",
        metavar="ID",
        help="the agent to check (default: the first of the role to heartbeat)",
    )
    p.add_argument(
        "--case",
        action="append",
        choices=CASES,
        dest="cases",
        metavar="CASE",
        help=f"run only this case (repeatable; join runs always): {', '.join(CASES)}",
    )
    p.add_argument(
        "--contracts",
        default="",
        help="role contracts file: the agent must advertise its role's digest",
    )
    p.add_argument(
        "--login",
        default="",
        metavar="FILE",
        help="the login the agent was given (baton admit URL file, creds or nkey "
        "seed file): check the server makes it log in (else skipped)",
    )
    p.add_argument(
        "--join-timeout",
        type=float,
        default=10.0,
        help="seconds to wait for the agent's first heartbeat (default 10)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")


async def conformance(args: argparse.Namespace) -> int:
    if not args.nats:
        print("baton conformance: error: --nats or $BATON_NATS_URL is required", file=sys.stderr)
        return 2
    settings = Settings(
        role=args.role,
        agent_id=args.agent,
        cases=tuple(args.cases or CASES),
        contracts=load_contracts(args.contracts) if args.contracts else None,
        login=args.login,
        nats_url=args.nats,
        join_timeout=args.join_timeout,
    )
    bus = await Bus.connect(args.nats, name="baton-conformance")
    try:
        results = await Kit(bus, settings).run()
    finally:
        await bus.close()
    passed = all(r.status != "fail" for r in results)
    print(_json(results, passed) if args.json else _table(results, passed), flush=True)
    return 0 if passed else EXIT_FAILED


def _table(results: list[CaseResult], passed: bool) -> str:
    width = max(len(r.case) for r in results)
    lines = [f"{r.status.upper():4}  {r.case:{width}}  {r.reason}" for r in results]
    failed = [r.case for r in results if r.status == "fail"]
    lines.append("conformant" if passed else f"not conformant: {', '.join(failed)} failed")
    return "\n".join(lines)


def _json(results: list[CaseResult], passed: bool) -> str:
    cases = [
        {"case": r.case, "status": r.status, "reason": r.reason, "seconds": round(r.seconds, 3)}
        for r in results
    ]
    return json.dumps({"passed": passed, "cases": cases})
