"""`baton`: the parser of every command, and the commands that run workflows (run,
resume, serve); handing one to a serving orchestrator is `submit`, looking into the log
`log_commands`, talking to a running orchestrator `control` and `observe`."""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from msgspec.structs import replace

import private
from bus import loop, subjects
from bus.codec import Decoder
from bus.connection import Incoming
from bus.contract_files import load_contracts
from bus.errors import BusError, ContractError
from bus.protocol import ProgressBatch
from bus.telemetry import TelemetryConfigError, configure_logging
from eventstore import EventStoreError
from orchestrator.cli import (
    a2a_cli,
    approvals,
    audit_verify,
    liveness_options,
    log_commands,
    render,
    unserved,
)
from orchestrator.cli import conformance as conformance_cli
from orchestrator.cli import contracts as contracts_cli
from orchestrator.cli import control as control_cli
from orchestrator.cli import creds as creds_cli
from orchestrator.cli import nats_users as nats_users_cli
from orchestrator.cli import observe as obs_cli
from orchestrator.cli import submit as submit_cli
from orchestrator.cli import tool as toolcli
from orchestrator.cli.configured import SERVE_NATS_HELP, add_flags_to, configure
from orchestrator.cli.console import command as console_cli
from orchestrator.cli.durations import seconds
from orchestrator.cli.reach import shown
from orchestrator.core.contract_check import check_roles
from orchestrator.core.errors import (
    AgentStartError,
    OrchestratorError,
    WorkflowError,
)
from orchestrator.core.state import RunState
from orchestrator.core.workflow import AgentSpec, ContractsRef
from orchestrator.service import journal, serve
from orchestrator.service.bootstrap import Stack, bootstrap, state_dir, store_name
from orchestrator.service.launcher import AgentProcesses, resolve_handler
from orchestrator.service.service import Orchestrator, new_run_id
from orchestrator.service.workflow_files import contracts_file, input_arg, load

