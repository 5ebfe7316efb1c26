"""The observing commands of `baton`: `trace` (a run's waterfall, in the terminal or as
one HTML file, from the event log alone) and `status` / `health` / `agents` (live runs,
the orchestrator's health, live agents, asked of the running orchestrator over
`baton.api.*`)."""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

import msgspec

import private
from bus import subjects
from bus.codec import Decoder, encode
from bus.config import Config
from bus.connection import Bus
from bus.errors import RequestFailed
from bus.permissions import inbox_prefix
from bus.protocol import ErrorReply
from eventstore import EventStore
from orchestrator.cli import live_render, trace_html, trace_view
from orchestrator.cli.durations import seconds
from orchestrator.cli.reach import Reach, reach, shown
from orchestrator.cli.trace_model import build
from orchestrator.core.errors import OrchestratorError
from orchestrator.service import journal
from orchestrator.service.api import (
    AgentsReply,
    AgentsRequest,
    HealthReply,
    HealthRequest,
    RunProgress,
    StatusReply,
    StatusRequest,
)
from orchestrator.service.bootstrap import DEFAULT_CONFIG, open_store, state_dir, store_exists
from orchestrator.service.live_api import progress

_status_reply: Decoder[StatusReply | ErrorReply] = Decoder(StatusReply | ErrorReply)
_agents_reply: Decoder[AgentsReply | ErrorReply] = Decoder(AgentsReply | ErrorReply)
_health_reply: Decoder[HealthReply | ErrorReply] = Decoder(HealthReply | ErrorReply)
HEALTH_EXIT = "exit status: 0 healthy, 1 something is wrong now, 2 no orchestrator answered"


class NoOrchestrator(OrchestratorError):
    """No running orchestrator could be found or reached to ask."""


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    trace = sub.add_parser("trace", help="a run's waterfall from the event log (--html: a page)")
    trace.add_argument("run_id")
    trace.add_argument("--html", metavar="FILE", help="write one self-contained HTML page")
    trace.add_argument("--width", type=int, default=60, help="columns of the time axis")
    status = sub.add_parser("status", help="live runs and their progress")
    status.add_argument("--all", action="store_true", help="also runs that have ended")
    agents = sub.add_parser("agents", help="live agents: role, load, heartbeat age, held work")
    health = sub.add_parser(
        "health",
        help="the orchestrator's health: storage, bus, loops, stuck runs (for probes too)",
        epilog=HEALTH_EXIT,
    )
    for command in (status, agents, health):
        command.add_argument("--nats", default=None,
                             help="the orchestrator's NATS (default: $BATON_NATS_URL, else "
                                  "baton.toml's nats, else "
                                  "the embedded server running for --state-dir)")  # fmt: skip
        command.add_argument("--json", action="store_true", help="JSON instead of a table")
        command.add_argument("--timeout", type=seconds, default=3.0, help="seconds to wait")
    for command in (trace, status, agents, health):
        command.add_argument(
            "--state-dir", help="state directory (default $BATON_STATE_DIR or .baton)"
        )


async def trace(args: argparse.Namespace, store: EventStore) -> int:
    stored = await store.read_stream(journal.run_stream(args.run_id))
    timeline = build(args.run_id, stored)
    if args.html:
        private.write(Path(args.html), trace_html.render(timeline).encode())  # 0600 if new
        print(f"wrote {args.html}: run {args.run_id}, {len(timeline.tasks)} tasks")
    else:
        print(trace_view.render(timeline, args.width))
    return 0


def _reach(args: argparse.Namespace) -> Reach | None:
    return reach(args.nats, state_dir(args.state_dir))


async def connect(where: Reach, name: str, timeout: float) -> Bus:
    """A connection as the person `where` names (its own reply inbox on a governed
    server); a refused connection fails fast (BusError), a silent server within `timeout`."""
    prefix = inbox_prefix(where.identity) if where.identity else ""
    try:
        async with asyncio.timeout(timeout):
            return await Bus.connect(where.url, name=name, inbox_prefix=prefix)
    except TimeoutError:
        raise NoOrchestrator(f"cannot reach NATS at {shown(where.url)} within {timeout}s") from None


