"""`baton`: run a workflow on the embedded defaults, run an agent, and look into the log:
replay, fork, export/import, audit."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

from msgspec.structs import replace

from bus import loop, subjects
from bus.codec import Decoder
from bus.connection import Incoming
from bus.contract_files import load_contracts
from bus.errors import BusError
from bus.protocol import ProgressBatch
from bus.telemetry import TelemetryConfigError, configure_logging
from eventstore import EventQuery, EventStoreError, SqliteEventStore
from orchestrator.cli import control as control_cli
from orchestrator.cli import history, render
from orchestrator.cli import observe as obs_cli
from orchestrator.cli import tool as toolcli
from orchestrator.core.effects import pending_effects
from orchestrator.core.errors import AgentStartError, OrchestratorError, UnknownStore, WorkflowError
from orchestrator.core.workflow import AgentSpec, check_roles
from orchestrator.service import journal, serve
from orchestrator.service.bootstrap import Stack, bootstrap, open_store, state_dir, store_path
from orchestrator.service.launcher import AgentProcesses, resolve_handler
from orchestrator.service.service import Orchestrator, new_run_id
from orchestrator.service.workflow_files import contracts_file, load, parse_input

_progress: Decoder[ProgressBatch] = Decoder(ProgressBatch)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="baton", description="Baton: coordination layer for multi-agent systems."
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a workflow file, starting its agents and NATS")
    run.add_argument("workflow", help="workflow file: TOML, or YAML (.yaml/.yml)")
    run.add_argument("--input", default="{}", help="run input as a JSON object")

    resume = sub.add_parser("resume", help="carry on an unfinished (or forked) run")
    resume.add_argument("run_id")

    for serving in (run, resume):
        serving.add_argument("--nats", default=os.environ.get("BATON_NATS_URL", ""),
                             help="use this NATS server instead of starting one")  # fmt: skip
        serving.add_argument("--no-agents", action="store_true",
                             help="start no agents; use agents already on the bus")  # fmt: skip
        serving.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
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

    serve = sub.add_parser("serve", help="run the orchestrator alone as a service")
    serve.add_argument("--nats", default=os.environ.get("BATON_NATS_URL", ""),
                       help="use this NATS server instead of starting one")  # fmt: skip

    submit = sub.add_parser("submit", help="hand a workflow file to a serving orchestrator")
    submit.add_argument("workflow", help="workflow TOML file")
    submit.add_argument("--input", default="{}", help="run input as a JSON object")
    submit.add_argument("--nats", default=os.environ.get("BATON_NATS_URL", ""),
                        help="the NATS server the orchestrator serves on")  # fmt: skip

    sub.add_parser("agent", help="run one agent as a service (see baton agent --help)",
                   add_help=False)  # fmt: skip
    sub.add_parser("tool", help="approve, deny or list governed tool calls (baton tool --help)",
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

    import_ = sub.add_parser("import", help="add an exported run's log to this state directory")
    import_.add_argument("file", help="a file written by baton export ('-' for standard input)")

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

    control_cli.add_parsers(sub)

    for command in (run, resume, serve, replay, fork, export, import_, audit):
        command.add_argument(
            "--state-dir", help="state directory (default $BATON_STATE_DIR or .baton)"
        )
    obs_cli.add_parsers(sub)
    return p


# -- serving runs ----------------------------------------------------------------------


async def _agents_ready(
    orchestrator: Orchestrator, agents: AgentProcesses, roles: Counter[str], timeout: float
) -> None:
    """Wait for the agents to register, failing at once if one of their processes dies."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            await orchestrator.wait_for_agents(roles, timeout=0.25)
            return
        except TimeoutError:
            pass
        for agent_id, code in agents.exited().items():
            log = agents.log_dir / f"{agent_id}.log"
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
            raise AgentStartError(f"agent {agent_id} exited with {code}: {' '.join(tail)}")
        if time.monotonic() > deadline:
            raise AgentStartError(f"agents {dict(roles)} did not all register in {timeout}s")


Starter = Callable[[Stack], Awaitable[object]]