_progress: Decoder[ProgressBatch] = Decoder(ProgressBatch)
INPUT_HELP = "run input as a JSON object, or @FILE to read it from a file (@- standard input)"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="baton", description="Baton: coordination layer for multi-agent systems.", epilog=EXITS
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser(
        "run", help="run a workflow file, starting its agents and NATS", epilog=EXITS
    )
    run.add_argument("workflow", help="workflow file: TOML, or YAML (.yaml/.yml)")
    run.add_argument("--input", default="{}", help=INPUT_HELP)

    resume = sub.add_parser("resume", help="carry on an unfinished (or forked) run", epilog=EXITS)
    resume.add_argument("run_id")

    for serving in (run, resume):
        serving.add_argument("--nats", default=None,
                             help=SERVE_NATS_HELP)  # fmt: skip
        serving.add_argument("--no-agents", action="store_true",
                             help="start no agents; use agents already on the bus")  # fmt: skip
        serving.add_argument("--timeout", type=seconds, default=300.0,
                             help="seconds for all of it, agents' start included (default "
                                  "300); an unfinished run exits 4")  # fmt: skip
        serving.add_argument(
            "--human-approval",
            action="store_true",
            help="agents ask you here (or baton tool approve|deny) before a tool that needs "
            "approval runs, instead of their policy",
        )
        serving.add_argument(
            "--contracts",
            default="",
            help="role contracts TOML: agents must advertise these (default: the workflow "
            "file's `contracts`, else $BATON_CONTRACTS)",
        )

    serve = sub.add_parser(
        "serve",
        help="run the orchestrator alone as a service",
        description="Run the orchestrator alone as a service. On a SQLite log one may serve "
        'it; on a JetStream log (store = "jetstream") several, on several machines, '
        "share the runs by partition and take over each other's when one dies "
        "(docs/deploy.md).",
    )
    serve.add_argument("--nats", default=None,
                       help=SERVE_NATS_HELP)  # fmt: skip
    console_cli.add_serve_flags(serve)

    submit = sub.add_parser("submit", help="hand a workflow file to a serving orchestrator")
    submit.add_argument("workflow", help="workflow TOML file")
    submit.add_argument("--input", default="{}", help=INPUT_HELP)
    submit.add_argument("--nats", default=None,
                        help="the NATS servers the orchestrator serves on (default: "
                             "$BATON_NATS_URL, baton.toml's nats, else the embedded "
                             "server of --state-dir, as you)")  # fmt: skip
    submit.add_argument("--request-id", default="",
                        help="makes the submit idempotent: sent again with the same id, it is "
                             "answered with the run it started (default: a new id, which the "
                             "command's own retries reuse)")  # fmt: skip
    submit.add_argument("--timeout", type=seconds, default=10.0,
                        help="seconds to keep trying for an answer (default 10)")  # fmt: skip

    sub.add_parser("agent", help="run one agent as a service (see baton agent --help)",
                   add_help=False)  # fmt: skip
    sub.add_parser("tool", help="approve, deny or list governed tool calls (baton tool --help)",
                   add_help=False)  # fmt: skip
    sub.add_parser("a2a", help="serve workflows as an A2A agent (baton a2a serve --help)",
                   add_help=False)  # fmt: skip

    replay = sub.add_parser("replay", help="rebuild a run's state from the event log")
    replay.add_argument("run_id")
    replay.add_argument("--until", metavar="POINT",
                        help="a global position, or a time (ISO 8601 or Unix seconds)")  # fmt: skip
    replay.add_argument("--no-snapshots", action="store_true", help="replay from the first event")

    fork = sub.add_parser("fork", help="start a new run from a past point of another")
    fork.add_argument("run_id")
    fork.add_argument("--at", required=True, metavar="POINT", help="a global position or a time")
    fork.add_argument("--new-id", default="", help="id of the new run (default: generated)")

    export = sub.add_parser("export", help="write a run's log as JSON lines")
    export.add_argument("run_id")
    export.add_argument("-o", "--output", help="file (default: standard output)")

    import_, blobs = log_commands.add_parsers(sub)

    audit = sub.add_parser("audit", help="list events, walk causes, verify the hash chain")
    audit.add_argument("action", nargs="?", choices=["verify"],
                       help="'verify': check the whole log's hash chain")  # fmt: skip
    audit.add_argument("--run", help="only this run")
    audit.add_argument(
        "--actor", "--agent", dest="actor", help="only events by this agent id, orchestrator, cli"
    )
    audit.add_argument("--type", dest="type_glob", help="event type glob, e.g. 'task.*'")
    audit.add_argument("--since", help="recorded at or after (ISO 8601 or Unix seconds)")
    audit.add_argument("--until", help="recorded before (ISO 8601 or Unix seconds)")
    audit.add_argument("--text", help="only events whose payload contains this text")
    audit.add_argument("--why", metavar="EVENT",
                       help="the causation chain of an event (position or event id)")  # fmt: skip
    audit.add_argument("--limit", type=int, default=1000, help="events per page (default 1000)")
    audit.add_argument("--after", type=int, default=0, metavar="POSITION",
                       help="the page after this global position")  # fmt: skip
    audit.add_argument("--json", action="store_true", help="JSON lines instead of a table")
    audit_verify.add_arguments(audit)

    control_cli.add_parsers(sub)
    creds_cli.add_parser(sub)
    nats_users_cli.add_parser(sub)
    conformance_cli.add_parser(sub)
    contracts_cli.add_parser(sub)
    console_cli.add_parser(sub)

    for serving in (run, resume, serve):
        liveness_options.add_arguments(serving)

    for command in (run, resume, serve, submit, replay, fork, export, import_, audit, blobs):
        command.add_argument(
            "--state-dir", help="state directory (default $BATON_STATE_DIR or .baton)"
        )
    obs_cli.add_parsers(sub)
    add_flags_to(sub.choices)
    return p


# -- serving runs ----------------------------------------------------------------------


