"""Command line of one agent process: which role, which handler, which bus."""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import sys

from agents.runtime import AgentRuntime
from agents.sdk import HandlerNotFound, load_bidder, load_handler
from bus.connection import Bus
from bus.errors import BusError, InvalidSubjectToken
from bus.subjects import token
from bus.telemetry import Telemetry, TelemetryConfigError, configure_logging


def parser(prog: str = "baton agent") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run one Baton agent as a service.")
    p.add_argument("--role", required=True, help="the role this agent serves")
    p.add_argument(
        "--handler",
        default="agents.builtin:noop",
        help="async handler, 'module:function' or 'file.py:function' (default: %(default)s)",
    )
    p.add_argument("--id", dest="agent_id", help="agent id (default: <role>-<random>)")
    p.add_argument(
        "--nats",
        default=os.environ.get("BATON_NATS_URL", ""),
        help="NATS URL (default: $BATON_NATS_URL)",
    )
    p.add_argument("--capacity", type=int, default=4, help="tasks run at once (default: 4)")
    p.add_argument("--capabilities", default="", help="comma-separated; default: the role")
    p.add_argument("--heartbeat", type=float, default=0.5, help="seconds between heartbeats")
    p.add_argument("--bidder", default="",
                   help="contract-net bidder, like --handler (default: bid the load)")  # fmt: skip
    return p


async def _serve(args: argparse.Namespace) -> int:
    handler = load_handler(args.handler)
    agent_id = args.agent_id or f"{args.role}-{secrets.token_hex(3)}"
    telemetry = Telemetry.from_env(f"baton-agent-{args.role}")
    telemetry.install_global()  # handler code may use opentelemetry.trace.get_tracer
    bus = await Bus.connect(args.nats, name=agent_id)
    try:
        runtime = AgentRuntime(
            bus,
            agent_id=agent_id,
            role=args.role,
            handler=handler,
            capabilities=[c for c in args.capabilities.split(",") if c] or None,
            capacity=args.capacity,
            heartbeat_s=args.heartbeat,
            bidder=load_bidder(args.bidder) if args.bidder else None,
            telemetry=telemetry,
        )
        print(f"agent {agent_id} serving role {args.role}", file=sys.stderr, flush=True)
        await runtime.run()
    finally:
        await bus.close()
        telemetry.shutdown()
    return 0


def main(argv: list[str] | None = None, prog: str = "baton agent") -> int:
    args = parser(prog).parse_args(argv)
    if not args.nats:
        print(f"{prog}: error: --nats or $BATON_NATS_URL is required", file=sys.stderr)
        return 2
    if args.capacity < 1:
        print(f"{prog}: error: --capacity must be at least 1", file=sys.stderr)
        return 2
    try:
        configure_logging()
        token(args.role)
        if args.agent_id:
            token(args.agent_id)
        return asyncio.run(_serve(args))
    except (HandlerNotFound, InvalidSubjectToken, BusError, TelemetryConfigError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
