"""Command line of one agent process: which role, which handler, which bus."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

import private
from agents.errors import AgentError, InteropMissing, LlmConfigError
from agents.gateway import ApprovalPolicy, BusRecorder
from agents.runtime import AgentRuntime
from agents.sdk import Handler, HandlerNotFound, load_bidder, load_handler, load_object
from agents.tools import ToolRegistry
from bus import config_files
from bus.config import ConfigError
from bus.connection import Bus
from bus.contract_files import load_contracts
from bus.contracts import RoleContract
from bus.errors import BusError, InvalidSubjectToken
from bus.model_capability import announcing
from bus.nats_options import NKEY_ENV
from bus.permissions import inbox_prefix
from bus.server import PARENT_ENV, parent_gone

if TYPE_CHECKING:
    from agents.a2a_bridge import A2ABridge
    from agents.localmodel import LocalModel
from bus import loop
from bus.subjects import token
from bus.telemetry import Telemetry, TelemetryConfigError, configure_logging

OPEN_BUS = (
    "the NATS server let this agent in without a login: whoever reaches it may send it "
    "work or act as it; give it a login there (docs/deploy.md, baton nats-users)"
)


def parser(prog: str = "baton agent") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Run one Baton agent as a service.")
    p.add_argument("--role", required=True, help="the role this agent serves")
    p.add_argument(
        "--handler",
        default="agents.builtin:noop",
        help="async handler, 'module:function' or 'file.py:function', or an LLM agent "
        "spec 'agent.toml' (default: %(default)s)",
    )
    p.add_argument(
        "--approval",
        default=os.environ.get("BATON_TOOL_APPROVAL", "policy:medium"),
        help="who approves tool calls that need it: policy[:low|medium|high], "
        "human[:timeout_s] (baton tool approve|deny) or deny (default: $BATON_TOOL_APPROVAL "
        "or %(default)s)",
    )
    p.add_argument(
        "--a2a",
        default="",
        metavar="URL",
        help="bridge a remote A2A agent: its Agent Card's base URL (instead of --handler; "
        "a workflow's [[agents]] says handler = 'a2a:URL'); its skills must cover the role's "
        "capabilities; a bearer token is read from --a2a-token-env",
    )
    p.add_argument(
        "--a2a-token-env",
        default="BATON_A2A_TOKEN",
        metavar="NAME",
        help="environment variable holding the A2A agent's bearer token (default: %(default)s)",
    )
    p.add_argument("--id", dest="agent_id", help="agent id (default: <role>-<random>)")
    p.add_argument(
        "--nats",
        default=None,
        help="NATS URLs, comma-separated (default: $BATON_NATS_URL, else ./baton.toml's nats)",
    )
    p.add_argument(
        "--nats-file",
        default="",
        metavar="FILE",
        help="this agent's login: a NATS URL with its user and password (`baton admit`), or "
        "a user nkey seed (`baton creds issue`; then --nats gives the address)",
    )
    p.add_argument(
        "--contracts",
        default=os.environ.get("BATON_CONTRACTS", ""),
        help="role contracts TOML file; the agent enforces and advertises its role's "
        "contract (default: $BATON_CONTRACTS)",
    )
    p.add_argument(
        "--capacity",
        type=int,
        default=None,
        help="tasks run at once (default: the contract's concurrency, else 4)",
    )
    p.add_argument("--capabilities", default="", help="comma-separated; default: the role")
    p.add_argument(
        "--heartbeat",
        type=float,
        default=None,
        help="seconds between heartbeats (default: the interval the orchestrator names in "
        "its answer to each heartbeat; 0.5 until it answers)",
    )
    p.add_argument("--bidder", default="",
                   help="contract-net bidder, like --handler (default: bid the load)")  # fmt: skip
    return p


async def _serve(args: argparse.Namespace, contract: RoleContract | None) -> int:
    agent_id = args.agent_id or f"{args.role}-{secrets.token_hex(3)}"
    telemetry = Telemetry.from_env(f"baton-agent-{args.role}")
    telemetry.install_global()  # handler code may use opentelemetry.trace.get_tracer
    make: Callable[[Bus], Handler]
    local: LocalModel | None = None
    bridge: A2ABridge | None = None
    model = ""  # an LLM agent's, announced in its heartbeats (`model:<name>`)
    if args.handler.endswith(".toml"):
        # imported only here: the openai client alone takes ~0.3 s to import
        from agents.llm import LlmAgent, load_registry, load_spec, model_for
        from agents.localmodel import MODEL_ALIAS, LocalModel, gguf_path

        if contract is None:
            raise LlmConfigError("--contracts", "an LLM agent runs only under a role contract")
        spec = load_spec(args.handler)
        llm_tools = load_registry(spec.tools)
        await llm_tools.resolve()  # the tools of the MCP servers it declares
        policy = ApprovalPolicy.parse(args.approval)
        if not (spec.base_url or os.environ.get("OPENAI_BASE_URL")):
            gguf_path()  # no endpoint: the embedded model, if it is installed
            local = LocalModel()
            base_url = await local.start()
            model = spec.model or os.environ.get("BATON_LLM_MODEL") or MODEL_ALIAS
            spec = msgspec.structs.replace(spec, base_url=base_url, model=model)
            print(f"agent {agent_id}: local model {model} at {base_url}", file=sys.stderr)
        model = model_for(spec)

        def make(bus: Bus) -> Handler:
            return LlmAgent(spec, llm_tools, policy.approver(bus), BusRecorder(bus), bus=bus)

        registry = None
    elif args.a2a:
        try:  # imported only here: the interop extra
            from agents.a2a_bridge import A2ABridge
        except ImportError as exc:
            raise InteropMissing(f"--a2a needs the interop extra (a2a-sdk): {exc}") from exc

        capabilities = contract.capabilities if contract else None
        wanted = capabilities or [c for c in args.capabilities.split(",") if c] or [args.role]
        bridge = A2ABridge(args.a2a, token=os.environ.get(args.a2a_token_env, ""))
        card = await bridge.start(wanted)
        print(f"agent {agent_id}: bridging A2A agent {card.name!r} at {args.a2a}",
              file=sys.stderr)  # fmt: skip

        def make(bus: Bus) -> Handler:
            return bridge

        registry = None
    else:
        loaded = load_handler(args.handler)
        registry = handler_tools(args.handler)
        if registry is not None:
            await registry.resolve()  # the tools of the MCP servers it declares

        def make(bus: Bus) -> Handler:
            return loaded

    bus = await Bus.connect(args.nats, name=agent_id, inbox_prefix=inbox_prefix(agent_id))
    try:
        handler = make(bus)
        runtime = AgentRuntime(
            bus,
            agent_id=agent_id,
            role=args.role,
            handler=handler,
            capabilities=announcing(
                [c for c in args.capabilities.split(",") if c] or [args.role], model
            ),
            capacity=args.capacity or (contract.concurrency if contract else 4),
            heartbeat_s=args.heartbeat,
            bidder=load_bidder(args.bidder) if args.bidder else None,
            telemetry=telemetry,
            contract=contract,
            tools=registry,
            approver=ApprovalPolicy.parse(args.approval).approver(bus),
        )
        if bus.needs_no_login:  # never on the embedded server: it asks every client for one
            print(f"agent {agent_id}: {OPEN_BUS}", file=sys.stderr, flush=True)
        print(f"agent {agent_id} serving role {args.role}", file=sys.stderr, flush=True)
        watch = asyncio.create_task(_stop_with_parent(runtime))
        try:
            await runtime.run()
        finally:
            watch.cancel()
    finally:
        await bus.close()
        telemetry.shutdown()
        if local is not None:
            local.stop()
        if bridge is not None:
            await bridge.close()
    return 0


async def _stop_with_parent(runtime: AgentRuntime) -> None:
    """Stop (drain) when the process that started this agent (`PARENT_ENV`) is gone."""
    with contextlib.suppress(ValueError):
        await parent_gone(int(os.environ.pop(PARENT_ENV, "")))
        print(f"agent {runtime.agent_id}: the process that started it is gone; stopping",
              file=sys.stderr, flush=True)  # fmt: skip
        runtime.stop()


def handler_tools(ref: str) -> ToolRegistry | None:
    """The `tools` registry of a handler's module, if it has one: the tools its handlers
    may call through `task.tools` (still only those its role contract allows)."""
    target, _, _ = ref.rpartition(":")
    try:
        found = load_object(f"{target}:tools")
    except HandlerNotFound:
        return None
    return found if isinstance(found, ToolRegistry) else None


def main(argv: list[str] | None = None, prog: str = "baton agent") -> int:
    private.restrict_umask()  # whatever this process or a library makes: never for others
    args = parser(prog).parse_args(argv)
    if args.handler.startswith("a2a:"):  # a workflow's [[agents]] handler = "a2a:URL"
        args.a2a = args.handler.removeprefix("a2a:")
    try:  # ./baton.toml, then the environment, then --nats (see bus.config)
        config = config_files.load([Path(".")], {"nats": args.nats})
    except ConfigError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    args.nats = config.nats_url
    os.environ.update({name: value for name, value in config.environ().items() if value})
    if args.nats_file:
        try:
            login = Path(args.nats_file).read_text().strip()
        except OSError as exc:
            print(f"{prog}: error: --nats-file: {exc}", file=sys.stderr)
            return 2
        if login.startswith("SU"):  # a user nkey seed (`baton creds issue`): no address in it
            os.environ[NKEY_ENV] = str(Path(args.nats_file).absolute())
            if not args.nats:
                print(f"{prog}: error: --nats-file holds a user nkey seed, which says no "
                      "address: give --nats URL too (baton creds issue printed it)",
                      file=sys.stderr)  # fmt: skip
                return 2
        else:
            args.nats = login
    if not args.nats:
        print(f"{prog}: error: --nats, --nats-file or $BATON_NATS_URL is required",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.heartbeat is not None and not 0 < args.heartbeat < 3600:
        print(f"{prog}: error: --heartbeat must be between 0 and 3600 seconds", file=sys.stderr)
        return 2
    if args.capacity is not None and args.capacity < 1:
        print(f"{prog}: error: --capacity must be at least 1", file=sys.stderr)
        return 2
    try:
        configure_logging()
        token(args.role)
        if args.agent_id:
            token(args.agent_id)
        contract = load_contracts(args.contracts).get(args.role) if args.contracts else None
        if contract is not None and (args.capacity or 0) > contract.concurrency:
            print(
                f"{prog}: error: --capacity {args.capacity} is over the contract's "
                f"concurrency {contract.concurrency}",
                file=sys.stderr,
            )
            return 2
        return loop.run(_serve(args, contract))
    except (
        HandlerNotFound,
        InvalidSubjectToken,
        BusError,
        AgentError,
        ValueError,
        TelemetryConfigError,
    ) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