EXIT_CODES = {"completed": 0, "failed": 1, "stopped": 3}
"""What `baton run` and `baton resume` exit with, by how the run ended (now or before)."""
EXIT_ERROR = 2
EXIT_UNFINISHED = 4
EXIT_INTERRUPTED = 130
EXITS = (
    "exit codes of run and resume: 0 the run completed; 1 it failed; 3 it stopped at a "
    "limit (tokens, deadline, steps...) or was cancelled; 4 it had not ended within "
    "--timeout (it stays recorded: baton resume <run> carries it on); 2 an error (a bad "
    "argument, file or workflow, no NATS, no store); 130 interrupted"
)


AGENT_GRACE_S = 5.0
"""How long agents get to exit after the run ended (they are idle, flushing telemetry)
before they are killed; after a timeout or an interrupt they get `CUT_SHORT_GRACE_S`."""
CUT_SHORT_GRACE_S = 0.5


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())


async def _agents_ready(
    orchestrator: Orchestrator, agents: AgentProcesses, roles: Counter[str], timeout: float
) -> None:
    """Wait for the agents to register, failing at once if one of their processes dies."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await orchestrator.wait_for_agents(roles, timeout=min(0.25, timeout))
            return
        except TimeoutError:
            pass
        for agent_id, code in agents.exited().items():
            log = agents.log_dir / f"{agent_id}.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise AgentStartError(f"agent {agent_id} exited with {code}: {' '.join(tail)}")
        if time.monotonic() > deadline:
            raise AgentStartError(f"agents {dict(roles)} did not all register in {timeout:.1f}s")


def _where(args: argparse.Namespace) -> str:
    """The options another `baton` command needs to find this one's orchestrator."""
    where = f" --state-dir {shlex.quote(args.state_dir)}" if args.state_dir else ""
    return where + (f" --nats {shown(args.nats)}" if args.nats else "")


def escalation_hint(args: argparse.Namespace, run_id: str, task_id: str) -> str:
    """The commands a person runs (from another terminal) to decide an escalated task."""
    target = f"{run_id} {shlex.quote(task_id)}{_where(args)}"
    return (
        f"  task {task_id} waits for a person; from another terminal run one of:\n"
        f"    baton approve {target} --output '{{}}'\n"
        f"    baton reject {target} --note 'why'\n"
        f"    baton retry {target}"
    )


Starter = Callable[[Stack], Awaitable[object]]


