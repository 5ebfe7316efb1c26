"""The commands that look into the log, with no orchestrator running: replay, fork,
export, import, audit (with `verify` and `--why`), trace and blobs (`ls`, `gc`). Each
opens the state directory's event store, does its one job and closes it."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import private
from bus import subjects
from eventstore import EventQuery, EventStore
from orchestrator.cli import audit_verify, blobs_cli, history, render
from orchestrator.cli import observe as obs_cli
from orchestrator.core.effects import pending_effects
from orchestrator.core.errors import UnknownRun, UnknownStore, WorkflowError
from orchestrator.service import journal
from orchestrator.service.bootstrap import open_store, state_dir, store_exists, store_path
from orchestrator.service.service import new_run_id


def add_parsers(sub: Any) -> tuple[argparse.ArgumentParser, argparse.ArgumentParser]:
    """The parsers of `import` and `blobs`, under `sub` (the `baton` subparsers)."""
    import_: argparse.ArgumentParser = sub.add_parser(
        "import", help="add an exported run's log to this state directory"
    )
    import_.add_argument("file", help="a file written by baton export ('-' for standard input)")
    return import_, blobs_cli.add_parser(sub)


async def existing_store(args: argparse.Namespace) -> EventStore:
    """The event log the command's configuration names (`args.config`), which must be
    there already."""
    directory = state_dir(args.state_dir)
    if not store_exists(directory, args.config):
        raise UnknownStore(f"no event store at {store_path(directory, args.config)} "
                           "(see --state-dir, --store)")  # fmt: skip
    return await open_store(directory, args.config)


async def _replay(args: argparse.Namespace, store: EventStore) -> int:
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


async def _fork(args: argparse.Namespace, store: EventStore) -> int:
    new_id = subjects.token(args.new_id or new_run_id())  # the arguments first
    at = await history.position_at(store, args.run_id, args.at)
    if await store.stream_version(journal.run_stream(new_id)):
        raise WorkflowError("--new-id", f"run {new_id} already exists")
    state = await history.fork(store, args.run_id, at, new_id, actor="cli")
    done = sum(t.status == "succeeded" for t in state.tasks.values())
    print(f"forked run {new_id} from {args.run_id} at position {history.forked_at(state, at)}: "
          f"{done}/{len(state.tasks)} tasks done, status {state.status}")  # fmt: skip
    print(f"carry it on: baton resume {new_id} ({history.SERVED_FORKS})")
    return 0


async def _export(args: argparse.Namespace, store: EventStore) -> int:
    exported = await history.export_run(store, args.run_id)
    lines = "\n".join(exported) + "\n"
    if args.output:
        private.write(Path(args.output), lines.encode())  # 0600 if new: it is the log
        header = json.loads(exported[0])
        print(f"exported {header['events']} events and {header['blobs']} blobs of run "
              f"{args.run_id} to {args.output}")  # fmt: skip
    else:
        sys.stdout.write(lines)
    return 0


async def _import(args: argparse.Namespace) -> int:
    """Read and check the export first: one refused leaves no state directory or store
    behind (the log goes into the state directory unless the configuration names one)."""
    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    export = history.read_export(text.splitlines())
    directory = state_dir(args.state_dir)
    if not args.config.store:
        private.make_state_dir(directory)
    store = await open_store(directory, args.config)
    try:
        run_id = await history.import_export(store, export)
    finally:
        await store.close()
    print(f"imported run {run_id}; see baton replay {run_id}")
    return 0


async def _audit(args: argparse.Namespace, store: EventStore) -> int:
    if args.action == "verify":
        return await audit_verify.verify(args, store)
    audit_verify.check_options(args)
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
        if args.run and not await store.stream_version(journal.run_stream(args.run)):
            raise UnknownRun(args.run)
        query = EventQuery(  # a run's events: its own stream's and its agents' records
            correlation_id=args.run or None,
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


_LOG_COMMANDS: dict[str, Callable[[argparse.Namespace, EventStore], Awaitable[int]]] = {
    "replay": _replay,
    "fork": _fork,
    "export": _export,
    "audit": _audit,
    "trace": obs_cli.trace,
    "blobs": blobs_cli.blobs,
}


async def with_store(args: argparse.Namespace) -> int:
    if args.command == "import":
        return await _import(args)
    store = await existing_store(args)
    try:
        return await _LOG_COMMANDS[args.command](args, store)
    finally:
        await store.close()
