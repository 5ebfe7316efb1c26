"""`baton a2a serve`: the command line of Baton as an A2A agent (the server itself is
`orchestrator.cli.a2a_serve`, imported only when this command runs: it needs the
`interop` extra, which the rest of `baton` does without)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from bus import loop
from bus.errors import BusError
from eventstore import EventStoreError
from orchestrator.cli import configured
from orchestrator.cli.listening import is_loopback
from orchestrator.cli.reach import reach
from orchestrator.core.errors import OrchestratorError
from orchestrator.service.bootstrap import open_store, state_dir, store_exists, store_path
from orchestrator.service.workflow_files import load


def parser(prog: str = "baton a2a") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Baton and the A2A protocol.")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    serve = sub.add_parser(
        "serve",
        help="offer workflows as one A2A agent (its skills), runs on the serving orchestrator",
        description="Serve an A2A agent (JSON-RPC over HTTP, streaming) whose Agent Card "
        "offers each workflow as a skill; a message starts a run on the orchestrator that "
        "serves the bus (as `baton submit` does), idempotent on the message id; the task "
        "streams the run's progress and ends with its outputs from the log; cancelling "
        "it cancels the run. Every request but the card's needs the bearer token.",
    )
    serve.add_argument("workflows", nargs="+", metavar="WORKFLOW", help="workflow files")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s)")  # fmt: skip
    serve.add_argument("--port", type=int, default=8700,
                       help="port (default: %(default)s; 0: any free one, printed)")  # fmt: skip
    serve.add_argument("--url", default="",
                       help="the URL the card names (default: http://HOST:PORT/)")  # fmt: skip
    serve.add_argument(
        "--token-env",
        default="BATON_A2A_TOKEN",
        metavar="NAME",
        help="environment variable holding the bearer token clients must send (required; "
        "default: %(default)s)",
    )
    serve.add_argument("--allow-remote", action="store_true",
                       help="allow --host to be an address other than loopback")  # fmt: skip
    serve.add_argument("--state-dir", help="state directory (default $BATON_STATE_DIR or .baton)")
    configured.add_flags(serve)
    return p


async def _serve(args: argparse.Namespace) -> int:
    try:
        from orchestrator.cli.a2a_serve import run_server
    except ImportError as exc:
        print(f"baton a2a: error: needs the interop extra (a2a-sdk, uvicorn): {exc}",
              file=sys.stderr)  # fmt: skip
        return 2
    token = os.environ.get(args.token_env, "")
    if not token:
        print(f"baton a2a: error: ${args.token_env} is empty: set the bearer token clients "
              "must send", file=sys.stderr)  # fmt: skip
        return 2
    if not args.allow_remote and not is_loopback(args.host):
        print(f"baton a2a: error: --host {args.host} is not a loopback address; pass "
              "--allow-remote to listen there", file=sys.stderr)  # fmt: skip
        return 2
    workflows = [load(Path(w)) for w in args.workflows]
    directory = state_dir(args.state_dir)
    where = reach(args.nats, directory)
    if where is None:
        print(f"baton a2a: error: no orchestrator's NATS running for {directory} (see "
              "--state-dir, --nats)", file=sys.stderr)  # fmt: skip
        return 2
    if not store_exists(directory, args.config):
        print(f"baton a2a: error: no event store at {store_path(directory, args.config)}",
              file=sys.stderr)  # fmt: skip
        return 2
    store = await open_store(directory, args.config)

    def ready(url: str) -> None:
        names = ", ".join(w.name for w in workflows)
        print(f"serving A2A at {url} (skills: {names})", flush=True)

    try:
        await run_server(
            workflows, where, store, token=token, host=args.host, port=args.port,
            public_url=args.url, ready=ready,
        )  # fmt: skip
    finally:
        await store.close()
    return 0


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    try:
        configured.configure(args)
        return loop.run(_serve(args))
    except (BusError, EventStoreError, OrchestratorError, OSError) as exc:
        print(f"baton a2a: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