async def _serve(
    args: argparse.Namespace,
    specs: list[AgentSpec],
    run_id: str,
    start: Starter | None,
    contracts_path: str = "",
) -> int:
    """Bring up NATS, the store, the orchestrator and the agents; watch run `run_id` (after
    `start`ing it, for a new one) to its end with live progress; tear everything down.
    `--timeout` bounds all of it, the agents' start included."""
    deadline = time.monotonic() + args.timeout
    directory = state_dir(args.state_dir)
    if args.human_approval:
        os.environ["BATON_TOOL_APPROVAL"] = "human:600"  # the agents started below inherit it
    contracts = load_contracts(contracts_path) if contracts_path else None
    ttl, heartbeat_s = liveness_options.timing(args)
    stack = await bootstrap(
        directory,
        args.nats,
        contracts=contracts,
        agent_ttl=ttl,
        heartbeat_s=heartbeat_s,
        config=args.config,
    )
    agents = AgentProcesses(directory / "logs")
    asking: approvals.Approvals | None = None
    grace = CUT_SHORT_GRACE_S  # until the run has ended
    try:
        print(
            f"baton: NATS {shown(stack.nats_url)}, event store {store_name(directory, args.config)}"
        )
        began = [time.monotonic()]

        async def show(msg: Incoming) -> None:
            since = time.monotonic() - began[0]
            for line in _progress.decode(msg.data).lines:
                print(render.progress_line(line, since))
                if line.event == "task.escalated":
                    print(escalation_hint(args, run_id, line.task_id))

        # watched from the start: a resumed run's recovery dispatches before agents are up
        await stack.bus.subscribe(subjects.progress(run_id), show)
        if args.human_approval:
            asking = await approvals.watch(stack.bus, run_id)
        if specs and not args.no_agents:
            for spec in specs:
                agents.start(
                    spec,
                    stack.nats_url,
                    Path.cwd(),
                    heartbeat_s=heartbeat_s,
                    contracts=contracts_path,
                    url_for_agent=stack.agent_url,
                )
            roles = AgentProcesses.roles(specs)
            print(f"baton: waiting for {sum(roles.values())} agents ({', '.join(roles)})")
            await _agents_ready(
                stack.orchestrator, agents, roles, timeout=min(60.0, _remaining(deadline))
            )
        try:
            if start is not None:
                began[0] = time.monotonic()
                async with asyncio.timeout(_remaining(deadline)):
                    await start(stack)
            state = stack.orchestrator.run(run_id)
            name = state.workflow.name if state.workflow else "?"
            print(f"run {run_id}: workflow {name}, {len(state.tasks)} tasks")
            for task_id in (t for t, task in state.tasks.items() if task.status == "escalated"):
                print(escalation_hint(args, run_id, task_id))  # escalated before a resume
            state = await stack.orchestrator.wait(run_id, timeout=_remaining(deadline))
        except TimeoutError:
            print(_unfinished(args, run_id, stack), flush=True)
            return EXIT_UNFINISHED
        except asyncio.CancelledError:  # Ctrl-C: asyncio cancels the command
            print(f"\nrun {run_id} interrupted; it stays recorded: carry it on with "
                  f"baton resume {run_id}{_where(args)}", flush=True)  # fmt: skip
            raise
        grace = AGENT_GRACE_S
        await asyncio.sleep(0.05)  # let the last progress lines print before the summary
        print()
        print(render.ended(state, _where(args)), end="")
        print(f"\nreplay it: baton replay {run_id}   audit it: baton audit --run {run_id}")
        return EXIT_CODES[state.status]
    finally:
        if asking is not None:
            await asking.close()
        await asyncio.to_thread(agents.stop, grace)
        await stack.close()


def _unfinished(args: argparse.Namespace, run_id: str, stack: Stack) -> str:
    """What a run past `--timeout` tells: that, why it may be so, and what to run next."""
    down = f"; NATS at {shown(stack.nats_url)} is unreachable (it was being reconnected)"
    why = ("" if stack.bus.connected else down) + unserved.waiting(stack, run_id)
    return (
        f"\nrun {run_id} had not ended after {args.timeout:g}s (--timeout){why}; it stays "
        f"recorded: carry it on with baton resume {run_id}{_where(args)}"
    )


async def _serve_only(args: argparse.Namespace) -> int:
    ttl, heartbeat_s = liveness_options.timing(args)
    return await serve.serve(
        state_dir(args.state_dir),
        args.nats,
        agent_ttl=ttl,
        heartbeat_s=heartbeat_s,
        config=args.config,
        beside=console_cli.beside_serve(args) if args.ui else None,
    )


async def _run(args: argparse.Namespace) -> int:
    path = Path(args.workflow)
    workflow = load(path)
    run_input = input_arg(args.input)
    # handler files are recorded by absolute path, so `baton resume` can restart agents
    specs = [
        replace(
            a,
            handler=resolve_handler(a.handler, path.parent),
            bidder=resolve_handler(a.bidder, path.parent) if a.bidder else "",
        )
        for a in workflow.agents
    ]
    workflow = replace(workflow, agents=specs)
    contracts = args.contracts or contracts_file(path) or os.environ.get("BATON_CONTRACTS", "")
    if contracts:
        known = load_contracts(contracts)
        # recorded with the run, so a resume (of it, or of a fork) governs by them too
        governing = ContractsRef(str(Path(contracts).resolve()), known.digest)
        workflow = replace(check_roles(workflow, known), governed_by=governing)

    if (unlisted := unserved.unlisted(workflow, path)) and not args.no_agents:
        print(unlisted)
    run_id = new_run_id()

    async def start(stack: Stack) -> str:
        return await stack.orchestrator.start_run(workflow, run_input, run_id=run_id)

    return await _serve(args, specs, run_id, start, contracts)