async def ask(where: Reach, subject: str, payload: bytes, timeout: float) -> bytes:
    bus = await connect(where, "baton-cli", timeout)
    try:
        return await bus.request(subject, payload, timeout)
    except RequestFailed as exc:
        raise NoOrchestrator(f"no orchestrator answered on {shown(where.url)}: {exc}") from exc
    finally:
        await bus.close()


async def _logged(
    directory: Path, ended_too: bool, config: Config = DEFAULT_CONFIG
) -> list[RunProgress] | None:
    """The runs as the log at `directory` (or the one `config` names) records them
    (unfinished ones, and ended ones too if asked), or None when there is no log there."""
    if not store_exists(directory, config):
        return None
    store = await open_store(directory, config)
    try:
        runs = []
        for stream in await store.streams(journal.RUN_PREFIX):
            if not ended_too and await journal.has_ended(store, stream):
                continue
            state = await journal.load_run(store, journal.run_id_of(stream))
            runs.append(progress(state, state.finished_at or state.started_at))
    finally:
        await store.close()
    return runs


async def status(args: argparse.Namespace) -> int:
    directory = state_dir(args.state_dir)
    where = _reach(args)
    if where is not None:
        reply = _status_reply.decode(
            await ask(where, subjects.API_STATUS, encode(StatusRequest(args.all)), args.timeout)
        )
        if isinstance(reply, ErrorReply):
            raise NoOrchestrator(f"{reply.error}: {reply.detail}")
        runs, health = reply.runs, reply.health
        source = f"live, from the orchestrator on {shown(where.url)}"
        if args.all:  # it knows the runs it serves; the log, every run that ended before
            live = {r.run_id for r in runs}
            logged = await _logged(directory, ended_too=True, config=args.config) or []
            runs = runs + [r for r in logged if r.run_id not in live]
            source += "; runs it does not serve as recorded in the event log"
    else:
        recorded = await _logged(directory, ended_too=args.all, config=args.config)
        if recorded is None:
            raise NoOrchestrator(
                f"no orchestrator running for {directory} and no event store there "
                "(pass --nats or --state-dir)"
            )
        runs, health = recorded, []
        source = "no orchestrator running: as recorded in the event log"
    reply = StatusReply(sorted(runs, key=lambda p: p.started_at), health)
    if args.json:
        print(msgspec.json.encode(reply).decode())
    else:
        print(live_render.status_table(reply.runs, source))
        if where is not None:
            print(live_render.health_text(reply.health, time.time()))
    return 0


async def health(args: argparse.Namespace) -> int:
    """`baton health`: exits 0 when nothing is wrong now, 1 when something is (see
    `HEALTH_EXIT`); no orchestrator to ask is an error (2)."""
    where = _reach(args)
    if where is None:
        raise NoOrchestrator(f"no orchestrator running for {state_dir(args.state_dir)} "
                             "(pass --nats or --state-dir)")  # fmt: skip
    reply = _health_reply.decode(
        await ask(where, subjects.API_HEALTH, encode(HealthRequest()), args.timeout)
    )
    if isinstance(reply, ErrorReply):
        raise NoOrchestrator(f"{reply.error}: {reply.detail}")
    if args.json:
        print(msgspec.json.encode(reply).decode())
    else:
        print(live_render.health_text(reply.issues, reply.at))
    return 0 if reply.healthy else 1


async def agents(args: argparse.Namespace) -> int:
    where = _reach(args)
    if where is None:
        raise NoOrchestrator(
            f"no orchestrator running for {state_dir(args.state_dir)} (pass --nats or "
            "--state-dir); live agents are known only to a running orchestrator"
        )
    reply = _agents_reply.decode(
        await ask(where, subjects.API_AGENTS, encode(AgentsRequest()), args.timeout)
    )
    if isinstance(reply, ErrorReply):
        raise NoOrchestrator(f"{reply.error}: {reply.detail}")
    if args.json:
        print(msgspec.json.encode(reply).decode())
    else:
        source = f"live, from the orchestrator on {shown(where.url)}"
        print(live_render.agents_table(reply.agents, source))
    return 0
