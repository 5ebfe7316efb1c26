"""`baton`: run a workflow on the embedded defaults, run an agent, replay and audit runs."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bus import subjects
from bus.codec import Decoder
from bus.connection import Incoming
from bus.errors import BusError
from bus.protocol import Progress
from eventstore import EventQuery, EventStoreError, SqliteEventStore
from orchestrator import journal, render
from orchestrator.bootstrap import bootstrap, open_store, state_dir, store_path
from orchestrator.errors import AgentStartError, OrchestratorError, UnknownStore, WorkflowError
from orchestrator.launcher import AgentProcesses
from orchestrator.service import Orchestrator, new_run_id
from orchestrator.workflow import load

_progress: Decoder[Progress] = Decoder(Progress)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="baton",
        description="Baton: coordination layer for multi-agent systems.",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a workflow file, starting its agents and NATS")
    run.add_argument("workflow", help="workflow TOML file")
    run.add_argument("--input", default="{}", help="run input as a JSON object")
    run.add_argument("--nats", default=os.environ.get("BATON_NATS_URL", ""),
                     help="use this NATS server instead of starting one")  # fmt: skip
    run.add_argument("--no-agents", action="store_true",
                     help="start no agents; wait for agents already on the bus")  # fmt: skip
    run.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")

    sub.add_parser("agent", help="run one agent as a service (see baton agent --help)",
                   add_help=False)  # fmt: skip

    replay = sub.add_parser("replay", help="rebuild a run's state from the event log")
    replay.add_argument("run_id")
    replay.add_argument("--until", type=int, help="global position to stop at (time travel)")

    audit = sub.add_parser("audit", help="list events from the log, one line each")
    audit.add_argument("--run", help="only this run")
    audit.add_argument("--agent", help="only events whose actor is this agent")
    audit.add_argument("--type", dest="type_glob", help="event type glob, e.g. 'task.*'")
    audit.add_argument("--limit", type=int, help="at most this many events")
    audit.add_argument("--json", action="store_true", help="JSON lines instead of a table")

    for command in (run, replay, audit):
        command.add_argument(
            "--state-dir", help="state directory (default $BATON_STATE_DIR or .baton)"
        )
    return p


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


async def _run(args: argparse.Namespace) -> int:
    path = Path(args.workflow)
    workflow = load(path)
    try:
        run_input = json.loads(args.input)
        if not isinstance(run_input, dict):
            raise ValueError("not an object")
    except ValueError as exc:
        raise WorkflowError("--input", f"must be a JSON object: {exc}") from exc
    directory = state_dir(args.state_dir)
    stack = await bootstrap(directory, args.nats)
    agents = AgentProcesses(directory / "logs")
    try:
        if not args.no_agents:
            for spec in workflow.agents:
                agents.start(spec, stack.nats_url, path.parent)
        roles = AgentProcesses.roles(workflow.agents) if workflow.agents else None
        print(f"baton: NATS {stack.nats_url}, event store {store_path(directory)}")
        if roles:
            print(f"baton: waiting for {sum(roles.values())} agents ({', '.join(roles)})")
            await _agents_ready(stack.orchestrator, agents, roles, timeout=60)
        run_id = new_run_id()
        started = time.monotonic()

        async def show(msg: Incoming) -> None:
            print(render.progress_line(_progress.decode(msg.data), time.monotonic() - started))

        await stack.bus.subscribe(subjects.progress(run_id), show)
        await stack.orchestrator.start_run(workflow, run_input, run_id=run_id, requested_by="cli")
        print(f"run {run_id}: workflow {workflow.name}, "
              f"{len(stack.orchestrator.run(run_id).tasks)} tasks")  # fmt: skip
        state = await stack.orchestrator.wait(run_id, timeout=args.timeout)
        await asyncio.sleep(0.05)  # let the last progress lines print before the summary
        print()
        if state.status == "completed":
            print(f"run {run_id} completed; result:")
            print(json.dumps(state.result, indent=2, default=str))
        else:
            print(f"run {run_id} failed: {state.reason}")
        print(f"\nreplay it: baton replay {run_id}   audit it: baton audit --run {run_id}")
        return 0 if state.status == "completed" else 1
    finally:
        agents.stop()
        await stack.close()


async def _existing_store(explicit: str | None) -> SqliteEventStore:
    directory = state_dir(explicit)
    if not store_path(directory).exists():
        raise UnknownStore(f"no event store at {store_path(directory)} (see --state-dir)")
    return await open_store(directory)


async def _replay(args: argparse.Namespace) -> int:
    store = await _existing_store(args.state_dir)
    try:
        state = await journal.load_run(store, args.run_id, until_position=args.until)
        print(render.run_table(state))
        report = await store.verify()
    finally:
        await store.close()
    if report.ok:
        print(f"\nhash chain: ok ({report.checked} events checked)")
        return 0
    print(f"\nhash chain: BROKEN at position {report.first_bad_position}: {report.reason}")
    return 1


async def _audit(args: argparse.Namespace) -> int:
    store = await _existing_store(args.state_dir)
    try:
        query = EventQuery(
            stream=journal.run_stream(args.run) if args.run else None,
            actor=args.agent,
            type_glob=args.type_glob,
            limit=args.limit,
        )
        for stored in await store.query(query):
            event = journal.decode_any(stored)
            line = (
                render.audit_json(stored, event) if args.json else render.audit_line(stored, event)
            )
            print(line)
    finally:
        await store.close()
    return 0


def _agent(argv: list[str]) -> int:
    os.execv(sys.executable, [sys.executable, "-m", "agents", *argv])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["agent"]:
        return _agent(argv[1:])
    args = _parser().parse_args(argv)
    commands: dict[str, Any] = {"run": _run, "replay": _replay, "audit": _audit}
    try:
        return int(asyncio.run(commands[args.command](args)))
    except (OrchestratorError, EventStoreError, BusError) as exc:
        print(f"baton {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0
    except (KeyboardInterrupt, TimeoutError):
        print(f"baton {args.command}: stopped", file=sys.stderr)
        return 130
