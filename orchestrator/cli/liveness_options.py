"""The agent liveness options `baton run`, `resume` and `serve` share: how often agents
heartbeat and how long one may be silent before it is lost (its work given to others).

The orchestrator tells every agent the interval in its answer to each heartbeat, so
agents started by hand (`baton agent`) keep the same one unless given `--heartbeat`.
"""

from __future__ import annotations

import argparse
import os

from orchestrator.core.liveness import check_timing
from orchestrator.service.registry import AGENT_TTL, HEARTBEAT_S


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--heartbeat",
        type=float,
        metavar="SECONDS",
        default=os.environ.get("BATON_HEARTBEAT_S") or str(HEARTBEAT_S),
        help=f"how often agents send a heartbeat (default: $BATON_HEARTBEAT_S or {HEARTBEAT_S:g})",
    )
    parser.add_argument(
        "--agent-ttl",
        type=float,
        metavar="SECONDS",
        default=os.environ.get("BATON_AGENT_TTL") or str(AGENT_TTL),
        help="an agent silent for longer is lost and its work is given to others; after "
        "the orchestrator's own bus outage, agents get this plus one heartbeat to be heard "
        f"again (default: $BATON_AGENT_TTL or {AGENT_TTL:g})",
    )


def timing(args: argparse.Namespace) -> tuple[float, float]:
    """(agent TTL, heartbeat interval), or `LivenessConfigError` if they cannot work."""
    check_timing(args.agent_ttl, args.heartbeat)
    return args.agent_ttl, args.heartbeat