async def _serve(
    args: argparse.Namespace,
    specs: list[AgentSpec],
    run_id: str,
    start: Starter | None,
    contracts_path: str = "",
) -> int:
    """Bring up NATS, the store, the orchestrator and the agents; watch run `run_id` (after
    `start`ing it, for a new one) to its end with live progress; tear everything down."""
    directory = state_dir(args.state_dir)
    if args.human_approval:
        os.environ["BATON_TOOL_APPROVAL"] = "human:600"  # the agents started below inherit it
    contracts = load_contracts(contracts_path) if contracts_path else None
    stack = await bootstrap(directory, args.nats, contracts=contracts)
    agents = AgentProcesses(directory / "logs")
    try:
        shown = stack.nats_url.rpartition("@")[2]  # never print credentials
        print(f"baton: NATS nats://{shown.removeprefix('nats://')}, event store "
              f"{store_path(directory)}")  # fmt: skip
        if specs and not args.no_agents:
            for spec in specs:
                agents.start(
                    spec,
                    stack.nats_url,
                    Path.cwd(),
                    contracts=contracts_path,
                    url_for_agent=stack.agent_url,
                )
            roles = AgentProcesses.roles(specs)
            print(f"baton: waiting for {sum(roles.values())} agents ({', '.join(roles)})")
            await _agents_ready(stack.orchestrator, agents, roles, timeout=60)
        began = time.monotonic()

        async def show(msg: Incoming) -> None:
            since = time.monotonic() - began
            for line in _progress.decode(msg.data).lines:
                print(render.progress_line(line, since))

        await stack.bus.subscribe(subjects.progress(run_id), show)
        if args.human_approval:
            await toolcli.watch_approvals(stack.bus, run_id)
        if start is not None:
            await start(stack)
        state = stack.orchestrator.run(run_id)
        name = state.workflow.name if state.workflow else "?"
        print(f"run {run_id}: workflow {name}, {len(state.tasks)} tasks")
        state = await stack.orchestrator.wait(run_id, timeout=args.timeout)
        await asyncio.sleep(0.05)  # let the last progress lines print before the summary
        print()
        if state.status == "completed":
            print(f"run {run_id} completed; result:")
            print(json.dumps(state.result, indent=2, default=str))
        elif state.status == "stopped":
            print(f"run {run_id} stopped ({state.limit}): {state.reason}; finished so far:")
            print(json.dumps(state.result, indent=2, default=str))
        else:
            print(f"run {run_id} failed: {state.reason}")
        print(f"\nreplay it: baton replay {run_id}   audit it: baton audit --run {run_id}")
        return 0 if state.status == "completed" else 1
    finally:
        agents.stop()
        await stack.close()


async def _serve_only(args: argparse.Namespace) -> int:
    return await serve.serve(state_dir(args.state_dir), args.nats)


async def _submit(args: argparse.Namespace) -> int:
    if not args.nats:
        raise WorkflowError("--nats", "the URL of the NATS server is required (or $BATON_NATS_URL)")
    path = Path(args.workflow)
    workflow = load(path)
    run_input = parse_input(args.input)
    run_id = await serve.submit(args.nats, workflow, run_input)
    print(run_id)
    return 0


async def _run(args: argparse.Namespace) -> int:
    path = Path(args.workflow)
    workflow = load(path)
    run_input = parse_input(args.input)
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
        check_roles(workflow, load_contracts(contracts))

    run_id = new_run_id()

    async def start(stack: Stack) -> str:
        return await stack.orchestrator.start_run(workflow, run_input, run_id=run_id)

    return await _serve(args, specs, run_id, start, contracts)


async def _resume(args: argparse.Namespace) -> int:
    store = await _existing_store(args.state_dir)
    try:
        state = await journal.load_run(store, args.run_id)
    finally:
        await store.close()
    if state.terminal:
        print(f"run {args.run_id} already {state.status}; nothing to resume")
        return 0 if state.status == "completed" else 1
    specs = state.workflow.agents if state.workflow else []
    # no start: the orchestrator recovers the run from the log when it starts
    contracts = args.contracts or os.environ.get("BATON_CONTRACTS", "")
    return await _serve(args, specs, args.run_id, None, contracts)


# -- looking into the log --------------------------------------------------------------


async def _existing_store(explicit: str | None) -> SqliteEventStore:
    directory = state_dir(explicit)
    if not store_path(directory).exists():
        raise UnknownStore(f"no event store at {store_path(directory)} (see --state-dir)")
    return await open_store(directory)


async def _replay(args: argparse.Namespace, store: SqliteEventStore) -> int:
    until = await history.position_at(store, args.run_id, args.until) if args.until else None
    state = await journal.load_run(
        store, args.run_id, until_position=until, snapshots=not args.no_snapshots
    )
    print(render.run_table(state))
    if until is not None:
        print(f"\nas of global position {until}; the orchestrator would now:")
        print(render.pending(state, pending_effects(state)))
    report = await store.verify()
    if report.ok:
        print(f"\nhash chain: ok ({report.checked} events checked)")
        return 0
    print(f"\nhash chain: BROKEN at position {report.first_bad_position}: {report.reason}")
    return 1