async def _resume(args: argparse.Namespace) -> int:
    store = await log_commands.existing_store(args)
    try:
        state = await journal.load_run(store, args.run_id)
    finally:
        await store.close()
    if state.terminal:
        print(f"run {args.run_id} already {state.status}; nothing to resume")
        return EXIT_CODES[state.status]
    specs = state.workflow.agents if state.workflow else []
    contracts = _governing(args, state)
    # no start: the orchestrator recovers the run from the log when it starts
    return await _serve(args, specs, args.run_id, None, contracts)


def _governing(args: argparse.Namespace, state: RunState) -> str:
    """The contracts file to resume `state` under: `--contracts` or `$BATON_CONTRACTS` if
    given, else the one the run records (which must still say what it said then). Refused
    before anything is dispatched if it cannot be had, or lacks a role the run needs."""
    assert state.workflow is not None
    recorded = state.workflow.governed_by
    chosen = args.contracts or os.environ.get("BATON_CONTRACTS", "")
    path = chosen or (recorded.path if recorded is not None else "")
    if not path:
        return ""
    try:
        contracts = load_contracts(path)
    except ContractError as exc:
        if chosen:
            raise
        raise WorkflowError(
            "--contracts",
            f"run {state.run_id} is governed by the role contracts in {exc}; pass "
            "--contracts FILE with those contracts",
        ) from None
    # a run started before protocol v1 recorded the digest taken the old way
    known = (contracts.digest, contracts.legacy_digest)
    if recorded is not None and not chosen and recorded.digest not in known:
        raise WorkflowError(
            "--contracts",
            f"run {state.run_id} is governed by the role contracts in {path}, which no "
            f"longer says what it said when the run started (digest {contracts.digest[:12]}, "
            f"was {recorded.digest[:12]}); restore it, or pass --contracts FILE to govern the "
            "run by another",
        )
    check_roles(state.workflow, contracts)
    return path


def _agent(argv: list[str]) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "agents", *argv])


def main(argv: list[str] | None = None) -> int:
    private.restrict_umask()  # whatever this process or a library makes: never for others
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent"]:
        return _agent(argv[1:])
    if argv[:1] == ["tool"]:
        return toolcli.main(argv[1:])
    if argv[:1] == ["a2a"]:
        return a2a_cli.main(argv[1:])
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], Awaitable[int]]
    command = {
        "run": _run,
        "resume": _resume,
        "serve": _serve_only,
        "submit": submit_cli.submit,
        "status": obs_cli.status,
        "health": obs_cli.health,
        "agents": obs_cli.agents,
        "admit": creds_cli.admit,
        "creds": creds_cli.creds,
        "nats-users": nats_users_cli.nats_users,
        "conformance": conformance_cli.conformance,
        "contracts": contracts_cli.contracts,
        "ui": console_cli.ui,
    }.get(args.command, log_commands.with_store)
    if args.command in control_cli.ACTIONS:
        command = control_cli.send
    try:
        configure(args)  # a bad baton.toml, variable or flag: exit 2, nothing done
        configure_logging()
        return int(loop.run(command(args)))
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except TimeoutError as exc:  # an OSError too: said before the one below
        said = f": {exc}" if str(exc) else ""
        print(f"baton {args.command}: error: timed out{said}", file=sys.stderr)
        return EXIT_ERROR
    except (OrchestratorError, EventStoreError, BusError, TelemetryConfigError, OSError) as exc:
        # OSError: a file named on the command line could not be read or written
        said = str(exc) or type(exc).__name__
        print(f"baton {args.command}: error: {said}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"baton {args.command}: stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