async def _fork(args: argparse.Namespace, store: SqliteEventStore) -> int:
    at = await history.position_at(store, args.run_id, args.at)
    new_id = subjects.token(args.new_id or new_run_id())
    if await store.stream_version(journal.run_stream(new_id)):
        raise WorkflowError("--new-id", f"run {new_id} already exists")
    state = await history.fork(store, args.run_id, at, new_id, actor="cli")
    done = sum(t.status == "succeeded" for t in state.tasks.values())
    print(f"forked run {new_id} from {args.run_id} at position {at}: "
          f"{done}/{len(state.tasks)} tasks done, status {state.status}")  # fmt: skip
    print(f"carry it on: baton resume {new_id}")
    return 0


async def _export(args: argparse.Namespace, store: SqliteEventStore) -> int:
    stored = await store.read_stream(journal.run_stream(args.run_id))
    if not stored:
        raise OrchestratorError(f"no run {args.run_id!r} in the event store")
    lines = "\n".join(history.export_lines(stored)) + "\n"
    if args.output:
        Path(args.output).write_text(lines)
        print(f"exported {len(stored)} events of run {args.run_id} to {args.output}")
    else:
        sys.stdout.write(lines)
    return 0


async def _import(args: argparse.Namespace, store: SqliteEventStore) -> int:
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    run_id = await history.import_lines(store, text.splitlines())
    print(f"imported run {run_id}; see baton replay {run_id}")
    return 0


async def _audit(args: argparse.Namespace, store: SqliteEventStore) -> int:
    if args.action == "verify":
        report = await store.verify()
        if report.ok:
            print(f"hash chain: ok ({report.checked} events checked)")
            return 0
        print(f"hash chain: BROKEN at position {report.first_bad_position}: {report.reason}")
        return 1
    if args.why:
        stored = await history.why(store, args.why)
        origin = stored[-1]
        print(
            f"why {args.why}: {len(stored)} event(s), newest first; the chain began with "
            f"{origin.causation_id or 'nothing'} from {origin.actor}",
            file=sys.stderr if args.json else sys.stdout,
        )
    else:
        if args.limit < 1:
            raise WorkflowError("--limit", "must be at least 1")
        query = EventQuery(
            stream=journal.run_stream(args.run) if args.run else None,
            actor=args.actor,
            type_glob=args.type_glob,
            text=args.text,
            since=history.parse_time(args.since) if args.since else None,
            until=history.parse_time(args.until) if args.until else None,
            from_position=args.after + 1,
            limit=args.limit + 1,
        )
        stored = await store.query(query)
    more = not args.why and len(stored) > args.limit
    for event in stored[: args.limit]:
        decoded = journal.decode_any(event)
        print(render.audit_json(event, decoded) if args.json else render.audit_line(event, decoded))
    if more:
        print(f"more: --after {stored[args.limit - 1].position}", file=sys.stderr)
    return 0


_LOG_COMMANDS: dict[str, Callable[[argparse.Namespace, SqliteEventStore], Awaitable[int]]] = {
    "replay": _replay,
    "fork": _fork,
    "export": _export,
    "import": _import,
    "audit": _audit,
    "trace": obs_cli.trace,
}


async def _with_store(args: argparse.Namespace) -> int:
    if args.command == "import":
        directory = state_dir(args.state_dir)
        directory.mkdir(parents=True, exist_ok=True)
        store = await open_store(directory)
    else:
        store = await _existing_store(args.state_dir)
    try:
        return await _LOG_COMMANDS[args.command](args, store)
    finally:
        await store.close()


def _agent(argv: list[str]) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "agents", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent"]:
        return _agent(argv[1:])
    if argv[:1] == ["tool"]:
        return toolcli.main(argv[1:])
    args = _parser().parse_args(argv)
    command: Callable[[argparse.Namespace], Awaitable[int]]
    command = {
        "run": _run,
        "resume": _resume,
        "serve": _serve_only,
        "submit": _submit,
        "status": obs_cli.status,
        "agents": obs_cli.agents,
    }.get(args.command, _with_store)
    if args.command in control_cli.ACTIONS:
        command = control_cli.send
    try:
        configure_logging()
        return int(loop.run(command(args)))
    except (OrchestratorError, EventStoreError, BusError, TelemetryConfigError) as exc:
        print(f"baton {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except OSError as exc:  # a file named on the command line could not be read or written
        print(f"baton {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, TimeoutError):
        print(f"baton {args.command}: stopped", file=sys.stderr)
        return 130
